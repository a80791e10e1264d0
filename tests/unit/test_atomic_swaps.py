"""Crash-safe swaps: re-training hash codes and overwriting a model never leave a mix.

A ``kill -9`` is simulated deterministically, at a chosen step: in-process by raising a
BaseException right after the step (no ``except Exception`` sees it), and in a subprocess
by ``os._exit`` at the step, which runs no cleanup at all. Afterwards the store must hold
the old state or the new one, ``cbir verify`` must say so, and a real mismatch (made by
hand) must be named by ``verify`` and refused by ``search --codes`` / ``models list``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.cli import main
from cbir.collection import Collection
from cbir.store.catalog import ImageRecord

N = 60
QUERY = "/synthetic/img_007.jpg"


class Killed(BaseException):
    """Stands for a kill -9 in-process: no ``except Exception`` handler sees it."""


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def make_collection(path: Path, n: int = N, seed: int = 0) -> str:
    """A colorhist collection of ``n`` random unit features (no image is decoded)."""
    rng = np.random.default_rng(seed)
    with Collection.create_or_open(path, "colorhist") as col, col.writer_lock():
        feats = rng.standard_normal((n, col.manifest.dim)).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        col.catalog.commit_batch([
            ImageRecord(path=f"/synthetic/img_{i:03d}.jpg", size=1, mtime_ns=1, feature=f)
            for i, f in enumerate(feats)])
    return str(path)


def stored_method(c: str, name: str) -> str:
    """The saved hasher's method, after checking every stored code is its encoding."""
    from cbir import codes

    with Collection.open(Path(c)) as col:
        hasher = codes.load(col, name)
        ids, stored = col.catalog.codes(name)
        _, feats = col.catalog.features(ids)
        assert len(ids) == N
        np.testing.assert_array_equal(stored, hasher.encode(feats))
        return hasher.name


def search_paths(capsys, c: str, name: str) -> list[str]:
    code, out, err = run(capsys, "-c", c, "search", "--like", QUERY, "--include-self",
                         "--codes", name, "-k", "8", "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert hits[0]["path"] == QUERY and hits[0]["hamming"] == 0
    return [h["path"] for h in hits]


def assert_consistent(capsys, c: str) -> str:
    code, out, err = run(capsys, "-c", c, "verify")
    assert code == 0 and out.startswith("consistent"), out + err
    return out


def kill_at(argv: list[str], target: str, *, after: bool = True) -> None:
    """Run ``cbir ARGV`` in a subprocess that dies (os._exit, no cleanup) at ``target``.

    ``target`` is ``module:attr.path``; with ``after`` the real call completes first.
    """
    script = (
        "import importlib, os, sys\n"
        "mod, attr = sys.argv[1].split(':')\n"
        "owner = importlib.import_module(mod)\n"
        "*path, last = attr.split('.')\n"
        "for p in path:\n"
        "    owner = getattr(owner, p)\n"
        "real = getattr(owner, last)\n"
        "def die(*a, **k):\n"
        "    if sys.argv[2] == 'after':\n"
        "        real(*a, **k)\n"
        "    os._exit(137)\n"
        "setattr(owner, last, die)\n"
        "from cbir.cli import main\n"
        "sys.exit(main(sys.argv[3:]))\n"
    )
    res = subprocess.run([sys.executable, "-c", script, target, "after" if after else "before",
                          *argv], capture_output=True, text=True, timeout=300)
    assert res.returncode == 137, f"did not die at {target}: rc={res.returncode} {res.stderr}"


# -- part 3: hash codes and their hasher ------------------------------------------------------
@pytest.fixture
def hashed(tmp_path, capsys) -> str:
    c = make_collection(tmp_path / "coll")
    assert run(capsys, "-c", c, "hash", "train", "--method", "itq", "--bits", "16",
               "--name", "h")[0] == 0
    return c


def test_hash_retrain_killed_after_the_hasher_file_keeps_old_hasher_and_codes(
        hashed, capsys, monkeypatch):
    import cbir.hashing.base as hb
    from cbir import codes

    before = search_paths(capsys, hashed, "h")
    real = hb.atomic_write_bytes

    def write_then_die(path, data):
        real(path, data)
        raise Killed

    monkeypatch.setattr(hb, "atomic_write_bytes", write_then_die)
    with Collection.open(Path(hashed)) as col, pytest.raises(Killed):
        codes.train(col, "lsh", 16, name="h", seed=3)
    monkeypatch.undo()
    assert stored_method(hashed, "h") == "itq"
    assert search_paths(capsys, hashed, "h") == before
    assert_consistent(capsys, hashed)
    # and the next training completes the swap
    assert run(capsys, "-c", hashed, "hash", "train", "--method", "lsh", "--bits", "16",
               "--name", "h", "--seed", "3")[0] == 0
    assert stored_method(hashed, "h") == "lsh"
    assert_consistent(capsys, hashed)
    # the killed run's staged file is cleaned up: one hasher file, the current one
    assert len(list((Path(hashed) / "hashers").rglob("*.safetensors"))) == 1


@pytest.mark.parametrize(("target", "after", "survivor"), [
    ("cbir.hashing.base:atomic_write_bytes", True, "itq"),   # new hasher file staged, not committed
    ("cbir.codes:_encode", False, "itq"),                    # killed while encoding
    ("cbir.store.catalog:Catalog.replace_codes", False, "itq"),  # just before the one commit
    ("cbir.store.catalog:Catalog.replace_codes", True, "lsh"),   # committed; old file not yet removed
])
def test_hash_retrain_kill9_at_each_step_leaves_old_or_new(hashed, capsys, target, after,
                                                            survivor):
    kill_at(["-c", hashed, "hash", "train", "--method", "lsh", "--bits", "16", "--name", "h",
             "--seed", "3"], target, after=after)
    assert stored_method(hashed, "h") == survivor
    search_paths(capsys, hashed, "h")
    assert_consistent(capsys, hashed)
    code, out, _ = run(capsys, "-c", hashed, "hash", "list", "--json")
    assert [(r["name"], r["method"], r["images_with_codes"]) for r in json.loads(out)] == [
        ("h", survivor, N)]


def _sql(c: str, statement: str) -> None:
    db = sqlite3.connect(Path(c) / "catalog.sqlite")
    with db:
        db.execute(statement)
    db.close()


@pytest.mark.parametrize(("damage", "needle"), [
    ("UPDATE codes SET code = x'00' WHERE image_id = 3", "byte"),
    ("UPDATE codes SET generation = generation + 7 WHERE image_id = 3", "generation"),
])
def test_mismatched_codes_are_named_by_verify_and_refused_by_search(hashed, capsys, damage,
                                                                    needle):
    _sql(hashed, damage)
    code, out, _ = run(capsys, "-c", hashed, "verify")
    assert code == 2 and out.startswith("INCONSISTENT")
    assert any("'h'" in line and needle in line for line in out.splitlines()), out
    code, out, err = run(capsys, "-c", hashed, "search", "--like", QUERY, "--codes", "h")
    assert code == 2 and out == "" and err.count("\n") == 1 and "do not match" in err, err


def test_a_hasher_file_swapped_under_its_codes_is_detected(hashed, capsys, tmp_path):
    from cbir import codes
    from cbir.hashing import create_hasher

    with Collection.open(Path(hashed)) as col:
        path = codes.current_hasher_file(col, "h")
        _, feats = col.catalog.features()
    create_hasher("lsh", 16, seed=5).fit(feats).save(path)  # same bits, other functions
    code, out, _ = run(capsys, "-c", hashed, "verify")
    assert code == 2 and "'h'" in out and "sha256" in out, out
    code, out, err = run(capsys, "-c", hashed, "search", "--like", QUERY, "--codes", "h")
    assert code == 2 and err.count("\n") == 1 and "do not match" in err, err


def test_hash_delete_removes_codes_hasher_and_files(hashed, capsys):
    assert run(capsys, "-c", hashed, "hash", "delete", "h")[0] == 0
    assert not any((Path(hashed) / "hashers").rglob("*.safetensors"))
    code, out, _ = run(capsys, "-c", hashed, "hash", "list", "--json")
    assert json.loads(out) == []
    assert_consistent(capsys, hashed)
    code, _, err = run(capsys, "-c", hashed, "search", "--like", QUERY, "--codes", "h")
    assert code == 2 and "no hash codes named" in err


# -- part 4: trained models ---------------------------------------------------------------------
def make_model(name: str, seed: int):
    from cbir.train.model import FORMAT_VERSION, ClassifierModel

    rng = np.random.default_rng(seed)
    d, classes = 128, ["a", "b", "c"]
    weights = {"norm.mean": np.zeros(d), "norm.std": np.ones(d),
               "fc.weight": rng.standard_normal((3, d)), "fc.bias": rng.standard_normal(3)}
    meta = {"format": "cbir-classifier", "format_version": FORMAT_VERSION, "name": name,
            "trained_by": "test", "trained_at": f"seed-{seed}", "classes": classes,
            "head": {"type": "linear"}, "extractor": {"name": "colorhist", "dim": d},
            "epochs": 1, "val_accuracy": 0.5, "finetuned": False}
    return ClassifierModel(weights, meta)


@pytest.fixture
def modelled(tmp_path) -> tuple[str, object]:
    """A collection holding model ``m`` (seed 1) in its registry."""
    from cbir.train.registry import ModelRegistry, default_models_dir

    c = make_collection(tmp_path / "coll")
    reg = ModelRegistry(default_models_dir(Path(c)))
    reg.save(make_model("m", 1))
    return c, reg


def _fc(reg, name: str = "m") -> np.ndarray:
    return reg.load(name).weights["fc.weight"]


def models_list(capsys, c: str) -> list[dict]:
    code, out, err = run(capsys, "-c", c, "models", "list", "--json")
    assert code == 0, err
    return json.loads(out)


def test_overwrite_killed_before_the_record_keeps_the_old_model(modelled, capsys, monkeypatch):
    import cbir.train.registry as registry

    c, reg = modelled
    old = _fc(reg)

    def die(*a, **k):
        raise Killed

    monkeypatch.setattr(registry, "write_json_atomic", die)
    with pytest.raises(Killed):
        reg.save(make_model("m", 2), overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(_fc(reg), old)
    rows = models_list(capsys, c)
    assert [r["name"] for r in rows] == ["m"] and "error" not in rows[0]
    assert_consistent(capsys, c)


@pytest.mark.parametrize(("target", "after", "survivor"), [
    ("cbir.train.registry:atomic_write_bytes", True, 1),   # new weights written, record not
    ("cbir.train.registry:write_json_atomic", False, 1),   # just before the switch
    ("cbir.train.registry:write_json_atomic", True, 2),    # switched; old files not yet removed
])
def test_overwrite_kill9_at_each_step_leaves_old_or_new(modelled, capsys, tmp_path, target,
                                                        after, survivor):
    c, reg = modelled
    want = _fc(reg) if survivor == 1 else make_model("m", 2).weights["fc.weight"]
    # `cbir train` needs a dataset and torch; the crash is in registry.save, so drive it directly
    script = tmp_path / "save.py"
    script.write_text(
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_atomic_swaps import make_model\n"
        "from cbir.train.registry import ModelRegistry\n"
        "ModelRegistry(sys.argv[2]).save(make_model('m', 2), overwrite=True)\n")
    runner = (
        "import importlib, os, runpy, sys\n"
        "mod, attr = sys.argv[1].split(':')\n"
        "owner = importlib.import_module(mod)\n"
        "real, when = getattr(owner, attr), sys.argv[2]\n"
        "def die(*a, **k):\n"
        "    if when == 'after':\n"
        "        real(*a, **k)\n"
        "    os._exit(137)\n"
        "setattr(owner, attr, die)\n"
        "sys.argv = sys.argv[3:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    res = subprocess.run([sys.executable, "-c", runner, target, "after" if after else "before",
                          str(script), str(Path(__file__).parent), str(reg.directory)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 137, res.stderr
    np.testing.assert_array_equal(_fc(reg), want.astype(np.float32))
    rows = models_list(capsys, c)
    assert [r["name"] for r in rows] == ["m"] and "error" not in rows[0]
    assert_consistent(capsys, c)
    # the next overwrite cleans up what the killed one left behind
    reg.save(make_model("m", 3), overwrite=True)
    assert sorted(p.name for p in reg.directory.iterdir() if p.suffix != ".json") == [
        reg.meta("m")["weights_file"]]


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_damaged_model_is_flagged_by_models_list_and_verify(modelled, capsys, damage):
    c, reg = modelled
    weights = reg.directory / reg.meta("m")["weights_file"]
    if damage == "missing":
        weights.unlink()
    else:
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    rows = models_list(capsys, c)
    assert rows[0]["name"] == "m" and "damaged" in rows[0]["error"], rows
    code, out, _ = run(capsys, "-c", c, "models", "list")
    assert "damaged" in out
    code, out, _ = run(capsys, "-c", c, "verify")
    assert code == 2 and "model 'm'" in out and "damaged" in out, out
    with pytest.raises(Exception, match="damaged|no weights"):
        reg.load("m")


def test_model_delete_removes_its_files(modelled, capsys):
    c, reg = modelled
    reg.save(make_model("m", 2), overwrite=True)
    assert run(capsys, "-c", c, "models", "delete", "m")[0] == 0
    assert list(reg.directory.iterdir()) == []
    assert_consistent(capsys, c)
