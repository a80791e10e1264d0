"""``cbir train`` and ``cbir models`` end to end on a tiny generated folder-per-class dataset.

The cheap ``colorhist`` extractor keeps it fast: three classes of clearly different colours.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir import cli
from cbir.cli import main


@pytest.fixture(autouse=True)
def _wire(monkeypatch, tmp_path):
    """Register the command module (until cli.COMMAND_MODULES lists it) and isolate the cache."""
    if "train" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "train"])
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cache"))


def make_classes(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """root/<class>/<i>.png: noisy 24x24 images around one colour per class."""
    colours = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200),
               "grey": (128, 128, 128)}
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(np.array(colours[name]) + rng.normal(0, 25, (24, 24, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8), "RGB").save(d / f"{i:03d}.png")
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_list_show_curves_label_use_search_delete(capsys, tmp_path):
    data = make_classes(tmp_path / "classes", {"red": 10, "green": 10, "blue": 10})
    c = str(tmp_path / "coll")
    assert run(capsys, "-c", c, "index", str(data), "--extractor", "colorhist", "-q")[0] == 0

    code, out, err = run(capsys, "-c", c, "train", str(data), "--name", "colours", "--epochs", "40",
                         "--head", "linear", "--trained-by", "tester", "-q", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["classes"] == ["blue", "green", "red"] and summary["val_accuracy"] >= 0.99
    assert summary["extractor"] == {"name": "colorhist", "dim": 128}  # the collection's extractor
    assert "fewer than 100" in err  # the paper's minimum is warned about, not enforced
    assert Path(summary["path"]) == tmp_path / "coll" / "models" / "colours.json"

    code, out, _ = run(capsys, "-c", c, "models", "list", "--json")
    assert [r["name"] for r in json.loads(out)] == ["colours"]
    code, out, _ = run(capsys, "-c", c, "models", "show", "colours", "--json")
    meta = json.loads(out)
    assert meta["trained_by"] == "tester" and meta["epochs"] == len(meta["curve"])

    png = tmp_path / "curve.png"
    code, out, _ = run(capsys, "-c", c, "models", "curves", "colours", "--out", str(png), "--json")
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG" and json.loads(out)["epoch"][0] == 1

    code, out, _ = run(capsys, "-c", c, "models", "label", "colours", "--json")
    rows = json.loads(out)
    assert len(rows) == 30
    assert all(r["label"] == Path(r["path"]).parent.name for r in rows)

    q = data / "red" / "000.png"
    code, out, _ = run(capsys, "-c", c, "models", "search", "colours", "--like", str(q), "-k", "5",
                       "--partitioned", "--json")
    hits = json.loads(out)["hits"]
    assert len(hits) == 5 and all(h["model_label"] == "red" for h in hits)
    assert os.path.abspath(q) not in [h["path"] for h in hits]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    assert run(capsys, "-c", c, "models", "use", "colours")[0] == 0
    from cbir.collection import Collection
    from cbir.train.apply import load_used_model, partition_kwargs

    with Collection.open(Path(c)) as col:
        model = load_used_model(col)
        ids = col.catalog.ok_ids()
        assert len(set(partition_kwargs(col, model, ids)["classes"].tolist())) == 3

    code, out, _ = run(capsys, "-c", c, "models", "delete", "colours")
    assert code == 0 and "ImageNet" in out  # the collection stopped using it
    with Collection.open(Path(c)) as col:
        assert load_used_model(col) is None
    code, out, err = run(capsys, "-c", c, "models", "list")
    assert "no models" in err


def test_second_training_reuses_the_stored_features(capsys, tmp_path):
    data = make_classes(tmp_path / "classes", {"red": 6, "grey": 6})
    models = str(tmp_path / "m")
    args = ["train", str(data), "--models", models, "--extractor", "colorhist", "--epochs", "3", "-q"]
    assert run(capsys, *args, "--name", "one")[0] == 0
    from cbir.collection import Collection

    (col_dir,) = (tmp_path / "cache" / "eval").iterdir()  # the dataset's cached collection

    def stamps() -> dict[str, float]:
        with Collection.open(col_dir) as col:
            return {r.path: r.indexed_at for r in col.catalog.iter_records()}

    before = stamps()
    assert run(capsys, *args, "--name", "two")[0] == 0
    code, out, _ = run(capsys, "models", "list", "--models", models, "--json")
    assert [r["name"] for r in json.loads(out)] == ["one", "two"]
    assert stamps() == before and len(before) == 12  # no image decoded again
    with Collection.open(col_dir) as col:
        assert col.catalog.count("ok") == 12  # indexed once, not twice


def test_bad_requests_are_one_line_errors(capsys, tmp_path):
    data = make_classes(tmp_path / "classes", {"red": 6, "green": 3})
    ok = make_classes(tmp_path / "ok", {"red": 6, "green": 6})
    m = str(tmp_path / "m")
    base = ["--models", m, "--extractor", "colorhist", "-q"]
    for argv, needle in [
        (("train", str(ok), "--name", "../evil", *base), "model name"),
        (("train", str(data), "--name", "x", *base), "at least 5 usable images"),
        (("train", str(ok), "--name", "x", "--finetune", *base), "cannot start from --extractor"),
        (("train", str(tmp_path / "nope"), "--name", "x", *base), "no such folder"),
        (("models", "show", "missing", "--models", m), "no model named"),
        (("models", "delete", "../x", "--models", m), "model name"),
        (("models", "curves", "missing", "--models", m, "--out", "x.png"), "no model named"),
    ]:
        code, out, err = run(capsys, *argv)
        assert code == 2 and needle in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "evil").exists()
