"""Catalog and manifest: atomic batches, ids never reused, version and extractor checks."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from cbir.errors import CollectionError, IndexMismatch
from cbir.store import Catalog, ImageRecord, Manifest, read_manifest, write_manifest
from cbir.store.manifest import FORMAT_VERSION

DIM = 8


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _rec(path: str, seed: int = 0, **kw) -> ImageRecord:
    return ImageRecord(path=path, size=10, mtime_ns=1, sha256=f"h{seed}", feature=_unit(seed), **kw)


@pytest.fixture
def cat(tmp_path):
    with Catalog(tmp_path / "catalog.sqlite", DIM) as c:
        yield c


def test_features_round_trip_as_float16(cat):
    ids = cat.commit_batch([_rec("/a/1.jpg", 1), _rec("/a/2.jpg", 2)])
    got_ids, feats = cat.features()
    assert list(got_ids) == ids
    assert feats.dtype == np.float32 and feats.shape == (2, DIM)
    # float16 keeps ~3 decimal digits: error per component below 1e-3 for unit vectors
    np.testing.assert_allclose(feats[0], _unit(1), atol=1e-3)


def test_replacing_a_path_gives_a_new_id_and_ids_are_never_reused(cat):
    (a,) = cat.commit_batch([_rec("/a/1.jpg", 1)])
    (b,) = cat.commit_batch([_rec("/a/1.jpg", 2)])
    assert b > a and cat.get(id=a) is None
    cat.remove_paths(["/a/1.jpg"])
    (c,) = cat.commit_batch([_rec("/a/1.jpg", 3)])
    assert c > b  # AUTOINCREMENT: a deleted id is not handed out again


def test_generation_counts_commits(cat):
    g0 = cat.generation()
    cat.commit_batch([_rec("/x.jpg")])
    assert cat.generation() == g0 + 1
    assert cat.remove_paths(["/nope.jpg"]) == 0
    assert cat.generation() == g0 + 1  # nothing removed, nothing changed
    cat.remove_paths(["/x.jpg"])
    assert cat.generation() == g0 + 2


def test_a_failing_batch_leaves_nothing_behind(cat):
    cat.commit_batch([_rec("/keep.jpg", 1)])
    bad = ImageRecord(path="/bad.jpg", size=1, mtime_ns=1, feature=np.zeros(DIM + 1))
    with pytest.raises(CollectionError):
        cat.commit_batch([_rec("/new.jpg", 2), bad])
    assert cat.count() == 1 and cat.get(path="/new.jpg") is None


def test_file_states_under_a_folder_does_not_match_a_sibling_prefix(cat):
    cat.commit_batch([_rec("/photos/a.jpg", 1), _rec("/photos2/b.jpg", 2), _rec("/photos", 3)])
    assert set(cat.file_states(under="/photos")) == {"/photos/a.jpg", "/photos"}
    assert set(cat.file_states(under="/photos/")) == {"/photos/a.jpg", "/photos"}


def test_error_rows_and_summaries(cat):
    cat.commit_batch([
        ImageRecord(path="/e1.jpg", size=0, mtime_ns=1, status="error", error="empty file"),
        ImageRecord(path="/e2.jpg", size=0, mtime_ns=1, status="error", error="empty file"),
        _rec("/ok1.jpg", 1), _rec("/ok2.jpg", 1),  # same content twice
    ])
    assert cat.count("ok") == 2 and cat.count("error") == 2
    assert cat.error_summary() == [("empty file", 2)]
    assert cat.duplicate_groups() == 1
    assert cat.integrity_problems() == []


def test_integrity_check_flags_a_damaged_feature(cat, tmp_path):
    cat.commit_batch([_rec("/ok.jpg", 1)])
    cat.db.execute("UPDATE images SET feature = zeroblob(4)")
    assert any("wrong-size feature" in p for p in cat.integrity_problems())


def test_regions_round_trip(cat):
    reg = np.arange(49 * 4, dtype=np.float32).reshape(49, 4) / 100
    (i,) = cat.commit_batch([_rec("/r.jpg", 1, regions=reg)])
    np.testing.assert_allclose(cat.regions([i])[i], reg, atol=1e-2)
    cat.remove_paths(["/r.jpg"])
    assert cat.regions([i]) == {}  # ON DELETE CASCADE


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "catalog.sqlite"
    Catalog(path, DIM).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(CollectionError, match="newer than this cbir"):
        Catalog(path, DIM)


def test_manifest_round_trip_and_checks(tmp_path):
    m = Manifest(extractor="x", dim=8, preprocessing={"size": 224})
    write_manifest(tmp_path, m)
    got = read_manifest(tmp_path)
    assert got.extractor == "x" and got.dim == 8 and got.format_version == FORMAT_VERSION
    got.check_extractor("x", 8, {"size": 224})
    with pytest.raises(IndexMismatch, match="made with extractor 'x'"):
        got.check_extractor("y", 8, {"size": 224})
    with pytest.raises(IndexMismatch, match="preprocesses images differently"):
        got.check_extractor("x", 8, {"size": 256})


def test_newer_manifest_format_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format_version": FORMAT_VERSION + 1, "extractor": "x", "dim": 8}))
    with pytest.raises(CollectionError, match="newer than this cbir"):
        read_manifest(tmp_path)


def test_missing_manifest_says_how_to_create(tmp_path):
    with pytest.raises(CollectionError, match="cbir index"):
        read_manifest(tmp_path)


def test_a_version_1_catalog_is_migrated_in_place(tmp_path):
    from cbir.store.catalog import _MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "catalog.sqlite"
    db = sqlite3.connect(path)
    db.executescript(f"BEGIN; {_MIGRATIONS[1]} PRAGMA user_version=1; COMMIT;")
    db.execute("INSERT INTO images (path, size, mtime_ns, status, indexed_at) VALUES ('/a', 1, 1, 'ok', 0)")
    db.commit()
    db.close()
    with Catalog(path, DIM) as cat:
        assert cat.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert cat.count() == 1  # the rows survive
        cat.put_codes("h", [1], np.array([[7]], dtype=np.uint8))
        assert cat.ids_without_codes("h").tolist() == []
