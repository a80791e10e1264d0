"""Hashing evaluation protocols (cbir.eval.hashing) and plots (cbir.eval.plots)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cbir.errors import InvalidRequest
from cbir.eval.hashing import (
    evaluate_codes,
    evaluate_float,
    format_results_table,
    tie_averaged_ap,
)
from cbir.eval.metrics import (
    average_precision,
    precision_at_k,
    rank_by_score,
    ranked_relevance,
    relevance_mask,
)
from cbir.hashing.base import hamming_distances, pack_bits


def _codes(rows: list[str]) -> np.ndarray:
    """'0101' strings -> packed uint8 (n, 1) codes (bit j = character j)."""
    return pack_bits(np.array([[c == "1" for c in r] for r in rows], dtype=bool))


# The worked example: 4-bit codes, 5 database items, 2 queries.
DB = _codes(["0000", "0001", "0011", "1000", "1111"])
DB_LABELS = np.array([0, 1, 0, 1, 0])
Q = _codes(["0000", "0111"])
Q_LABELS = np.array([0, 1])


def test_worked_example_by_hand():
    # q0 = 0000, label 0. Distances to d0..d4: 0, 1, 2, 1, 4.
    #   Ranking by (distance, index): d0(0) d1(1) d3(1) d2(2) d4(4); the d1/d3 tie goes to d1.
    #   Relevant (label 0) = d0, d2, d4 -> ranked relevance 1 0 0 1 1, R = 3.
    #   AP = (P@1 + P@4 + P@5) / 3 = (1 + 2/4 + 3/5) / 3 = 0.7
    #   AP@3 ("retrieved"): top 3 = 1 0 0 -> P@1 / 1 = 1
    #   P@2 = 1/2, P@4 = 2/4
    #   Within radius 2: d0 d1 d2 d3 (4 items), relevant d0 d2 -> precision 2/4, recall 2/3
    # q1 = 0111, label 1. Distances: d0 3, d1 2, d2 1, d3 4, d4 1.
    #   Ranking: d2(1) d4(1) d1(2) d0(3) d3(4). Relevant (label 1) = d1, d3 -> 0 0 1 0 1, R = 2.
    #   AP = (P@3 + P@5) / 2 = (1/3 + 2/5) / 2 = 11/30
    #   AP@3: top 3 = 0 0 1 -> P@3 / 1 = 1/3
    #   P@2 = 0, P@4 = 1/4
    #   Within radius 2: d1 d2 d4 (3 items), relevant d1 -> precision 1/3, recall 1/2
    np.testing.assert_array_equal(hamming_distances(Q, DB), [[0, 1, 2, 1, 4], [3, 2, 1, 4, 1]])
    r = evaluate_codes(Q, DB, Q_LABELS, DB_LABELS, bits=4, map_ks=(3, None), precision_ns=(2, 4), radius=2)
    assert r["queries"] == 2 and r["database"] == 5 and r["bits"] == 4
    assert r["mAP"] == pytest.approx((0.7 + 11 / 30) / 2)  # = 0.5333...
    assert r["mAP@3"] == pytest.approx((1 + 1 / 3) / 2)  # = 0.6667
    assert r["P@2"] == pytest.approx((1 / 2 + 0) / 2)  # = 0.25
    assert r["P@4"] == pytest.approx((2 / 4 + 1 / 4) / 2)  # = 0.375
    assert r["P@H<=2"] == pytest.approx((2 / 4 + 1 / 3) / 2)  # = 5/12
    assert r["R@H<=2"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # = 7/12
    assert r["empty@H<=2"] == 0.0


def test_worked_example_radius_zero_counts_empty_retrievals_as_zero():
    # Radius 0: q0 retrieves d0 (relevant) -> precision 1; q1 retrieves nothing -> 0.
    r = evaluate_codes(Q, DB, Q_LABELS, DB_LABELS, bits=4, radius=0)
    assert r["P@H<=0"] == pytest.approx(0.5)
    assert r["empty@H<=0"] == pytest.approx(0.5)
    c = r["pr_curve"]
    np.testing.assert_array_equal(c["radius"], [0, 1, 2, 3, 4])
    assert c["precision"][0] == pytest.approx(0.5)
    assert c["precision_nonempty"][0] == pytest.approx(1.0)  # averaged over q0 only
    # radius 1: q0 gets d0 d1 d3 (1 relevant of 3); q1 gets d2 d4 (0 relevant) -> (1/3 + 0) / 2
    assert c["precision"][1] == pytest.approx(1 / 6)
    assert c["recall"][1] == pytest.approx((1 / 3 + 0) / 2)
    # radius 4 retrieves everything: precision = R / n, recall = 1
    assert c["precision"][4] == pytest.approx((3 / 5 + 2 / 5) / 2)
    assert c["recall"][4] == pytest.approx(1.0)
    assert c["empty"][4] == 0.0


def test_map_at_k_beyond_the_database_is_capped_and_equals_full_map():
    r = evaluate_codes(Q, DB, Q_LABELS, DB_LABELS, bits=4, map_ks=(5000, None), precision_ns=(1000,))
    assert r["mAP@5000"] == pytest.approx(r["mAP"])
    # P@N keeps N in the denominator when N > n: (3 + 2) relevant / 1000, averaged
    assert r["P@1000"] == pytest.approx((3 / 1000 + 2 / 1000) / 2)


def test_padding_bits_are_ignored():
    dirty = DB.copy()
    dirty[:, 0] |= 0x0F  # the 4 unused low bits of a 4-bit code
    a = evaluate_codes(Q, DB, Q_LABELS, DB_LABELS, bits=4)
    b = evaluate_codes(Q, dirty, Q_LABELS, DB_LABELS, bits=4)
    assert a["mAP"] == b["mAP"] and a["P@H<=2"] == b["P@H<=2"]


def test_tie_averaged_map_by_hand_and_by_brute_force():
    # One tie group of 2 with 1 relevant at ranks 1-2: AP is 1 or 1/2, expected 0.75.
    assert tie_averaged_ap(np.array([[True, False]]), np.array([[1, 1]]))[0] == pytest.approx(0.75)
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 8))
        keys = np.sort(rng.integers(0, 3, n))
        rel = rng.random(n) < 0.5
        # brute force: average AP over every order of the items within their tie groups
        groups = [np.flatnonzero(keys == k) for k in np.unique(keys)]
        aps = []
        for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
            order = np.concatenate([np.asarray(p, dtype=np.int64) for p in perms])
            aps.append(average_precision(rel[order][None, :])[0])
        got = tie_averaged_ap(rel[None, :], keys[None, :])[0]
        assert got == pytest.approx(float(np.mean(aps)))


def test_tie_averaged_equals_plain_without_ties():
    rng = np.random.default_rng(4)
    rel = rng.random((5, 30)) < 0.3
    keys = np.tile(np.arange(30), (5, 1))
    np.testing.assert_allclose(tie_averaged_ap(rel, keys), average_precision(rel))


def _random_problem(seed: int, nq: int = 13, n: int = 300, bits: int = 16, labels: int = 6):
    rng = np.random.default_rng(seed)
    ql = (rng.random((nq, labels)) < 0.25).astype(np.uint8)
    dl = (rng.random((n, labels)) < 0.25).astype(np.uint8)
    qb = rng.random((nq, bits)) < 0.5
    db = rng.random((n, bits)) < 0.5
    db[7] = db[3]  # exact duplicates tie
    return pack_bits(qb), pack_bits(db), ql, dl


def test_agrees_with_the_metrics_module_multilabel():
    qc, dc, ql, dl = _random_problem(0)
    r = evaluate_codes(qc, dc, ql, dl, bits=16, map_ks=(50, None), precision_ns=(10, 100), chunk_size=4)
    ranking = rank_by_score(hamming_distances(qc, dc), descending=False)
    rel = ranked_relevance(ql, dl, ranking)
    assert r["mAP"] == pytest.approx(average_precision(rel).mean())
    assert r["mAP@50"] == pytest.approx(average_precision(rel, k=50, convention="retrieved").mean())
    assert r["P@10"] == pytest.approx(precision_at_k(rel, 10).mean())
    assert r["P@100"] == pytest.approx(precision_at_k(rel, 100).mean())
    # the closed-form tie-averaged mAP from the distance histograms = the generic one
    dist = np.take_along_axis(hamming_distances(qc, dc), ranking, axis=1)
    rt = evaluate_codes(qc, dc, ql, dl, bits=16, tie_averaged=True, chunk_size=5)
    assert rt["mAP (tie-avg)"] == pytest.approx(tie_averaged_ap(rel, dist).mean())
    assert rt["mAP (tie-avg)"] != pytest.approx(rt["mAP"], abs=1e-9)  # ties do matter here
    # an explicit unranked relevance matrix gives the same numbers
    r2 = evaluate_codes(
        qc, dc, relevance=relevance_mask(ql, dl), bits=16, map_ks=(50, None), precision_ns=(10, 100)
    )
    for key in ("mAP", "mAP@50", "P@10", "P@H<=2"):
        assert r2[key] == pytest.approx(r[key])


def test_evaluate_float_equals_codes_when_the_orders_agree():
    # For +-1 vectors x, y of length b: x.y = b - 2 * hamming(x, y), so ranking by
    # descending inner product is ranking by ascending Hamming distance, with the same ties.
    qc, dc, ql, dl = _random_problem(1, bits=16)
    qf = np.unpackbits(qc, axis=1).astype(np.float32) * 2 - 1
    df = np.unpackbits(dc, axis=1).astype(np.float32) * 2 - 1
    kw = dict(map_ks=(40, None), precision_ns=(10, 20, 100), tie_averaged=True, pr_points=25)
    rc = evaluate_codes(qc, dc, ql, dl, bits=16, **kw)
    rf = evaluate_float(qf, df, ql, dl, **kw)
    assert rf["dim"] == 16 and "P@H<=2" not in rf and "pr_curve" not in rf
    for key in ("mAP", "mAP@40", "mAP (tie-avg)", "P@10", "P@20", "P@100"):
        assert rf[key] == pytest.approx(rc[key], abs=1e-12), key
    for key in ("cutoff", "precision", "recall"):
        np.testing.assert_allclose(rf["pr_rank"][key], rc["pr_rank"][key])


def test_single_label_codes_with_structure_beat_random():
    rng = np.random.default_rng(2)
    centers = rng.random((4, 32)) < 0.5
    dl, ql = rng.integers(0, 4, 400), rng.integers(0, 4, 20)
    dc = pack_bits(centers[dl] ^ (rng.random((400, 32)) < 0.02))
    qc = pack_bits(centers[ql] ^ (rng.random((20, 32)) < 0.02))
    good = evaluate_codes(qc, dc, ql, dl, bits=32, map_ks=(100, None), precision_ns=(50,))
    bad = evaluate_codes(
        qc, dc[rng.permutation(400)], ql, dl, bits=32, map_ks=(100, None), precision_ns=(50,)
    )
    assert good["mAP"] > 0.9 > 0.5 > bad["mAP"]
    assert good["P@H<=2"] > 0.9
    assert list(good)[:6] == ["queries", "database", "bits", "mAP@100", "mAP", "P@50"]


def test_bad_inputs_raise():
    with pytest.raises(InvalidRequest):
        evaluate_codes(Q.astype(np.int8), DB, Q_LABELS, DB_LABELS)
    with pytest.raises(InvalidRequest):
        evaluate_codes(Q, DB, Q_LABELS, DB_LABELS, bits=12)  # 12 bits need 2 bytes
    with pytest.raises(InvalidRequest):
        evaluate_codes(Q, DB)  # no labels, no relevance
    with pytest.raises(InvalidRequest):
        evaluate_codes(Q, DB, Q_LABELS, DB_LABELS[:4], bits=4)
    with pytest.raises(InvalidRequest):
        evaluate_codes(Q, DB, Q_LABELS, DB_LABELS, bits=4, radius=5)
    with pytest.raises(InvalidRequest):
        evaluate_float(np.ones((2, 3)), np.ones((4, 2)), Q_LABELS, DB_LABELS[:4])


def test_format_results_table():
    results = {
        "ITQ": {32: {"mAP@5000": 0.5}, 12: {"mAP@5000": 0.25}},
        "LSH": {12: {"mAP@5000": 0.125}},
        "float": {"float": {"mAP@5000": 0.75}},
    }
    text = format_results_table(results)
    lines = text.splitlines()
    assert lines[0] == "mAP@5000"
    assert lines[1].split() == ["method", "12", "bits", "32", "bits", "float"]
    assert lines[3].split() == ["ITQ", "0.2500", "0.5000"]
    assert lines[4].split() == ["LSH", "0.1250"]
    assert lines[5].split() == ["float", "0.7500"]


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from cbir.eval.plots import plot_curves, plot_pr_curves

    qc, dc, ql, dl = _random_problem(5, bits=16)
    qf = np.unpackbits(qc, axis=1).astype(np.float32) * 2 - 1
    df = np.unpackbits(dc, axis=1).astype(np.float32) * 2 - 1
    results = {
        "codes": {16: evaluate_codes(qc, dc, ql, dl, bits=16)},
        "float": {"float": evaluate_float(qf, df, ql, dl)},
    }
    for curve in ("radius", "rank"):
        out = plot_pr_curves(results, tmp_path / f"pr_{curve}.png", bits=16, curve=curve)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = plot_curves(
        {"train": [1.0, 0.5, 0.25], "val": ([1, 3], [0.9, 0.4])},
        tmp_path / "sub" / "loss.png",
        ylabel="loss",
        logy=True,
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InvalidRequest):
        plot_curves({"bad": ([1, 2], [1.0])}, tmp_path / "bad.png")
