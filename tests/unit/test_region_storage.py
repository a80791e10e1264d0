"""Region features in the catalog: 8-bit codes with a per-row range, old float16 rows still read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbir.errors import BackendUnavailable, CollectionError
from cbir.store import Catalog, ImageRecord
from cbir.store.catalog import REGIONS_U8_ROW, pack_regions, unpack_regions

DIM = 8
R, C = 49, 1280


def _rec(path: str, seed: int = 0, **kw) -> ImageRecord:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return ImageRecord(path=path, size=10, mtime_ns=1, sha256=f"h{seed}", feature=v / np.linalg.norm(v), **kw)


@pytest.fixture
def cat(tmp_path):
    with Catalog(tmp_path / "catalog.sqlite", DIM) as c:
        yield c


def _relu6_regions(seed: int, n: int = 1) -> np.ndarray:
    """Like the extractor's: ReLU6 outputs, mostly zero, rows with very different ranges."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, R, C)).astype(np.float32) * rng.uniform(0.05, 3, size=(n, R, 1))
    x = np.clip(x - rng.uniform(0, 1.5, size=(n, R, 1)), 0, 6).astype(np.float32)
    x[:, 3] += 2.5  # a row whose minimum is far from 0
    x[:, 4] = 1.2345  # a constant row
    return x[0] if n == 1 else x


def _half_ulp16(v: np.ndarray) -> np.ndarray:
    v16 = np.abs(v).astype(np.float16)
    return (np.nextafter(v16, np.float16(np.inf)).astype(np.float32) - v16.astype(np.float32)) / 2


def test_round_trip_error_is_at_most_half_a_step_per_row(cat):
    reg = _relu6_regions(0)
    (i,) = cat.commit_batch([_rec("/r.jpg", 1, regions=reg)])
    shape, blob = cat.db.execute("SELECT shape, data FROM regions WHERE image_id=?", (i,)).fetchone()
    assert json.loads(shape) == {"shape": [R, C], "q": REGIONS_U8_ROW}
    got = cat.regions([i])[i]
    assert got.dtype == np.float16 and got.shape == (R, C)
    step = (reg.max(axis=1) - reg.min(axis=1)) / 255
    # half a code step (its range is rounded outwards to float16: a hair wider), then the
    # float16 rounding of the returned value
    bound = step[:, None] / 2 * (1 + 1e-2) + _half_ulp16(reg) + 1e-7
    err = np.abs(got.astype(np.float32) - reg)
    assert (err <= bound).all(), float((err - bound).max())
    assert err[4].max() <= 2 * _half_ulp16(reg[4]).max()  # a constant row
    assert err[3].max() < 0.02  # a row not starting at 0 keeps its offset
    assert (got[reg == 0] == 0).all()  # zeros stay exactly zero (the extractor's ReLU)


def test_blob_is_half_the_float16_size(cat):
    reg = _relu6_regions(1)
    (i,) = cat.commit_batch([_rec("/r.jpg", 1, regions=reg)])
    (n,) = cat.db.execute("SELECT length(data) FROM regions WHERE image_id=?", (i,)).fetchone()
    assert n == R * C + 4 * R == 62_916  # codes + float16 lo/hi per row
    assert n / (2 * R * C) < 0.51  # float16 rows took 125,440 bytes


def test_old_float16_rows_read_unchanged(cat):
    reg = _relu6_regions(2).astype("<f2")
    (i,) = cat.commit_batch([_rec("/old.jpg", 1)])
    # as the code before the 8-bit format wrote them
    cat.db.execute("INSERT INTO regions VALUES (?, ?, ?)", (i, json.dumps(list(reg.shape)), reg.tobytes()))
    got = cat.regions([i])[i]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, reg)


def test_duplicate_copy_does_not_drift(cat):
    """indexing copies a duplicate's regions by reading them and writing them back."""
    reg = _relu6_regions(3)
    (a,) = cat.commit_batch([_rec("/a.jpg", 1, regions=reg)])
    first = cat.regions([a])[a]
    prev, blobs = first, []
    for k in range(3):
        (b,) = cat.commit_batch([_rec(f"/copy{k}.jpg", 1, regions=prev)])
        again = cat.regions([b])[b]
        np.testing.assert_array_equal(again, first)
        blobs.append(cat.db.execute("SELECT data FROM regions WHERE image_id=?", (b,)).fetchone()[0])
        prev = again
    # the stored bytes too settle after one copy (a constant row's range shrinks to its value)
    assert blobs[0] == blobs[1] == blobs[2]


def test_requantising_is_stable_on_awkward_rows():
    """Narrow ranges far from 0 (the step below float16's resolution) still come back as they were."""
    rng = np.random.default_rng(4)
    reg = np.concatenate([
        5.9 + rng.uniform(0, 0.1, size=(8, 64)),  # step 0.0004 < float16 spacing 0.004
        1000 + rng.uniform(0, 3, size=(8, 64)),
        rng.uniform(-2, 2, size=(8, 64)),  # negative values
        rng.uniform(0, 1e-4, size=(8, 64)),  # tiny values (float16 subnormals)
    ]).astype(np.float32)
    once = unpack_regions(*pack_regions(reg))
    assert np.abs(once.astype(np.float32) - reg).max() < 0.6  # row 1000..1003: f16 spacing 0.5
    twice = unpack_regions(*pack_regions(once))
    np.testing.assert_array_equal(twice, once)


def test_what_cannot_be_quantised_is_stored_as_float16(cat):
    for reg in (np.array([[1.0, np.nan], [0.0, 1.0]], np.float32), np.arange(5, dtype=np.float32),
                np.array([[1e6, 0.0]], np.float32)):
        with np.errstate(over="ignore"):  # 1e6 -> inf in float16, as before
            shape, blob = pack_regions(reg)
            want = reg.astype(np.float16)
        assert json.loads(shape) == list(reg.shape) and len(blob) == 2 * reg.size
        np.testing.assert_array_equal(unpack_regions(shape, blob), want)


def test_damaged_blob_raises(cat):
    reg = _relu6_regions(5)
    a, b = cat.commit_batch([_rec("/a.jpg", 1, regions=reg),
                             _rec("/b.jpg", 2, regions=reg.astype(np.float16))])
    cat.db.execute("UPDATE regions SET data = substr(data, 1, 1000) WHERE image_id=?", (a,))
    with pytest.raises(CollectionError, match=f"image {a} are damaged"):
        cat.regions([a, b])
    # an old float16 row cut short raised numpy's ValueError before; now the same clear error
    (c,) = cat.commit_batch([_rec("/c.jpg", 3)])
    cat.db.execute("INSERT INTO regions VALUES (?, ?, ?)", (c, "[49, 1280]", b"\0" * 1001))
    with pytest.raises(CollectionError, match="damaged"):
        cat.regions([c])
    cat.db.execute("UPDATE regions SET shape = ? WHERE image_id=?", ('{"shape": [49, 1280], "q": "zz"}', b))
    with pytest.raises(CollectionError, match="unknown format"):
        cat.regions([b])


def test_reindexing_a_duplicate_copies_its_regions(tmp_path: Path):
    """The real path: `cbir index --regions` embeds one file and copies its regions to a twin."""
    from badfiles import make_good_images
    from cbir import indexing
    from cbir.collection import Collection
    from cbir.extract import DEFAULT_EXTRACTOR

    photos = tmp_path / "photos"
    paths = make_good_images(photos, 2, size=(96, 80))
    try:
        col = Collection.create_or_open(tmp_path / "coll", DEFAULT_EXTRACTOR)
    except BackendUnavailable as e:
        pytest.skip(str(e))
    with col, col.writer_lock():
        rep = indexing.index_paths(col, [photos], regions=True, progress=False)
        assert not rep.failed
        (photos / f"twin{paths[0].suffix}").write_bytes(paths[0].read_bytes())
        rep = indexing.index_paths(col, [photos], regions=True, progress=False)
        assert rep.duplicates == 1
        rows = {r.path: r.id for r in col.catalog.iter_records()}
        orig, twin = rows[str(paths[0])], rows[str(photos / f"twin{paths[0].suffix}")]
        got = col.catalog.regions([orig, twin])
        assert got[orig].shape == (49, 1280) and got[orig].dtype == np.float16
        np.testing.assert_array_equal(got[twin], got[orig])
        shapes = [json.loads(s) for (s,) in col.catalog.db.execute("SELECT shape FROM regions")]
        assert all(s["q"] == REGIONS_U8_ROW for s in shapes) and len(shapes) == 3
