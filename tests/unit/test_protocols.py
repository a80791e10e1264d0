"""Evaluation protocols on tiny synthetic features whose rankings are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.errors import InvalidRequest
from cbir.eval.protocols import format_table, leave_one_out_retrieval, query_database_retrieval


def _circle(degrees: list[float]) -> np.ndarray:
    """Unit vectors at the given angles: inner-product order = angular-distance order."""
    t = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(t), np.sin(t)], axis=1).astype(np.float32)


# Six points: class 0 at 0, 20, 50 degrees; class 1 at 60, 90, 170 degrees.
ANGLES = [0, 20, 50, 60, 90, 170]
LABELS = np.array([0, 0, 0, 1, 1, 1])

# Leave-one-out rankings (others by angular distance) and relevance:
#   q 0   : 20(0) 50(0) 60 90 170          -> [1,1,0,0,0] AP = 1
#   q 20  : 0(0) 50(0) 60 90 170           -> [1,1,0,0,0] AP = 1
#   q 50  : 60(1) 20(0) 90(1) 0(0) 170(1)  -> [0,1,0,1,0] AP = (1/2 + 2/4)/2 = 0.5
#   q 60  : 50(0) 90(1) 20(0) 0(0) 170(1)  -> [0,1,0,0,1] AP = (1/2 + 2/5)/2 = 0.45
#   q 90  : 60(1) 50(0) 20(0) 170(1) 0(0)  -> [1,0,0,1,0] AP = (1/1 + 2/4)/2 = 0.75
#   q 170 : 90(1) 60(1) 50 20 0            -> [1,1,0,0,0] AP = 1
# P@1 = (1+1+0+0+1+1)/6 = 0.6667; P@2 = (1+1+.5+.5+.5+1)/6 = 0.75
# mAP = (1+1+0.5+0.45+0.75+1)/6 = 4.7/6 = 0.7833
# mAP@2 (hashing: / relevant in top 2) = (1+1+(1/2)/1+(1/2)/1+1/1+1)/6 = 5/6 = 0.8333
EXPECTED = {"P@1": 4 / 6, "P@2": 4.5 / 6, "mAP": 4.7 / 6, "mAP@2": 5 / 6}


@pytest.mark.parametrize("full_map", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 4, 256])
def test_leave_one_out_by_hand(full_map: bool, chunk_size: int) -> None:
    out = leave_one_out_retrieval(
        _circle(ANGLES), LABELS, ks=(1, 2), full_map=full_map, chunk_size=chunk_size
    )
    assert out["queries"] == 6 and out["database"] == 5
    for key, value in EXPECTED.items():
        if key == "mAP" and not full_map:
            assert "mAP" not in out
            continue
        assert out[key] == pytest.approx(value, abs=1e-6), key


def test_leave_one_out_excludes_the_query() -> None:
    feats = _circle(ANGLES)
    # Against the same set as a database, each query finds itself first: P@1 = 1.
    qd = query_database_retrieval(feats, LABELS, feats, LABELS, ks=(1, 2))
    assert qd["P@1"] == 1.0
    loo = leave_one_out_retrieval(feats, LABELS, ks=(1, 2))
    assert loo["P@1"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("full_map", [True, False])
def test_leave_one_out_keeps_exact_duplicates(full_map: bool) -> None:
    # Items 0 and 1 are identical (class 0 / class 1); item 2 is class 0 further away.
    # q0: only item 1 ties with it; self is removed by index, so q0 ranks [1, 2] -> [0, 1].
    # q1: ranks [0, 2] -> [0, 0]. q2: ranks [0, 1] (tie, index order) -> [1, 0].
    feats = _circle([10, 10, 40])
    labels = np.array([0, 1, 0])
    out = leave_one_out_retrieval(feats, labels, ks=(1,), full_map=full_map)
    # P@1 = (0 + 0 + 1)/3
    assert out["P@1"] == pytest.approx(1 / 3)


def test_chunked_equals_unchunked() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((150, 12)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 5, 150)
    ref = leave_one_out_retrieval(x, y, ks=(1, 5, 10), chunk_size=10_000)
    for cs in (1, 7, 64):
        got = leave_one_out_retrieval(x, y, ks=(1, 5, 10), chunk_size=cs)
        assert got == pytest.approx(ref)
    # The partial-sort (top-K only) path gives the same P@k and mAP@K.
    fast = leave_one_out_retrieval(x, y, ks=(1, 5, 10), full_map=False, chunk_size=13)
    assert set(fast) == set(ref) - {"mAP"}
    for key in fast:
        assert fast[key] == pytest.approx(ref[key], abs=1e-9), key
    # A brute-force reference for mAP over all.
    from cbir.eval.metrics import average_precision

    s = x @ x.T
    aps = []
    for i in range(150):
        others = np.delete(np.arange(150), i)
        order = others[np.argsort(-s[i, others], kind="stable")]
        aps.append(average_precision(y[order] == y[i])[0])
    assert ref["mAP"] == pytest.approx(float(np.mean(aps)))


def test_duplicates_tie_by_index_in_both_paths() -> None:
    # 30 distinct vectors repeated 300 times: many exact ties, broken by database index.
    rng = np.random.default_rng(2)
    base = rng.standard_normal((30, 6)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    src = rng.integers(0, 30, 300)
    x, y = base[src], rng.integers(0, 3, 300)
    full = leave_one_out_retrieval(x, y, ks=(1, 3, 10), chunk_size=50)
    fast = leave_one_out_retrieval(x, y, ks=(1, 3, 10), full_map=False, chunk_size=17)
    for key in fast:
        assert fast[key] == pytest.approx(full[key], abs=1e-12), key
    # Reference: exact scores from the 30 base vectors, stable sort (ties by index).
    from cbir.eval.metrics import average_precision, precision_at_k

    s = (base @ base.T)[src][:, src]
    p1, aps = [], []
    for i in range(300):
        others = np.delete(np.arange(300), i)
        order = others[np.argsort(-s[i, others], kind="stable")]
        rel = y[order] == y[i]
        p1.append(precision_at_k(rel, 1)[0])
        aps.append(average_precision(rel)[0])
    assert full["P@1"] == pytest.approx(float(np.mean(p1)))
    assert full["mAP"] == pytest.approx(float(np.mean(aps)))


def test_query_database_multilabel_by_hand() -> None:
    # db at 0, 30, 60, 90 degrees with labels {0}, {1}, {0,1}, {2}.
    # q1 at 10 deg, labels {0}: order 0,30,60,90 -> [1,0,1,0], AP = (1 + 2/3)/2 = 0.8333
    # q2 at 80 deg, labels {1,2}: order 90,60,30,0 -> [1,1,1,0], AP = 1
    # P@1 = 1; P@2 = (0.5 + 1)/2 = 0.75; mAP = 0.9167; mAP@2 = (1/1 + 1)/2 = 1
    db = _circle([0, 30, 60, 90])
    dl = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    q = _circle([10, 80])
    ql = np.array([[1, 0, 0], [0, 1, 1]])
    for full_map in (True, False):
        out = query_database_retrieval(q, ql, db, dl, ks=(1, 2), multilabel=True, full_map=full_map)
        assert out["queries"] == 2 and out["database"] == 4
        assert out["P@1"] == pytest.approx(1.0)
        assert out["P@2"] == pytest.approx(0.75)
        assert out["mAP@2"] == pytest.approx(1.0)
        if full_map:
            assert out["mAP"] == pytest.approx((5 / 6 + 1) / 2)
    # map_k override; single-label version (classes 0,1,0,2 / queries 0,2).
    out = query_database_retrieval(q, [0, 2], db, [0, 1, 0, 2], ks=(1,), map_k=3)
    # q1 [1,0,1,0] AP = 0.8333, AP@3 = (1 + 2/3)/2; q2 [1,0,0,0] AP = 1, AP@3 = 1
    assert out["mAP"] == pytest.approx((5 / 6 + 1) / 2)
    assert out["mAP@3"] == pytest.approx((5 / 6 + 1) / 2)


def test_bad_inputs() -> None:
    feats = _circle(ANGLES)
    with pytest.raises(InvalidRequest):
        leave_one_out_retrieval(feats, LABELS[:5])
    with pytest.raises(InvalidRequest):
        leave_one_out_retrieval(feats, LABELS, ks=())
    with pytest.raises(InvalidRequest):
        query_database_retrieval(feats, LABELS, feats[:, :1], LABELS)
    with pytest.raises(InvalidRequest):
        query_database_retrieval(feats, LABELS, feats, LABELS, multilabel=True)
    bad = feats.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidRequest, match="NaN"):
        leave_one_out_retrieval(bad, LABELS)


def test_format_table() -> None:
    rows = [
        {"method": "cnn", "P@10": 0.88, "n": 1000},
        {"method": "color-histogram", "P@10": 0.5, "n": 10},
    ]
    text = format_table(rows, ["method", "P@10", "n", "mAP"])
    assert text.splitlines() == [
        "method             P@10     n  mAP",
        "---------------  ------  ----  ---",
        "cnn              0.8800  1000",
        "color-histogram  0.5000    10",
    ]
