"""One contract suite run over every registered binary (Hamming) index backend.

Results are checked exactly against a brute-force ranking by (Hamming distance, id):
every backend is exact, including multi-index hashing within a radius, and ``milvus`` (codes
in a real Milvus server: the session fixture ``milvus_uri``; skipped with its reason when no
server can start, a failure under CI=true).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cbir.errors import IndexMismatch, InvalidRequest, UnknownComponent
from cbir.hashing import (
    BINARY_INDEXES,
    MultiIndexHashing,
    create_binary_index,
    hamming_distances,
    load_binary_index,
)
from cbir.hashing.binary_index import BinaryFlatIndex

BACKENDS = BINARY_INDEXES.names()
#: backends whose cases need the session's Milvus server
NEEDS_MILVUS = {"milvus"}


@pytest.fixture(params=BACKENDS)
def name(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each registered backend; ``milvus`` starts (once) the session's server, and drops the
    collections its test made."""
    if request.param not in NEEDS_MILVUS:
        yield request.param
        return
    uri = request.getfixturevalue("milvus_uri")
    yield request.param
    _drop_test_collections(uri)


def _drop_test_collections(uri: str) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        for coll in client.list_collections():
            if coll.startswith("cbir_bin_"):
                client.drop_collection(coll)
    finally:
        client.close()


def random_codes(n: int, bits: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, (bits + 7) // 8), dtype=np.uint8)
    if bits % 8:
        codes[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    return codes


def clustered_codes(n: int, bits: int, seed: int = 0, n_centers: int = 10, flips: int = 3) -> np.ndarray:
    """Codes near n_centers fixed random centres (each bit flipped with probability flips/bits).

    The centres depend only on bits, so database and queries drawn with different seeds
    share them.
    """
    centers = np.random.default_rng(bits).random((n_centers, bits)) < 0.5
    rng = np.random.default_rng(seed)
    noise = rng.random((n, bits)) < flips / bits
    return np.packbits(centers[rng.integers(0, n_centers, n)] ^ noise, axis=1)


def brute_knn(q: np.ndarray, codes: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = hamming_distances(q, codes)
    order = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), ids[order]


def brute_radius(
    q: np.ndarray, codes: np.ndarray, ids: np.ndarray, r: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    d = hamming_distances(q, codes)
    out = []
    for row in d:
        keep = np.flatnonzero(row <= r)
        order = np.lexsort((ids[keep], row[keep]))
        out.append((ids[keep][order], row[keep][order]))
    return out


def assert_same_radius(got, want) -> None:
    assert len(got) == len(want)
    for (gi, gd), (wi, wd) in zip(got, want, strict=True):
        assert gi.dtype == np.int64 and gd.dtype == np.int32
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_array_equal(gd, wd)


def filled(name: str, bits: int, n: int, seed: int = 0, codes: np.ndarray | None = None, **params):
    """An index with n codes under shuffled, gappy ids, added in three out-of-order batches."""
    rng = np.random.default_rng(seed + 1)
    codes = random_codes(n, bits, seed) if codes is None else codes
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    index = create_binary_index(name, bits, **params)
    for part in np.array_split(np.arange(n), 3)[::-1]:
        index.add(ids[part], codes[part])
    return index, ids, codes


# --------------------------------------------------------------------------- basics


def test_empty_index(name):
    index = create_binary_index(name, 64)
    assert len(index) == 0 and index.ids().dtype == np.int64 and index.ids().size == 0
    q = random_codes(3, 64)
    d, i = index.search(q, 5)
    assert d.dtype == np.int32 and i.dtype == np.int64 and d.shape == i.shape == (3, 5)
    assert (i == -1).all() and (d == 65).all()
    res = index.search_radius(q, 10)
    assert len(res) == 3 and all(r[0].size == 0 and r[1].size == 0 for r in res)
    d, i = index.search(np.zeros((0, 8), np.uint8), 5)
    assert d.shape == i.shape == (0, 5)


@pytest.mark.parametrize("bits", [8, 20, 64, 100, 128])
def test_knn_equals_brute_force(name, bits):
    index, ids, codes = filled(name, bits, 1500, seed=bits)
    assert len(index) == 1500
    np.testing.assert_array_equal(index.ids(), np.sort(ids))
    q = np.concatenate([random_codes(12, bits, seed=99), codes[:3]])  # includes exact matches
    for k in (1, 10, 60):
        d, i = index.search(q, k)
        wd, wi = brute_knn(q, codes, ids, k)
        np.testing.assert_array_equal(d, wd)
        np.testing.assert_array_equal(i, wi)
    assert (index.search(codes[:3], 1)[0][:, 0] == 0).all()


@pytest.mark.parametrize("bits", [16, 64, 100])
def test_radius_equals_brute_force(name, bits):
    codes = clustered_codes(2000, bits, seed=bits)
    index, ids, codes = filled(name, bits, 2000, codes=codes)
    q = np.concatenate([clustered_codes(10, bits, seed=bits), random_codes(4, bits, seed=5)])
    for r in (0, 1, 2, 3, 5, 8, bits):
        assert_same_radius(index.search_radius(q, r), brute_radius(q, codes, ids, r))


def test_k_larger_than_n_pads(name):
    index, ids, codes = filled(name, 32, 7)
    d, i = index.search(codes[:2], 10)
    assert d.shape == i.shape == (2, 10)
    assert (i[:, 7:] == -1).all() and (d[:, 7:] == 33).all()
    assert set(i[0, :7]) == set(ids)
    assert np.all(np.diff(d, axis=1) >= 0)


def test_remove_and_readd(name):
    bits = 64
    index, ids, codes = filled(name, bits, 300)
    gone = ids[::3]
    assert index.remove(np.concatenate([gone, [10**9]])) == gone.size  # unknown id ignored
    assert index.remove(gone) == 0
    assert len(index) == 300 - gone.size
    keep = np.setdiff1d(np.arange(300), np.arange(300)[::3])
    d, i = index.search(codes, 300)
    assert not np.isin(i, gone).any()
    assert not np.isin(np.concatenate([r[0] for r in index.search_radius(codes, bits)]), gone).any()
    wd, wi = brute_knn(codes, codes[keep], ids[keep], 300)
    np.testing.assert_array_equal(i[:, : keep.size], wi)
    np.testing.assert_array_equal(d[:, : keep.size], wd)
    # re-adding an id replaces its code: the old code no longer finds it at distance 0
    target = ids[1]
    new_code = ~codes[1:2]
    index.add(np.array([target]), new_code)
    assert len(index) == 300 - gone.size
    d, i = index.search(new_code, 1)
    assert i[0, 0] == target and d[0, 0] == 0
    hits = index.search_radius(codes[1:2], 0)[0][0]
    assert target not in hits
    # ids stay stable and sorted
    np.testing.assert_array_equal(index.ids(), np.sort(ids[keep]))


def test_save_load_round_trip(name, tmp_path: Path):
    bits = 64
    index, ids, codes = filled(name, bits, 500)
    index.remove(ids[:50])
    path = tmp_path / "sub" / f"{name}.idx"
    index.save(path)
    assert not list(path.parent.glob(".*.tmp"))
    assert b'"backend": "' + name.encode() + b'"' in path.read_bytes()[:4096]
    q = random_codes(7, bits, seed=3)
    for loaded in (load_binary_index(path), type(index).load(path)):
        assert loaded.name == name and loaded.bits == bits and loaded.params == index.params
        np.testing.assert_array_equal(loaded.ids(), index.ids())
        for a, b in zip(loaded.search(q, 20), index.search(q, 20), strict=True):
            np.testing.assert_array_equal(a, b)
        assert_same_radius(loaded.search_radius(q, 20), index.search_radius(q, 20))
    # an empty index round-trips too
    empty = create_binary_index(name, 16)
    empty.save(tmp_path / "empty.idx")
    assert len(load_binary_index(tmp_path / "empty.idx")) == 0


def test_load_refuses_other_backend_and_files(tmp_path: Path):
    path = tmp_path / "flat.idx"
    filled("binary-flat", 32, 10)[0].save(path)
    with pytest.raises(IndexMismatch, match="not 'multi-index'"):
        MultiIndexHashing.load(path)
    junk = tmp_path / "junk.idx"
    junk.write_bytes(b"garbage")
    with pytest.raises(IndexMismatch):
        load_binary_index(junk)
    with pytest.raises(InvalidRequest, match="no such"):
        load_binary_index(tmp_path / "missing.idx")


# --------------------------------------------------------------------------- validation


def test_bad_input_raises_invalid_request(name):
    index = create_binary_index(name, 64)
    good = random_codes(3, 64)
    with pytest.raises(InvalidRequest, match=r"\(n, 8\)"):
        index.add(np.arange(3), random_codes(3, 32))  # wrong code width
    with pytest.raises(InvalidRequest, match="uint8"):
        index.add(np.arange(3), good.astype(np.int64))
    with pytest.raises(InvalidRequest, match="pack_bits"):
        index.add(np.arange(3), np.zeros((3, 64), dtype=bool))
    with pytest.raises(InvalidRequest):
        index.add(np.arange(2), good)  # length mismatch
    with pytest.raises(InvalidRequest, match=">= 0"):
        index.add(np.array([0, -1, 2]), good)
    with pytest.raises(InvalidRequest, match="unique"):
        index.add(np.array([0, 0, 2]), good)
    index.add(np.arange(3), good)
    with pytest.raises(InvalidRequest, match=r"\(n, 8\)"):
        index.search(random_codes(2, 128), 1)
    with pytest.raises(InvalidRequest):
        index.search(good[0], 1)
    for k in (0, -1, 1.5, True):
        with pytest.raises(InvalidRequest, match="k must"):
            index.search(good, k)
    for r in (-1, 1.5, None):
        with pytest.raises(InvalidRequest, match="radius"):
            index.search_radius(good, r)
    with pytest.raises(InvalidRequest):
        index.remove(np.array([[1]]))
    for bits in (4, 129):
        with pytest.raises(InvalidRequest, match="bits"):
            create_binary_index(name, bits)
    with pytest.raises(UnknownComponent, match="binary-flat"):
        create_binary_index("nope", 64)


def test_padding_bits_are_ignored(name):
    # 12-bit codes: the low 4 bits of byte 1 are padding and must never count.
    index = create_binary_index(name, 12)
    index.add(np.array([5]), np.array([[0xAB, 0xC0]], np.uint8))
    d, i = index.search(np.array([[0xAB, 0xCF]], np.uint8), 1)
    assert i[0, 0] == 5 and d[0, 0] == 0


# --------------------------------------------------------------------------- multi-index


@pytest.mark.parametrize(("bits", "m"), [(32, 1), (32, 2), (32, 3), (32, 4), (64, 3), (100, 4), (128, 6)])
def test_multi_index_probing_is_exact(bits, m):
    # scan_ratio tiny: probe buckets unless that means more probes than codes. Substrings
    # of 25 bits (100/4) cross a 64-bit word boundary and use the itertools masks.
    codes = clustered_codes(3000, bits, seed=m, flips=2)
    index, ids, codes = filled("multi-index", bits, 3000, codes=codes, m=m, scan_ratio=1e-9)
    q = np.concatenate([clustered_codes(8, bits, seed=m + 10, flips=2), random_codes(3, bits, seed=m)])
    for r in (0, 1, 2, 4, 7):
        assert_same_radius(index.search_radius(q, r), brute_radius(q, codes, ids, r))
    for k in (1, 25, 200):
        d, i = index.search(q, k)
        wd, wi = brute_knn(q, codes, ids, k)
        np.testing.assert_array_equal(d, wd)
        np.testing.assert_array_equal(i, wi)


def test_multi_index_params():
    assert MultiIndexHashing(64).m == 3 and MultiIndexHashing(128).m == 6 and MultiIndexHashing(32).m == 2
    assert MultiIndexHashing(64, m=4)._lens == [16, 16, 16, 16]
    assert MultiIndexHashing(70, m=3)._lens == [24, 23, 23]
    for m in (0, 1, 65, 2.5):  # 64 bits need m >= 2 (substrings of at most 32 bits)
        with pytest.raises(InvalidRequest, match="m "):
            MultiIndexHashing(64, m=m)
    with pytest.raises(InvalidRequest, match="scan_ratio"):
        MultiIndexHashing(64, scan_ratio=0)


def test_binary_flat_has_no_knobs():
    assert BinaryFlatIndex(64).params == {}


# --------------------------------------------------------------------------- milvus


@pytest.fixture
def milvus_only(milvus_uri: str) -> Iterator[str]:
    yield milvus_uri
    _drop_test_collections(milvus_uri)


def test_milvus_ties_straddling_k_and_past_its_topk_limit(milvus_only, monkeypatch):
    """Tie groups far wider than k (Milvus returns ties in any order) and searches that need
    more than Milvus's topk limit (lowered here to 64) still give the brute-force order."""
    from cbir.hashing import milvus_binary

    bits = 16
    codes = np.repeat(random_codes(4, bits, seed=7), 100, axis=0)  # 4 codes, 100 copies each
    index, ids, codes = filled("milvus", bits, 400, codes=codes, index_type="BIN_IVF_FLAT", nlist=4)
    q = np.concatenate([codes[:1], codes[150:151], random_codes(2, bits, seed=8)])
    for k in (1, 5, 40, 150):
        d, i = index.search(q, k)
        wd, wi = brute_knn(q, codes, ids, k)
        np.testing.assert_array_equal(d, wd)
        np.testing.assert_array_equal(i, wi)
    monkeypatch.setattr(milvus_binary, "MAX_TOPK", 64)
    d, i = index.search(q, 150)
    wd, wi = brute_knn(q, codes, ids, 150)
    np.testing.assert_array_equal(d, wd)
    np.testing.assert_array_equal(i, wi)
    for r in (0, 3, bits):
        assert_same_radius(index.search_radius(q, r), brute_radius(q, codes, ids, r))


def test_milvus_file_names_server_not_token_and_load_checks_it(milvus_only, tmp_path, monkeypatch):
    monkeypatch.setenv("CBIR_MILVUS_TOKEN", "root:Milvus")  # (auth is off on the test server)
    index, ids, _ = filled("milvus", 64, 50)
    path = tmp_path / "codes.idx"
    index.save(path)
    raw = path.read_bytes()
    assert index.collection.encode() in raw and b"Milvus" not in raw.replace(b"milvus", b"")
    assert len(raw) < 4096 + 8 * 50  # header + ids: no codes
    # another process changed the collection: load re-reads the ids from the server
    index.remove(ids[:10])
    loaded = load_binary_index(path)
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids[10:]))
    index.drop()
    with pytest.raises(IndexMismatch, match="no longer exists"):
        load_binary_index(path)
