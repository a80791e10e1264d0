"""What a cold command relies on (issue 13): memory-mapped indexes, float16 index vectors,
running counts kept by the catalog (also across a kill -9 and a schema migration), and
`cbir verify --quick`. Small and deterministic; bench/bench_cold.py has the 1M figures."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cbir.cli import main
from cbir.collection import Collection
from cbir.index import create_index, load_index
from cbir.index.base import Blob, write_index_file
from cbir.store.catalog import _MIGRATIONS, SCHEMA_VERSION, Catalog, ImageRecord

DIM = 16


def unit_f16(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Unit vectors that float16 represents exactly (as a collection's stored features)."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)


BACKENDS = [("exact", {}), ("hnsw", {"M": 8}), ("ivf", {"nlist": 4, "nprobe": 4}),
            ("ivf", {"nlist": 4, "nprobe": 4, "pq_m": 4, "pq_nbits": 4})]


# ----------------------------------------------------------------------------- mmap + fp16
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(("name", "params"), BACKENDS)
def test_mapped_load_searches_alike_and_copies_itself_before_a_change(tmp_path, name, params, dtype):
    x = unit_f16(800)
    ids = np.arange(800, dtype=np.int64) * 2 + 5
    idx = create_index(name, DIM, dtype=dtype, **params)
    idx.add(ids, x)
    path = tmp_path / "i.faiss"
    idx.save(path)
    want_s, want_i = idx.search(x[:20], 5)

    mapped = load_index(path, mmap=True)
    assert mapped.mapped and mapped.params["dtype"] == dtype
    got_s, got_i = mapped.search(x[:20], 5)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-6)
    assert (got_i[:, 0] == ids[:20]).all()

    # the file is replaced (as a writer's atomic save does); the mapped index still has
    # the old bytes, and its first change copies exactly those into memory
    other = create_index(name, DIM, dtype=dtype, **params)
    other.add(np.array([1], dtype=np.int64), x[:1])
    other.save(path)
    assert mapped.remove(ids[:3]) == 3 and not mapped.mapped
    assert len(mapped) == 797
    mapped.add(np.array([10_001], dtype=np.int64), x[:1])
    assert 10_001 in mapped.search(x[:1], 5)[1][0]  # (ids[0], its old id, is gone)
    assert not np.isin(mapped.search(x[:3], 10)[1], ids[:3]).any()


def test_float16_vectors_halve_the_file_and_are_exact_for_float16_features(tmp_path):
    x = unit_f16(500, dim=256)
    ids = np.arange(500, dtype=np.int64)
    sizes = {}
    for dtype in ("float32", "float16"):
        idx = create_index("exact", 256, dtype=dtype)
        idx.add(ids, x)
        idx.save(tmp_path / dtype)
        sizes[dtype] = (tmp_path / dtype).stat().st_size
        s, i = idx.search(x[:50], 10)
        true = x[:50] @ x.T
        np.testing.assert_allclose(s, np.take_along_axis(true, i, axis=1), atol=1e-6)
    assert sizes["float16"] < 0.6 * sizes["float32"]


def test_an_index_file_from_before_dtype_existed_still_loads(tmp_path):
    """Files written before the ``dtype`` knob have no such param: they load as float32."""
    import faiss

    x = unit_f16(50)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    flat.add_with_ids(x, np.arange(50, dtype=np.int64))
    path = tmp_path / "old.faiss"
    write_index_file(path, {"backend": "exact", "dim": DIM, "params": {}, "count": 50, "state": {}},
                     [Blob("ids", np.arange(50, dtype=np.int64)), Blob("index", flat)])
    for mmap in (False, True):
        idx = load_index(path, mmap=mmap)
        assert idx.params == {"dtype": "float32"} and idx.search(x[7:8], 1)[1][0, 0] == 7


def test_ivf_float16_retrains_from_its_own_vectors():
    x = unit_f16(3000, seed=3)
    idx = create_index("ivf", DIM, dtype="float16", min_points_per_list=4,
                       train_points_per_list=8)
    idx.add(np.arange(200, dtype=np.int64), x[:200])
    first = idx.current_nlist
    idx.add(np.arange(200, 3000, dtype=np.int64), x[200:])  # ~4x more: retrains
    assert idx.is_trained and idx.current_nlist > first
    _, i = idx.search(x[:30], 1, nprobe=idx.current_nlist)
    assert (i[:, 0] == np.arange(30)).all()


# ----------------------------------------------------------------------------- counts
def rec(path: str, sha: str | None = None, status: str = "ok", dim: int = DIM) -> ImageRecord:
    if status == "error":
        return ImageRecord(path=path, size=1, mtime_ns=1, status="error", error="bad")
    return ImageRecord(path=path, size=1, mtime_ns=1, sha256=sha, feature=unit_f16(1, dim)[0])


def true_counts(cat: Catalog) -> tuple[int, int, int]:
    ok = cat.db.execute("SELECT COUNT(*) FROM images WHERE status='ok'").fetchone()[0]
    err = cat.db.execute("SELECT COUNT(*) FROM images WHERE status='error'").fetchone()[0]
    dup = cat.db.execute("SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) c FROM images WHERE"
                         " status='ok' AND sha256 IS NOT NULL GROUP BY sha256 HAVING c > 1)").fetchone()[0]
    return ok, err, dup


def kept_counts(cat: Catalog) -> tuple[int, int, int]:
    return cat.count("ok"), cat.count("error"), cat.duplicate_groups()


def test_running_counts_follow_every_kind_of_change(tmp_path):
    with Catalog(tmp_path / "c.sqlite", DIM) as cat:
        steps = [
            lambda: cat.commit_batch([rec("/a", "x"), rec("/b", "x"), rec("/c", "y"),
                                      rec("/e", status="error"), rec("/n")]),
            lambda: cat.commit_batch([rec("/d", "x")]),                   # a third copy of x
            lambda: cat.commit_batch([rec("/a", "z")]),                   # /a replaced: now z
            lambda: cat.commit_batch([rec("/c", status="error")]),        # ok -> error
            lambda: cat.commit_batch([rec("/e", "y")], remove_paths=["/b"]),  # error -> ok
            lambda: cat.remove_paths(["/d", "/nope"]),
            lambda: cat.db.execute("UPDATE images SET sha256='z' WHERE path='/e'"),  # by hand
            lambda: cat.db.execute("UPDATE images SET status='error', error='x', feature=NULL"
                                   " WHERE path='/a'"),
            lambda: cat.clear(),
        ]
        for step in steps:
            step()
            assert kept_counts(cat) == true_counts(cat)
            assert cat.stats_problems() == []
        assert kept_counts(cat) == (0, 0, 0)


def test_recount_repairs_counts_and_verify_names_wrong_ones(tmp_path, capsys):
    c = tmp_path / "col"
    with Collection.create_or_open(c, "colorhist") as col, col.writer_lock():
        col.catalog.commit_batch([rec(f"/i{i}", f"s{i % 3}", dim=col.manifest.dim) for i in range(9)])
        col.catalog.db.execute("UPDATE stats SET value = value + 5 WHERE key = 'ok'")
        assert col.info()["images"] == 14
    assert main(["-c", str(c), "verify", "--quick"]) == 2
    assert "running count 'ok' is 14 but the rows say 9" in capsys.readouterr().out
    assert main(["-c", str(c), "--json", "verify", "--recount"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["consistent"] and out["images"] == 9 and not out["quick"]
    with Collection.open(c) as col:
        assert col.info()["images"] == 9 and col.info()["duplicates"] == 6


def test_counts_survive_a_kill_9_mid_commit(tmp_path):
    """A writer killed (SIGKILL) while committing batches leaves counts that match the rows."""
    path = tmp_path / "c.sqlite"
    Catalog(path, DIM).close()
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from cbir.store.catalog import Catalog, ImageRecord
        cat = Catalog({str(path)!r}, {DIM})
        f = np.ones({DIM}, dtype=np.float32) / {DIM} ** 0.5
        i = 0
        while True:
            cat.commit_batch([ImageRecord(path=f"/p{{(i + j) % 700}}", size=1, mtime_ns=1,
                              sha256=f"s{{(i + j) % 50}}", feature=f) for j in range(40)],
                             remove_paths=[f"/p{{(i * 7) % 700}}"])
            i += 1
            if i == 30:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Catalog(path, DIM) as cat:
        assert cat.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert cat.count("ok") > 0
        assert kept_counts(cat) == true_counts(cat)


def test_a_schema_4_catalog_is_migrated_with_its_counts(tmp_path):
    path = tmp_path / "c.sqlite"
    db = sqlite3.connect(path)
    for v in range(1, 5):
        db.executescript(f"BEGIN; {_MIGRATIONS[v]} PRAGMA user_version={v}; COMMIT;")
    rows = [("/a", "x", "ok"), ("/b", "x", "ok"), ("/c", "x", "ok"), ("/d", "y", "ok"),
            ("/e", None, "error")]
    db.executemany("INSERT INTO images (path, sha256, size, mtime_ns, status, indexed_at)"
                   " VALUES (?, ?, 1, 1, ?, 0)", rows)
    db.commit()
    db.close()
    with Catalog(path, DIM) as cat:
        assert cat.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert kept_counts(cat) == (4, 1, 2) == true_counts(cat)
        cat.remove_paths(["/a"])
        assert kept_counts(cat) == (3, 1, 1)


# ----------------------------------------------------------------------------- collection
def test_collection_maps_a_current_index_and_syncs_a_stale_one(tmp_path, capsys):
    c = tmp_path / "col"
    with Collection.create_or_open(c, "colorhist") as col, col.writer_lock():
        dim = col.manifest.dim
        col.catalog.commit_batch([rec(f"/i{i}", f"s{i}", dim=dim) for i in range(40)])
        idx = col.index()
        assert idx.name == "exact" and idx.params["dtype"] == "float16" and len(idx) == 40
    with Collection.open(c) as col:
        idx = col.index()
        assert idx.mapped and len(idx) == 40  # up to date: mapped, nothing read
        col.catalog.commit_batch([rec("/new", "t", dim=dim)], remove_paths=["/i0"])
        idx = col.index()  # behind: synced (copied into memory first) and saved
        assert not idx.mapped and len(idx) == 40
    for quick in ([], ["--quick"]):
        assert main(["-c", str(c), "--json", "verify", *quick]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["consistent"] and out["quick"] == bool(quick), out
    assert main(["-c", str(c), "--json", "search", "--like", "/i5", "-k", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["path"] != "/i5"


def test_collection_hnsw_keeps_8_bit_codes_and_returns_exact_scores(tmp_path):
    """A collection's HNSW index walks 8-bit codes and re-scores its candidates from the
    catalog: scores equal the exact search's (which reads the same float16 features), removed
    rows never come back, and the mapped index, once changed, still re-scores."""
    c = tmp_path / "col"
    with Collection.create_or_open(c, "colorhist") as col, col.writer_lock():
        dim = col.manifest.dim
        x = np.abs(unit_f16(600, dim, seed=3))  # non-negative, as colour histograms are
        col.catalog.commit_batch([ImageRecord(path=f"/i{i}", size=1, mtime_ns=1, sha256=f"s{i}",
                                              feature=x[i] / np.linalg.norm(x[i])) for i in range(600)])
        col.set_requested_index("hnsw")
        idx = col.index()
        assert idx.name == "hnsw" and idx.params["dtype"] == "int8" and idx.exact_scores
        exact = col.index("exact", persist=False)
        _, q = col.catalog.features(col.catalog.ok_ids()[:30])
        s_h, i_h = idx.search(q, 5)
        s_e, i_e = exact.search(q, 5)
        np.testing.assert_allclose(s_h, s_e, atol=1e-6)
        assert np.mean(i_h == i_e) >= 0.95
    with Collection.open(c) as col:
        idx = col.index()
        assert idx.mapped and idx.exact_scores
        gone = col.catalog.ok_ids()[:10]
        col.catalog.commit_batch([], remove_paths=[f"/i{i}" for i in range(10)])
        idx = col.index()  # synced: copied into memory, still re-scored from the catalog
        assert not idx.mapped and idx.exact_scores
        s, i = idx.search(q, 5)
        assert not np.isin(i, gone).any()
        got, f = col.catalog.features(i[:, 0])
        f = f[[list(got).index(j) for j in i[:, 0]]]  # (features() answers in its own order)
        np.testing.assert_allclose(s[:, 0], np.einsum("qd,qd->q", q, f), atol=1e-6)


def test_verify_quick_names_an_index_that_lies_about_being_current(tmp_path, capsys):
    c = tmp_path / "col"
    with Collection.create_or_open(c, "colorhist") as col, col.writer_lock():
        dim = col.manifest.dim
        col.catalog.commit_batch([rec(f"/i{i}", dim=dim) for i in range(10)])
        col.index()
        # a row slipped in without a generation bump (never happens through the API)
        col.catalog.db.execute("INSERT INTO images (path, size, mtime_ns, status, feature, indexed_at)"
                               " VALUES ('/x', 1, 1, 'ok', ?, 0)",
                               (unit_f16(1, dim)[0].astype("<f2").tobytes(),))
    assert main(["-c", str(c), "verify", "--quick"]) == 2
    assert "claims to be current but holds 10 ids where the catalog has 11" in capsys.readouterr().out
