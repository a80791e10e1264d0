"""The `cbir` command end to end, on files the tests generate.

These use the cheap, real ``colorhist`` extractor so they run in seconds; the
EfficientNet backbone has its own tests (tests/unit/test_extract.py, marked slow) and
the Wang/Corel-1K evaluation (tests/e2e/test_eval_wang.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from badfiles import make_bad_files, make_good_images
from cbir.cli import main

CH = ["--extractor", "colorhist"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cbir_subprocess(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cbir.cli", *argv], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    make_good_images(d, 12)
    return d


@pytest.fixture
def coll(tmp_path) -> str:
    return str(tmp_path / "coll")


def index_json(capsys, coll: str, *paths: str, extra: tuple[str, ...] = ()) -> tuple[int, dict]:
    code, out, _ = run(capsys, "-c", coll, "index", *paths, *CH, "--json", "-q", *extra)
    return code, json.loads(out)


def test_index_search_info_verify(capsys, photos, coll):
    code, rep = index_json(capsys, coll, str(photos))
    n = sum(1 for p in photos.iterdir() if p.is_file())
    assert code == 0 and rep["added"] == n and rep["skipped"] == 0
    query = sorted(photos.iterdir())[0]
    code, out, _ = run(capsys, "-c", coll, "search", str(query), "-k", "3", "--json")
    hits = json.loads(out)["hits"]
    assert code == 0 and len(hits) == 3
    # the query file itself is in the collection: it comes first, at distance ~0
    assert hits[0]["path"] == str(query.resolve()) or hits[0]["path"] == os.path.abspath(query)
    assert hits[0]["distance"] < 0.02 and hits[0]["similarity"] > 0.98
    for h in hits:  # similarity = 1/(1+d), d = sqrt(2 - 2 cos)
        assert h["similarity"] == pytest.approx(1 / (1 + h["distance"]), abs=1e-5)
        assert h["distance"] == pytest.approx((max(0.0, 2 - 2 * h["cosine"])) ** 0.5, abs=1e-5)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["similarity"] >= hits[1]["similarity"] >= hits[2]["similarity"]

    code, out, _ = run(capsys, "-c", coll, "info", "--json")
    info = json.loads(out)
    assert info["images"] == n and info["extractor"] == "colorhist" and info["index_type"] == "exact"
    assert info["catalog_bytes"] > 0
    code, out, _ = run(capsys, "-c", coll, "verify", "--json")
    assert code == 0 and json.loads(out)["consistent"]


def test_reindex_is_incremental(capsys, photos, coll):
    index_json(capsys, coll, str(photos))
    code, rep = index_json(capsys, coll, str(photos))
    assert (rep["added"], rep["updated"], rep["removed"]) == (0, 0, 0)
    assert rep["unchanged"] == sum(1 for p in photos.iterdir() if p.is_file())
    files = sorted(photos.iterdir())
    files[0].unlink()  # deleted
    data = files[1].read_bytes()  # changed: other content, other size
    files[1].write_bytes(files[2].read_bytes())
    make_good_images(photos / "new", 2)  # new sub-folder
    code, rep = index_json(capsys, coll, str(photos))
    assert rep["removed"] == 1 and rep["updated"] == 1 and rep["added"] == 2
    assert rep["duplicates"] >= 1  # files[1] now has files[2]'s content
    assert data  # keep the variable used
    code, out, _ = run(capsys, "-c", coll, "search", "--like", str(files[2]), "-k", "1", "--json")
    # --like excludes the query itself; its byte-identical copy is the nearest
    assert json.loads(out)["hits"][0]["path"] == os.path.abspath(files[1])


def test_search_by_member_needs_no_extractor_run_and_excludes_itself(capsys, photos, coll):
    index_json(capsys, coll, str(photos))
    member = sorted(photos.iterdir())[3]
    code, out, _ = run(capsys, "-c", coll, "search", "--like", str(member), "-k", "50", "--json")
    paths = [h["path"] for h in json.loads(out)["hits"]]
    assert os.path.abspath(member) not in paths and len(paths) == len(list(photos.iterdir())) - 1
    code, out, _ = run(capsys, "-c", coll, "search", "--like", str(member), "--include-self",
                       "-k", "1", "--json")
    assert json.loads(out)["hits"][0]["path"] == os.path.abspath(member)


def test_several_query_images_are_averaged_and_min_similarity_filters(capsys, photos, coll):
    index_json(capsys, coll, str(photos))
    a, b = sorted(photos.iterdir())[:2]
    code, out, _ = run(capsys, "-c", coll, "search", str(a), str(b), "-k", "20", "--json")
    hits = json.loads(out)["hits"]
    assert {hits[0]["path"], hits[1]["path"]} == {os.path.abspath(a), os.path.abspath(b)}
    cut = hits[3]["similarity"]
    code, out, _ = run(capsys, "-c", coll, "search", str(a), str(b), "-k", "20",
                       "--min-similarity", str(cut), "--json")
    kept = json.loads(out)["hits"]
    assert kept and all(h["similarity"] >= cut for h in kept) and len(kept) < len(hits)


def test_removed_images_never_come_back(capsys, photos, coll):
    index_json(capsys, coll, str(photos))
    victim = sorted(photos.iterdir())[0]
    code, out, _ = run(capsys, "-c", coll, "remove", str(victim))
    assert code == 0 and "removed 1" in out
    code, out, _ = run(capsys, "-c", coll, "search", str(victim), "-k", "100", "--json")
    assert os.path.abspath(victim) not in [h["path"] for h in json.loads(out)["hits"]]
    # removing a whole folder
    code, out, _ = run(capsys, "-c", coll, "remove", str(photos))
    code, out, _ = run(capsys, "-c", coll, "info", "--json")
    assert json.loads(out)["images"] == 0


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_every_index_type_can_be_chosen(capsys, photos, coll, kind):
    code, rep = index_json(capsys, coll, str(photos), extra=("--index-type", kind))
    assert rep["index_type"] == kind
    q = sorted(photos.iterdir())[5]
    code, out, _ = run(capsys, "-c", coll, "search", str(q), "-k", "1", "--json")
    assert code == 0 and json.loads(out)["hits"][0]["path"] == os.path.abspath(q)


def test_class_partitioned_needs_a_classifier(capsys, photos, coll):
    code, out, err = run(capsys, "-c", coll, "index", str(photos), *CH, "-q",
                         "--index-type", "class-partitioned")
    assert code == 2 and "needs predicted classes" in err


def test_bad_files_are_skipped_and_reported_and_the_batch_goes_on(capsys, photos, coll, tmp_path):
    bad = make_bad_files(photos / "bad")
    code, rep = index_json(capsys, coll, str(photos))
    assert code == 1  # partial: some files were skipped
    good = sum(1 for p in photos.iterdir() if p.is_file())
    assert rep["added"] >= good
    reasons = {Path(s["path"]).name: s["reason"] for s in rep["skipped_files"]}
    for case in ("corrupt", "truncated", "zero_byte", "not_image", "too_large",
                 "broken_symlink"):
        if case in bad:
            assert any(Path(p).name in bad[case].name or bad[case].name in p
                       for p in reasons), f"{case} not reported: {sorted(reasons)}"
    # the bad files are reported, and a second run does not retry them all over again
    code, rep2 = index_json(capsys, coll, str(photos))
    assert rep2["added"] == 0 and rep2["updated"] == 0
    code, out, _ = run(capsys, "-c", coll, "verify", "--json")
    assert json.loads(out)["consistent"]


def test_bad_query_and_bad_arguments_give_one_line_and_no_traceback(photos, coll, tmp_path):
    r = cbir_subprocess("-c", coll, "index", str(photos), *CH, "-q")
    assert r.returncode == 0, r.stderr
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a jpeg")
    cases = [
        ("search", str(junk)),
        ("search", str(tmp_path / "missing.jpg")),
        ("search", str(photos), "-k", "0"),
        ("search", "--like", str(tmp_path / "not-indexed.jpg")),
        ("search", str(junk), "--min-similarity", "2"),
        ("index", str(tmp_path / "nowhere")),
        ("index", str(photos), "--extractor", "nope"),
    ]
    for argv in cases:
        r = cbir_subprocess("-c", coll, *argv)
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in r.stderr, (argv, r.stderr)
        assert "error" in lines[0]
    r = cbir_subprocess("-c", str(tmp_path / "empty"), "search", str(junk))
    assert r.returncode == 2 and "no collection" in r.stderr


def test_collection_of_another_extractor_is_refused(capsys, photos, coll):
    index_json(capsys, coll, str(photos))
    code, out, err = run(capsys, "-c", coll, "index", str(photos), "--extractor",
                         "efficientnet-lite0", "-q")
    assert code == 2 and "colorhist" in err


def test_kill_9_during_indexing_loses_nothing_committed(tmp_path):
    """Kill the indexer at several moments; every run after that resumes and ends consistent."""
    photos = tmp_path / "many"
    photos.mkdir()
    make_good_images(photos, 300)
    coll = tmp_path / "coll"
    import sqlite3
    import time

    committed_before: dict[str, int] = {}
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cbir.cli", "-c", str(coll), "index", str(photos), *CH, "-q",
             "--commit-every", "10", "--batch-size", "5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # wait until this run has committed something new, then kill it hard
        deadline = time.monotonic() + 60
        target = len(committed_before) + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                db = sqlite3.connect(coll / "catalog.sqlite", timeout=1)
                n = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
                db.close()
            except sqlite3.Error:
                n = 0
            if n >= target:
                break
            time.sleep(0.01 * (attempt + 1))
        proc.kill()
        proc.wait()
        db = sqlite3.connect(coll / "catalog.sqlite")
        now = dict(db.execute("SELECT path, id FROM images").fetchall())
        db.close()
        # nothing committed before is lost or changed
        for path, rid in committed_before.items():
            assert now.get(path) == rid
        committed_before = now
        r = cbir_subprocess("-c", str(coll), "verify", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["consistent"], r.stdout
    r = cbir_subprocess("-c", str(coll), "index", str(photos), *CH, "-q", "--json")
    rep = json.loads(r.stdout)
    assert rep["unchanged"] + rep["added"] == 300 and rep["unchanged"] == len(committed_before)
    r = cbir_subprocess("-c", str(coll), "info", "--json")
    assert json.loads(r.stdout)["images"] == 300


def test_readonly_collection_dir_is_a_clear_error(capsys, photos, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere; permission errors cannot be provoked")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, out, err = run(capsys, "-c", str(ro / "c"), "index", str(photos), *CH, "-q")
        assert code == 2 and err.count("\n") == 1
    finally:
        ro.chmod(0o700)
        shutil.rmtree(ro)


def test_links_can_be_ignored_so_nothing_outside_a_root_is_reached(tmp_path):
    """The service indexes with follow_symlinks=False: a link to a file outside is not read."""
    from cbir.collection import Collection
    from cbir.indexing import index_paths

    root, outside = tmp_path / "root", tmp_path / "outside"
    make_good_images(root, 2)
    make_good_images(outside, 1)
    (root / "link.jpg").symlink_to(next(outside.iterdir()))
    with Collection.create_or_open(tmp_path / "c", "colorhist") as col, col.writer_lock():
        rep = index_paths(col, [root], progress=False, follow_symlinks=False)
        assert rep.added == 2
        assert "link.jpg" not in {Path(r.path).name for r in col.catalog.iter_records()}
        rep = index_paths(col, [root], progress=False)  # the CLI default follows links
        assert rep.added == 1


def test_rerank_reorders_within_the_first_hits_and_keeps_each_hits_cosine(capsys, photos, coll):
    from cbir.collection import Collection
    from cbir.search import query_from_members, search

    assert index_json(capsys, coll, str(photos))[0] == 0
    like = str(sorted(photos.iterdir())[0])
    with Collection.open(Path(coll)) as col:
        query = query_from_members(col, [like])
        plain = search(col, query, k=11)
        for method in ("qe", "kr"):
            got = search(col, query, k=11, rerank=method, rerank_depth=11)
            assert {h.id for h in got} == {h.id for h in plain}  # the same first hits, re-ordered
            cos = {h.id: h.cosine for h in plain}
            assert all(h.cosine == cos[h.id] for h in got) and [h.rank for h in got] == list(range(1, 12))
        assert [h.id for h in search(col, query, k=11, rerank="none")] == [h.id for h in plain]
        shallow = search(col, query, k=11, rerank="qe", rerank_depth=3)
        assert [h.id for h in shallow][3:] == [h.id for h in plain][3:]  # below the depth: untouched
    code, out, _ = run(capsys, "-c", coll, "search", "--like", like, "--rerank", "qe", "--json")
    assert code == 0 and len(json.loads(out)["hits"]) == 10
    code, _, err = run(capsys, "-c", coll, "search", "--like", like, "--rerank", "5")
    assert code == 2 and "--codes" in err
    with pytest.raises(SystemExit) as e:
        main(["-c", coll, "search", "--like", like, "--rerank", "bogus"])
    assert e.value.code == 2 and "expected one of none, qe, kr" in capsys.readouterr().err
