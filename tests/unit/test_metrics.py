"""Retrieval metrics against numbers worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.errors import InvalidRequest
from cbir.eval.metrics import (
    average_precision,
    count_relevant,
    mean_average_precision,
    precision_at_k,
    precision_recall_curve,
    rank_by_score,
    ranked_relevance,
    recall_at_k,
    relevance_mask,
)

# Query A: ranked [1,0,1,0,0], 3 relevant in the database (one never retrieved).
# Query B: ranked [0,1,1,0,1], 3 relevant in the database (all retrieved).
REL = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 0, 1]], dtype=bool)
NREL = np.array([3, 3])


def test_precision_at_k() -> None:
    # A: P@1 = 1/1, P@3 = 2/3, P@5 = 2/5.  B: P@1 = 0, P@3 = 2/3, P@5 = 3/5.
    np.testing.assert_allclose(precision_at_k(REL, 1), [1.0, 0.0])
    np.testing.assert_allclose(precision_at_k(REL, 3), [2 / 3, 2 / 3])
    np.testing.assert_allclose(precision_at_k(REL, 5), [0.4, 0.6])
    # k beyond the list: missing ranks are non-relevant, denominator stays k: A: 2/10.
    np.testing.assert_allclose(precision_at_k(REL, 10), [0.2, 0.3])


def test_recall_at_k() -> None:
    # A: R@3 = 2/3, R@5 = 2/3.  B: R@3 = 2/3, R@5 = 3/3.
    np.testing.assert_allclose(recall_at_k(REL, 3, NREL), [2 / 3, 2 / 3])
    np.testing.assert_allclose(recall_at_k(REL, 5, NREL), [2 / 3, 1.0])
    # Default n_relevant = row sums (A: 2, B: 3): A R@1 = 1/2.
    np.testing.assert_allclose(recall_at_k(REL, 1), [0.5, 0.0])


def test_average_precision_over_all() -> None:
    # A: hits at ranks 1 and 3 -> (1/1 + 2/3) / 3 = 0.5556
    # B: hits at ranks 2, 3, 5 -> (1/2 + 2/3 + 3/5) / 3 = 1.7667 / 3 = 0.5889
    ap = average_precision(REL, NREL)
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 3, (1 / 2 + 2 / 3 + 3 / 5) / 3])
    np.testing.assert_allclose(ap, [0.5556, 0.5889], atol=1e-4)
    # mAP = (0.5556 + 0.5889) / 2 = 0.5722
    assert mean_average_precision(REL, NREL) == pytest.approx(0.57222, abs=1e-5)
    # Without n_relevant, A counts only its 2 retrieved relevant items: (1 + 2/3) / 2.
    assert average_precision(REL)[0] == pytest.approx(0.83333, abs=1e-5)


def test_average_precision_at_k_conventions() -> None:
    # Top 3: A = [1,0,1] (S = 1/1 + 2/3 = 1.6667), B = [0,1,1] (S = 1/2 + 2/3 = 1.1667).
    sa, sb = 1 + 2 / 3, 1 / 2 + 2 / 3
    # "all": S / R = A 1.6667/3 = 0.5556, B 1.1667/3 = 0.3889
    np.testing.assert_allclose(average_precision(REL, NREL, k=3, convention="all"), [sa / 3, sb / 3])
    # "min_k_r": S / min(3, 3) -> same as "all" here
    np.testing.assert_allclose(
        average_precision(REL, NREL, k=3, convention="min_k_r"), [sa / 3, sb / 3]
    )
    # "retrieved" (hashing): S / hits-in-top-3 = A 1.6667/2 = 0.8333, B 1.1667/2 = 0.5833
    np.testing.assert_allclose(
        average_precision(REL, NREL, k=3, convention="retrieved"), [sa / 2, sb / 2]
    )
    # Top 2: A = [1,0] (S = 1), B = [0,1] (S = 1/2).
    # all: A 1/3, B 0.5/3; min_k_r: / min(2,3) = 2 -> A 0.5, B 0.25; retrieved: / 1 -> 1, 0.5
    np.testing.assert_allclose(average_precision(REL, NREL, k=2), [1 / 3, 0.5 / 3])
    np.testing.assert_allclose(average_precision(REL, NREL, k=2, convention="min_k_r"), [0.5, 0.25])
    np.testing.assert_allclose(
        average_precision(REL, NREL, k=2, convention="retrieved"), [1.0, 0.5]
    )
    # mAP@2 retrieved = (1 + 0.5) / 2 = 0.75
    assert mean_average_precision(REL, NREL, k=2, convention="retrieved") == pytest.approx(0.75)
    # Full list: "retrieved" with all relevant retrieved equals "all" (B: 0.5889).
    assert average_precision(REL[1:], convention="retrieved")[0] == pytest.approx(
        average_precision(REL[1:], NREL[1:])[0]
    )


def test_empty_queries() -> None:
    # C has no relevant item: AP = 0. mAP over [A, C] = (0.5556 + 0) / 2 = 0.2778,
    # with ignore_empty only A counts: 0.5556.
    rel = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
    nrel = np.array([3, 0])
    np.testing.assert_allclose(average_precision(rel, nrel), [(1 + 2 / 3) / 3, 0.0])
    assert mean_average_precision(rel, nrel) == pytest.approx((1 + 2 / 3) / 6)
    assert mean_average_precision(rel, nrel, ignore_empty=True) == pytest.approx((1 + 2 / 3) / 3)
    # Hashing mAP@2 of D = [0,0,1,...] (nothing relevant in top 2): 0, or skipped.
    rel2 = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)
    assert mean_average_precision(rel2, k=2, convention="retrieved") == pytest.approx(0.5)
    assert mean_average_precision(rel2, k=2, convention="retrieved", ignore_empty=True) == 1.0
    assert recall_at_k(rel, 2, nrel)[1] == 0.0


def test_one_dim_row_and_bad_args() -> None:
    assert average_precision(np.array([1, 0, 1, 0, 0]), 3)[0] == pytest.approx(0.5556, abs=1e-4)
    with pytest.raises(InvalidRequest, match="convention"):
        average_precision(REL, convention="bogus")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="k must"):
        precision_at_k(REL, 0)
    with pytest.raises(InvalidRequest, match="n_relevant"):
        average_precision(REL, [1, 1])  # fewer than the relevant items listed


def test_precision_recall_curve() -> None:
    # Cut-offs 1, 3, 5.  P: A 1, 2/3, 2/5; B 0, 2/3, 3/5 -> means 0.5, 0.6667, 0.5.
    # R (R = 3): A 1/3, 2/3, 2/3; B 0, 2/3, 1 -> means 0.1667, 0.6667, 0.8333.
    cuts, p, r = precision_recall_curve(REL, [1, 3, 5], NREL)
    np.testing.assert_array_equal(cuts, [1, 3, 5])
    np.testing.assert_allclose(p, [0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(r, [1 / 6, 2 / 3, 5 / 6])
    cuts, p, r = precision_recall_curve(REL, None, NREL)
    assert len(cuts) == 5
    np.testing.assert_allclose(p[[0, 2, 4]], [0.5, 2 / 3, 0.5])


def test_single_label_relevance() -> None:
    q = np.array([0, 1])
    db = np.array([0, 1, 1, 2, 0])
    np.testing.assert_array_equal(
        relevance_mask(q, db), [[1, 0, 0, 0, 1], [0, 1, 1, 0, 0]]
    )
    np.testing.assert_array_equal(count_relevant(q, db), [2, 2])
    np.testing.assert_array_equal(count_relevant(np.array([7]), db), [0])
    ranking = np.array([[4, 3, 0], [0, 2, 1]])
    np.testing.assert_array_equal(ranked_relevance(q, db, ranking), [[1, 0, 1], [0, 1, 1]])


def test_multi_label_relevance() -> None:
    # Query labels {0, 2}. db: {0}, {1}, {2}, {1,2}, {} -> shares >= 1 label: 1,0,1,1,0.
    q = np.array([[1, 0, 1]])
    db = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(relevance_mask(q, db), [[1, 0, 1, 1, 0]])
    np.testing.assert_array_equal(count_relevant(q, db.astype(bool)), [3])
    # Ranked [4, 3, 1, 0, 2] -> [0, 1, 0, 1, 1]; AP = (1/2 + 2/4 + 3/5) / 3 = 0.5333
    rel = ranked_relevance(q, db, np.array([[4, 3, 1, 0, 2]]))
    np.testing.assert_array_equal(rel, [[0, 1, 0, 1, 1]])
    assert average_precision(rel)[0] == pytest.approx((0.5 + 0.5 + 0.6) / 3)
    with pytest.raises(InvalidRequest):
        relevance_mask(np.array([0]), db)


def test_rank_by_score_ties_by_index() -> None:
    # Similarities: 0.9 first, then the tie 0.5 (index 0) / 0.5 (index 2), then 0.1.
    s = np.array([[0.5, 0.9, 0.5, 0.1]], dtype=np.float32)
    np.testing.assert_array_equal(rank_by_score(s), [[1, 0, 2, 3]])
    np.testing.assert_array_equal(rank_by_score(s.astype(np.float64)), [[1, 0, 2, 3]])
    np.testing.assert_array_equal(rank_by_score(s, k=2), [[1, 0]])
    # Hamming distances (ascending): 0 (idx 3), then 1 (idx 1), then the tie 2 (idx 0, 2).
    h = np.array([[2, 1, 2, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(rank_by_score(h, descending=False), [[3, 1, 0, 2]])
    np.testing.assert_array_equal(rank_by_score(h, k=3, descending=False), [[3, 1, 0]])
    # -0.0 and +0.0 tie; negatives sort correctly.
    z = np.array([[0.0, -1.0, -0.0, 2.0, -3.0]], dtype=np.float32)
    np.testing.assert_array_equal(rank_by_score(z), [[3, 0, 2, 1, 4]])


def test_rank_by_score_matches_stable_argsort() -> None:
    rng = np.random.default_rng(0)
    s = rng.integers(-5, 6, size=(20, 50)).astype(np.float32) / 4  # many ties
    expect = np.argsort(-s.astype(np.float64), axis=1, kind="stable")
    np.testing.assert_array_equal(rank_by_score(s), expect)
    np.testing.assert_array_equal(rank_by_score(s, k=7), expect[:, :7])
    expect_up = np.argsort(s, axis=1, kind="stable")
    np.testing.assert_array_equal(rank_by_score(s, descending=False), expect_up)
