"""Hashers (LSH, PCAH, ITQ, SH), bit packing and Hamming distances, with FAISS peer checks."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

import cbir.hashing.base as hbase
from cbir.errors import IndexMismatch, InvalidRequest, UnknownComponent
from cbir.eval.metrics import mean_average_precision, rank_by_score, ranked_relevance
from cbir.hashing import (
    HASHERS,
    ITQ,
    SH,
    create_hasher,
    hamming_distances,
    load_hasher,
    pack_bits,
    quantization_loss,
    unpack_bits,
)
from cbir.hashing.base import read_hasher_header, small_problem_threads

# --------------------------------------------------------------------------- data


def clustered(n: int, *, d: int = 128, n_clusters: int = 20, noise: float = 1.5, seed: int = 0):
    """(n, d) float32 gaussian clusters around N(0, 1) centres, and (n,) int labels."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).standard_normal((n_clusters, d))
    labels = rng.integers(0, n_clusters, n)
    x = centers[labels] + noise * rng.standard_normal((n, d))
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def data():
    xb, lb = clustered(3000, seed=0)
    xq, lq = clustered(150, seed=1)
    return xb, lb, xq, lq


def hamming_map(q_codes, db_codes, lq, lb) -> float:
    """mAP over the full Hamming ranking (ties by database index), convention "all"."""
    ranking = rank_by_score(hamming_distances(q_codes, db_codes), descending=False)
    return mean_average_precision(ranked_relevance(lq, lb, ranking))


# --------------------------------------------------------------------------- bits


@pytest.mark.parametrize("bits", [8, 12, 64, 100, 128])
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    b = rng.random((37, bits)) < 0.5
    codes = pack_bits(b)
    assert codes.dtype == np.uint8 and codes.shape == (37, (bits + 7) // 8)
    np.testing.assert_array_equal(unpack_bits(codes, bits), b)


def test_bit_order_is_big_endian_with_zero_padding():
    b = np.zeros((1, 12), dtype=bool)
    b[0, 0] = b[0, 9] = True  # bit 0 -> byte 0 mask 0x80; bit 9 -> byte 1 mask 0x40
    np.testing.assert_array_equal(pack_bits(b), [[0x80, 0x40]])


@pytest.mark.parametrize("nbytes", [1, 3, 8, 13, 16])
def test_hamming_distances_match_naive_loop(nbytes, monkeypatch):
    rng = np.random.default_rng(nbytes)
    q = rng.integers(0, 256, (9, nbytes), dtype=np.uint8)
    db = rng.integers(0, 256, (23, nbytes), dtype=np.uint8)
    naive = np.array(
        [[sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(qi, di, strict=True)) for di in db] for qi in q]
    )
    got = hamming_distances(q, db)
    assert got.dtype == np.int32 and got.shape == (9, 23)
    np.testing.assert_array_equal(got, naive)
    monkeypatch.setattr(hbase, "_BLOCK_ELEMS", 7)  # many tiny blocks
    np.testing.assert_array_equal(hamming_distances(q, db), naive)
    monkeypatch.setattr(hbase, "_HAS_BITWISE_COUNT", False)  # lookup-table fallback
    np.testing.assert_array_equal(hamming_distances(q, db), naive)


def test_hamming_distances_reject_bad_input():
    with pytest.raises(InvalidRequest):
        hamming_distances(np.zeros((2, 3), np.uint8), np.zeros((2, 4), np.uint8))
    with pytest.raises(InvalidRequest):
        hamming_distances(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64))
    assert hamming_distances(np.zeros((0, 8), np.uint8), np.zeros((5, 8), np.uint8)).shape == (0, 5)


# --------------------------------------------------------------------------- every hasher


@pytest.mark.parametrize("name", [n for n in HASHERS.names() if not HASHERS.get(n).supervision])
@pytest.mark.parametrize("bits", [8, 20, 64])
def test_hasher_deterministic_shapes_and_save_load(name, bits, data, tmp_path: Path):
    xb, _, xq, _ = data
    train = xb[:800]
    h1 = create_hasher(name, bits, seed=3).fit(train)
    h2 = create_hasher(name, bits, seed=3).fit(train)
    codes = h1.encode(xq)
    assert codes.dtype == np.uint8 and codes.shape == (len(xq), (bits + 7) // 8)
    np.testing.assert_array_equal(codes, h2.encode(xq))
    # bit j is 1 exactly where the projection is > 0
    np.testing.assert_array_equal(unpack_bits(codes, bits), h1.project(xq) > 0)
    # bits are not constant (the hasher does something)
    assert 0 < unpack_bits(h1.encode(xb), bits).mean() < 1

    path = tmp_path / f"{name}.safetensors"
    h1.save(path)
    header = read_hasher_header(path)
    assert header["name"] == name and header["bits"] == bits and header["format_version"] == 1
    assert header["dim"] == xb.shape[1]
    for loaded in (load_hasher(path), type(h1).load(path)):
        assert loaded.name == name and loaded.bits == bits and loaded.params == h1.params
        np.testing.assert_array_equal(loaded.encode(xq), codes)
    assert b"pickle" not in path.read_bytes()[:8]
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["lsh", "itq"])
def test_seed_changes_random_hashers(name, data):
    xb, _, xq, _ = data
    a = create_hasher(name, 32, seed=0).fit(xb[:500]).encode(xq)
    b = create_hasher(name, 32, seed=1).fit(xb[:500]).encode(xq)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("bits", [7, 129, 0, True, 8.0, "16"])
def test_bits_out_of_range(bits):
    with pytest.raises(InvalidRequest, match="bits"):
        create_hasher("lsh", bits)


@pytest.mark.parametrize("name", ["pcah", "itq"])
def test_pca_hashers_need_bits_le_dim(name):
    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    with pytest.raises(InvalidRequest, match="16 dimensions"):
        create_hasher(name, 32).fit(x)


@pytest.mark.parametrize("name", ["lsh", "sh"])
def test_more_bits_than_dims_allowed(name):
    x = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    codes = create_hasher(name, 48).fit(x).encode(x)
    assert codes.shape == (200, 6)
    assert len(np.unique(codes, axis=0)) > 100


def test_hasher_input_errors(data, tmp_path: Path):
    xb = data[0][:200]
    h = create_hasher("itq", 16)
    with pytest.raises(InvalidRequest, match="not fitted"):
        h.encode(xb)
    with pytest.raises(InvalidRequest, match="not fitted"):
        h.save(tmp_path / "x.safetensors")
    with pytest.raises(InvalidRequest, match="unknown keyword"):
        h.fit(xb, tagz=[1])
    h.fit(xb, labels=np.zeros(len(xb)))  # shared supervision: accepted, ignored
    with pytest.raises(IndexMismatch, match="dimension"):
        h.encode(xb[:, :64])
    with pytest.raises(InvalidRequest):
        h.encode(xb[0])
    bad = xb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidRequest, match="NaN"):
        create_hasher("lsh", 16).fit(bad)
    with pytest.raises(InvalidRequest, match="at least 2"):
        create_hasher("lsh", 16).fit(xb[:1])
    with pytest.raises(UnknownComponent, match="itq"):
        create_hasher("nope", 16)
    with pytest.raises(InvalidRequest, match="bad parameters"):
        create_hasher("pcah", 16, n_iter=3)
    with pytest.raises(InvalidRequest, match="n_iter"):
        create_hasher("itq", 16, n_iter=-1)


def test_load_rejects_other_files(data, tmp_path: Path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(IndexMismatch):
        load_hasher(junk)
    with pytest.raises(InvalidRequest, match="no such"):
        load_hasher(tmp_path / "missing.safetensors")
    path = tmp_path / "lsh.safetensors"
    create_hasher("lsh", 16).fit(data[0][:100]).save(path)
    with pytest.raises(IndexMismatch, match="'lsh' hasher, not 'itq'"):
        ITQ.load(path)
    # a newer format version is refused with a clear message
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["cbir.hasher"])
    meta["format_version"] = 99
    save_file(load_file(str(path)), str(path), metadata={"cbir.hasher": json.dumps(meta)})
    with pytest.raises(IndexMismatch, match="version 99"):
        load_hasher(path)


# --------------------------------------------------------------------------- method checks


def test_itq_lowers_quantization_loss_below_pcah(data):
    xb = data[0]
    for bits in (16, 32):
        pcah = create_hasher("pcah", bits).fit(xb)
        itq = create_hasher("itq", bits).fit(xb)
        # Same PCA projection V; ITQ only rotates it, so ||B - V R|| is comparable to ||B - V||.
        loss_pcah = quantization_loss(pcah.project(xb))
        loss_itq = quantization_loss(itq.project(xb))
        assert loss_itq < 0.95 * loss_pcah, (bits, loss_itq, loss_pcah)
        hist = np.array(itq.loss_history_)
        assert len(hist) == 50
        assert np.all(np.diff(hist) <= 1e-6 * hist[0])  # alternating minimisation never increases it


def test_sh_picks_lowest_frequency_modes_by_hand():
    # Uniform on [0, 4] x [0, 1.5]: PCA keeps the axes (wide one first). The 1-D
    # eigenfunctions have omega = k*pi/4 on PCA dim 0 and k*pi/1.5 on dim 1, i.e. in units
    # of pi: dim 0 -> .25 .5 .75 1 1.25 1.5 ...; dim 1 -> .667 1.333 2. The 8 smallest:
    # .25(0) .5(0) .667(1) .75(0) 1(0) 1.25(0) 1.333(1) 1.5(0).
    rng = np.random.default_rng(0)
    x = np.column_stack([4 * rng.random(20000), 1.5 * rng.random(20000)]).astype(np.float32)
    h = SH(8).fit(x)
    np.testing.assert_array_equal(h.bit_dims_, [0, 0, 1, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(
        h.omegas_ / np.pi, [0.25, 0.5, 2 / 3, 0.75, 1.0, 1.25, 4 / 3, 1.5], rtol=0.01
    )
    # The first bit splits the wide dimension at its middle (sin(pi/2 + pi*t/4) > 0 iff t < 2).
    bit0 = unpack_bits(h.encode(x), 8)[:, 0]
    wide = x[:, 0]
    assert bit0[wide < 1.9].all() and not bit0[wide > 2.1].any()


# --------------------------------------------------------------------------- peer checks


def _ours_map(name: str, bits: int, seed: int, data) -> float:
    xb, lb, xq, lq = data
    h = create_hasher(name, bits, seed=seed).fit(xb)
    return hamming_map(h.encode(xq), h.encode(xb), lq, lb)


def _faiss_lsh_map(bits: int, seed: int, data) -> float:
    xb, lb, xq, lq = data
    index = faiss.IndexLSH(xb.shape[1], bits, True, True)  # random rotation, median thresholds
    index.rrot.init(seed)
    index.train(xb)
    return hamming_map(index.sa_encode(xq), index.sa_encode(xb), lq, lb)


def _faiss_itq_map(bits: int, data) -> float:
    xb, lb, xq, lq = data
    index = faiss.index_factory(xb.shape[1], f"ITQ{bits},LSH")  # centre, L2-normalise, PCA, ITQ
    with small_problem_threads(0):  # many tiny BLAS calls: threads only add contention
        index.train(xb)
    return hamming_map(index.sa_encode(xq), index.sa_encode(xb), lq, lb)


@pytest.mark.parametrize("bits", [32, 64])
def test_lsh_matches_faiss_index_lsh(bits, data):
    # LSH mAP varies by ~0.02 across seeds, so compare the means over 4 seeds.
    ours = np.mean([_ours_map("lsh", bits, s, data) for s in range(4)])
    theirs = np.mean([_faiss_lsh_map(bits, s, data) for s in range(4)])
    assert ours >= theirs - 0.03, (ours, theirs)
    assert abs(ours - theirs) < 0.06, (ours, theirs)


@pytest.mark.parametrize("bits", [16, 32])
def test_itq_at_least_faiss_itq(bits, data):
    ours = _ours_map("itq", bits, 0, data)
    theirs = _faiss_itq_map(bits, data)
    assert ours >= theirs - 0.02, (ours, theirs)


def test_itq_beats_lsh_at_32_bits(data):
    itq = _ours_map("itq", 32, 0, data)
    lsh = _ours_map("lsh", 32, 0, data)
    pcah = _ours_map("pcah", 32, 0, data)
    assert itq > lsh + 0.1, (itq, lsh)
    assert itq > pcah, (itq, pcah)
