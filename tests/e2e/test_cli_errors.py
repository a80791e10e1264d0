"""The CLI's error contract on hostile input: exit 2 with ONE clear line on stderr (never
"internal error" or a traceback), or the command simply works.

Covers: huge ``-k`` (capped at the collection size everywhere k reaches an index), a
read-only collection, a collection path under a regular file or empty, a manifest of the
wrong shape, a catalog of random bytes, a feature row of the wrong size, a second
``cbir serve`` on a served collection, and Pillow's warnings under ``-q``/``--json``.
All on tiny generated images with the cheap ``colorhist`` extractor.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badfiles import huge_header_png, make_good_images, noise_jpeg_bytes
from cbir import cli
from cbir.cli import main

CH = ["--extractor", "colorhist"]
N_IMAGES = 6
HUGE = str(10**20)  # before the cap: "Maximum allowed dimension exceeded" (or gigabytes for 1e9)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    make_good_images(d, N_IMAGES)
    return d


@pytest.fixture
def coll(tmp_path, photos, capsys) -> str:
    c = str(tmp_path / "coll")
    code, _, err = run(capsys, "-c", c, "index", str(photos), *CH, "-q")
    assert code == 0, err
    return c


def first_photo(photos: Path) -> Path:
    return sorted(photos.iterdir())[0]


@pytest.fixture
def no_uvicorn(monkeypatch):
    """A refused `cbir serve` must never get as far as starting the server (which would block)."""
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")

    def run(*a, **kw):
        raise AssertionError("uvicorn.run was called: the collection was not checked first")

    monkeypatch.setattr(uvicorn, "run", run)


# -- 5. k is capped at the collection size -----------------------------------------------
@pytest.mark.parametrize("how", ["file", "like", "codes", "codes-rerank"])
def test_huge_k_is_capped_at_the_collection_size(capsys, coll, photos, how):
    q = str(first_photo(photos))
    if how.startswith("codes"):
        assert run(capsys, "-c", coll, "hash", "train", "--method", "lsh", "--bits", "8", "--json")[0] == 0
    argv = {"file": ["search", q, "-k", HUGE],
            "like": ["search", "--like", q, "-k", HUGE],
            "codes": ["search", q, "--codes", "lsh-8", "-k", HUGE],
            "codes-rerank": ["search", q, "--codes", "lsh-8", "-k", "3", "--rerank", HUGE]}[how]
    code, out, err = run(capsys, "-c", coll, *argv, "--json")
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert len(hits) == {"file": N_IMAGES, "like": N_IMAGES - 1, "codes": N_IMAGES,
                         "codes-rerank": 3}[how]
    assert "error" not in err


def test_library_search_never_asks_the_index_for_more_than_it_holds(coll, photos):
    """search() with k=1e9 must not make the index allocate a 1e9-wide result."""
    from cbir.collection import Collection
    from cbir.search import query_from_members, search

    asked: list[int] = []
    with Collection.open(Path(coll)) as col:
        real = col.index()

        class Spy:
            name, dim = real.name, real.dim

            def __len__(self) -> int:
                return len(real)

            def search(self, q, k, **kw):
                asked.append(k)
                assert k <= len(real), f"asked the index for {k} of {len(real)}"
                return real.search(q, k, **kw)

        col.index = lambda *a, **kw: Spy()  # type: ignore[method-assign]
        query = query_from_members(col, [first_photo(photos)])
        hits = search(col, query, k=10**9)
    assert asked and len(hits) == N_IMAGES - 1


def test_models_search_caps_k(capsys, tmp_path):
    root = tmp_path / "classes"
    rng = np.random.default_rng(0)
    for name, rgb in {"red": (200, 30, 30), "blue": (30, 40, 200)}.items():
        (root / name).mkdir(parents=True)
        for i in range(6):
            arr = np.clip(np.array(rgb) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(root / name / f"{i}.png")
    c = str(tmp_path / "coll")
    assert run(capsys, "-c", c, "index", str(root), *CH, "-q")[0] == 0
    code, _, err = run(capsys, "-c", c, "train", str(root), "--name", "rb", "--epochs", "2",
                       "--head", "linear", "-q")
    assert code == 0, err
    q = str(root / "red" / "0.png")
    code, out, err = run(capsys, "-c", c, "models", "search", "rb", q, "-k", HUGE, "--json")
    assert code == 0, err
    assert len(json.loads(out)["hits"]) == 12


@pytest.mark.parametrize("value", ["1e23", "0", "-3", "ten", "", HUGE + "x"])
def test_bad_k_is_one_clear_line(capsys, coll, photos, value):
    code, out, err = run_parse(capsys, "-c", coll, "search", str(first_photo(photos)), "-k", value)
    assert_one_line_error(code, err, "-k")
    assert out == ""


def run_parse(capsys, *argv: str) -> tuple[int, str, str]:
    """main() for arguments argparse refuses (it exits instead of returning)."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


# -- 6. a read-only collection: search, info and verify work --------------------------------
def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*"))}


def test_read_only_collection_is_opened_read_only(capsys, coll, photos, monkeypatch):
    """As root chmod does not stop writes, so the test makes os.access say "not writable"
    and checks that nothing in the collection is touched and SQLite refuses any write."""
    from cbir.collection import Collection

    d = Path(coll)
    shutil.rmtree(d / "index", ignore_errors=True)  # a search would normally save one
    before = _snapshot(d)
    real_access = os.access

    def access(path, mode, *a, **kw):
        if mode & os.W_OK and Path(path).resolve().is_relative_to(d.resolve()):
            return False
        return real_access(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    q = str(first_photo(photos))
    for argv in (["search", q, "-k", "3"], ["search", "--like", q], ["info"], ["verify"]):
        code, out, err = run(capsys, "-c", coll, *argv)
        assert code == 0, (argv, err)
        assert out and "error" not in err
    code, _, err = run(capsys, "-c", coll, "remove", q)
    assert_one_line_error(code, err, "read-only")
    assert _snapshot(d) == before
    with Collection.open(d) as col:
        assert col.readonly
        with pytest.raises(sqlite3.OperationalError):
            col.catalog.db.execute("CREATE TABLE x (a)")


def _as_unprivileged() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else None


def test_read_only_collection_for_real(capsys):
    """chmod -R a-w, then search/info/verify as a user the permissions apply to."""
    prefix = _as_unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot drop the privilege to write")
    top = Path(tempfile.mkdtemp(prefix="cbir-ro-"))
    try:
        photos = top / "photos"
        photos.mkdir()
        make_good_images(photos, 4)
        c = top / "coll"
        assert run(capsys, "-c", str(c), "index", str(photos), *CH, "-q")[0] == 0
        shutil.rmtree(c / "index")
        for p in [top, *top.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        before = _snapshot(c)
        script = ("import sys; from cbir.cli import main; q = sys.argv[2]; "
                  "codes = [main(['-c', sys.argv[1], *a]) for a in "
                  "(['search', q, '-k', '2'], ['search', '--like', q], ['info'], ['verify'])]; "
                  "print('CODES', codes)")
        r = subprocess.run([*prefix, sys.executable, "-c", script, str(c), str(first_photo(photos))],
                           capture_output=True, text=True, timeout=120)
        assert "CODES [0, 0, 0, 0]" in r.stdout, r.stdout + r.stderr
        assert r.stderr == "", r.stderr
        assert _snapshot(c) == before
    finally:
        for p in [top, *top.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(top)


# -- 6. collection paths ---------------------------------------------------------------------
@pytest.mark.parametrize("command", [["index", "PHOTOS", *CH, "-q"], ["search", "QUERY"], ["info"],
                                     ["verify"], ["serve", "--port", "0"]])
def test_collection_under_a_regular_file(capsys, tmp_path, photos, no_uvicorn, command):
    f = tmp_path / "a-file"
    f.write_text("not a folder")
    argv = [{"PHOTOS": str(photos), "QUERY": str(first_photo(photos))}.get(a, a) for a in command]
    code, _, err = run(capsys, "-c", str(f / "sub"), *argv)
    assert_one_line_error(code, err, "is a file, not a folder")
    assert f.read_text() == "not a folder"


@pytest.mark.parametrize("argv", [["-c", "", "index", "PHOTOS", *CH, "-q"], ["-c", "", "info"],
                                  ["--collection", " ", "search", "QUERY"],
                                  ["serve", "--collection", "", "--port", "0"]])
def test_empty_collection_path_is_refused(capsys, tmp_path, photos, monkeypatch, no_uvicorn, argv):
    monkeypatch.chdir(tmp_path)
    argv = [{"PHOTOS": str(photos), "QUERY": str(first_photo(photos))}.get(a, a) for a in argv]
    code, _, err = run_parse(capsys, *argv)
    assert_one_line_error(code, err, "empty")
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "catalog.sqlite").exists()


# -- 6. damaged stores -----------------------------------------------------------------------
@pytest.mark.parametrize("manifest", ["[]", '{"dim": "x"}', "{}", '"collection"', "null",
                                      '{"format_version": 1}',
                                      '{"format_version": 1, "extractor": "colorhist"}',
                                      '{"format_version": 1, "extractor": "colorhist", "dim": "x"}',
                                      '{"format_version": 1, "extractor": 5, "dim": 128}',
                                      '{"format_version": 1, "extractor": "colorhist", "dim": 128,'
                                      ' "preprocessing": []}',
                                      '{"format_version": true, "extractor": "colorhist", "dim": 128}'])
@pytest.mark.parametrize("command", ["info", "index"])
def test_manifest_of_the_wrong_shape(capsys, coll, photos, manifest, command):
    (Path(coll) / "manifest.json").write_text(manifest)
    argv = ["info"] if command == "info" else ["index", str(photos), "-q"]
    code, _, err = run(capsys, "-c", coll, *argv)
    assert_one_line_error(code, err, "manifest.json")


@pytest.mark.parametrize("command", ["info", "verify", "search", "index", "remove"])
def test_garbage_catalog(capsys, coll, photos, command):
    d = Path(coll)
    for p in d.glob("catalog.sqlite*"):
        p.unlink()
    (d / "catalog.sqlite").write_bytes(np.random.default_rng(0).bytes(8192))
    q = str(first_photo(photos))
    argv = {"info": ["info"], "verify": ["verify"], "search": ["search", q],
            "index": ["index", str(photos), "-q"], "remove": ["remove", q]}[command]
    code, _, err = run(capsys, "-c", coll, *argv)
    assert_one_line_error(code, err, "catalog", "not a database")


def _damage_one_feature(coll: str, photo: Path) -> int:
    db = sqlite3.connect(Path(coll) / "catalog.sqlite")
    try:
        (rid,) = db.execute("SELECT id FROM images WHERE path=?", (str(photo.resolve()),)).fetchone()
        db.execute("UPDATE images SET feature=? WHERE id=?", (np.ones(3, "<f2").tobytes(), rid))
        db.commit()
    finally:
        db.close()
    return int(rid)


def test_feature_row_of_the_wrong_size(capsys, coll, photos):
    bad = first_photo(photos)
    rid = _damage_one_feature(coll, bad)
    other = str(sorted(photos.iterdir())[1])
    # with the index saved before the damage (it still holds the row's vector), rebuilt from
    # the catalog, then saved without the row: skipped, and said in one line, every time
    for rebuild in (False, True, False):
        if rebuild:
            shutil.rmtree(Path(coll) / "index")
        code, out, err = run(capsys, "-c", coll, "search", other, "-k", "50", "--json")
        assert code == 0, err
        paths = [h["path"] for h in json.loads(out)["hits"]]
        assert len(paths) == N_IMAGES - 1 and str(bad.resolve()) not in paths
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "damaged" in lines[0] and f"id {rid}" in lines[0], err
    code, out, err = run(capsys, "-c", coll, "verify", "--json")
    assert code == 2
    problems = json.loads(out)["problems"]
    assert len(problems) == 1, problems  # the row, not also an index "holding too few ids"
    assert f"id {rid}" in problems[0] and str(bad.resolve()) in problems[0]
    code, _, err = run(capsys, "-c", coll, "search", "--like", str(bad))
    assert_one_line_error(code, err, "damaged", f"image id {rid}")


# -- 6. a second `cbir serve` ------------------------------------------------------------------
def test_second_serve_on_a_served_collection_is_one_line(capsys, coll, no_uvicorn):
    """(Unchecked, uvicorn started, the app's startup failed: a 26-line traceback, exit 3.)"""
    fd = os.open(Path(coll) / "service.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running `cbir serve` holds
        code, _, err = run(capsys, "-c", coll, "serve", "--port", "0")
    finally:
        os.close(fd)
    assert_one_line_error(code, err, "already serving")


# -- 8. Pillow's warnings under -q / --json ----------------------------------------------------
def _jpeg_with_corrupt_exif() -> bytes:
    """A JPEG whose EXIF tag points 20 bytes from 6 before the end: "Possibly corrupt EXIF"."""
    entry = struct.pack("<HHII", 0x010E, 2, 20, 40)  # ImageDescription, ASCII, 20 bytes at 40
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    tiff += bytes(46 - len(tiff))
    app1 = b"Exif\x00\x00" + tiff
    j = noise_jpeg_bytes()
    return j[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + j[2:]


@pytest.mark.parametrize("flag", ["-q", "--json"])
def test_pillow_warnings_do_not_leak_under_quiet_or_json(tmp_path, flag):
    d = tmp_path / "photos"
    d.mkdir()
    make_good_images(d, 2)
    (d / "bomb.png").write_bytes(huge_header_png(10_000, 10_000))  # > Pillow's warning limit
    (d / "exif.jpg").write_bytes(_jpeg_with_corrupt_exif())
    argv = ["-c", str(tmp_path / "coll"), "index", str(d), *CH, flag]
    if flag == "--json":
        argv.append("-q")  # the progress bar is not what this is about
    r = subprocess.run([sys.executable, "-m", "cbir.cli", *argv], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode in (0, 1), r.stderr
    for leak in ("Warning", "warnings.warn", "EXIF", "decompression bomb", "Traceback"):
        assert leak not in r.stderr, r.stderr
    # what is left on stderr is the report's own lines, one per skipped file
    assert all(ln.startswith(("  skipped", "  ...")) for ln in r.stderr.splitlines()), r.stderr


def test_warnings_print_as_one_line_without_quiet(capsys, monkeypatch):
    import warnings

    def cmd(args):
        warnings.warn("Possibly corrupt EXIF data.  Expecting 20 bytes", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "cmd_info", cmd)
    code = main(["-c", "/nonexistent", "info"])
    err = capsys.readouterr().err
    assert code == 0 and err.strip().splitlines() == [
        "cbir: warning: Possibly corrupt EXIF data. Expecting 20 bytes"], err
