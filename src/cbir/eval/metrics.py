"""Retrieval metrics on ranked relevance matrices (pure numpy).

Conventions shared by every function here:

* A *ranked relevance matrix* ``relevance`` is an ``(nq, n)`` bool array: row ``q`` is the
  result list of query ``q`` in rank order, ``relevance[q, j]`` says whether the item at
  rank ``j + 1`` is relevant to ``q``. It may be the whole ranked database or only its top
  ``n`` items (then pass ``n_relevant``, the number of relevant items in the whole
  database, wherever it matters).
* Ranks are 1-based in formulas: ``P@i = (relevant items among the first i) / i``.
* **Ties.** :func:`rank_by_score` sorts by score and breaks ties by database index, lower
  index first (the result of a stable sort). Metrics are computed on that single ranking;
  tie-aware AP (averaging over all orders of tied items, McSherry & Najork 2008) is not
  implemented. It matters for integer scores such as Hamming distances, where ties are
  common: the reported numbers then depend on the database order.
* **Queries with no relevant item** (zero denominator) get AP = 0, recall = 0, and count
  as 0 in :func:`mean_average_precision` unless ``ignore_empty=True`` (then they are left
  out of the mean, as in HashNet's evaluation code).

AP conventions (``convention=``), with ``hits`` = relevant items in the evaluated list
(all of it, or its top ``k``) and ``S`` = sum of ``P@i`` over the ranks ``i`` of those hits:

* ``"all"`` (default): ``AP = S / R`` with ``R`` = relevant items in the whole database.
  With ``k=None`` this is the standard (non-interpolated) AP, "mAP over all". With ``k``
  it is the truncated AP that penalises relevant items ranked below ``k``.
* ``"min_k_r"``: ``AP@k = S / min(k, R)`` (the usual IR AP@k; reaches 1 when the top
  ``k`` is all relevant).
* ``"retrieved"``: ``AP@k = S / hits`` — the deep-hashing convention (DPSH, HashNet,
  DSDH code): mAP@K divides by the number of relevant items within the top K.

The protocol tables (:mod:`cbir.eval.protocols`) report ``mAP`` = ``"all"`` over the full
ranking (where all three conventions coincide) and ``mAP@K`` = ``"retrieved"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from cbir.errors import InvalidRequest

APConvention = Literal["all", "min_k_r", "retrieved"]
_CONVENTIONS = ("all", "min_k_r", "retrieved")
_EXACT_F32 = 1 << 24  # integers of magnitude below this are exact in float32

__all__ = [
    "APConvention",
    "average_precision",
    "count_relevant",
    "mean_average_precision",
    "precision_at_k",
    "precision_recall_curve",
    "rank_by_score",
    "ranked_relevance",
    "recall_at_k",
    "relevance_mask",
]


# --------------------------------------------------------------------------- validation


def _as_relevance(relevance: np.ndarray) -> np.ndarray:
    rel = np.asarray(relevance)
    if rel.ndim == 1:
        rel = rel[None, :]
    if rel.ndim != 2:
        raise InvalidRequest(f"relevance must be a (n_queries, n) matrix, got shape {rel.shape}")
    return rel.astype(bool, copy=False)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidRequest(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _n_relevant(rel: np.ndarray, n_relevant: np.ndarray | Sequence[int] | int | None) -> np.ndarray:
    """(nq,) int64 relevant counts; default: the row sums of the (whole) ranked list."""
    if n_relevant is None:
        return rel.sum(axis=1, dtype=np.int64)
    nr = np.broadcast_to(np.asarray(n_relevant, dtype=np.int64), (rel.shape[0],))
    if np.any(nr < rel.sum(axis=1)):
        raise InvalidRequest(
            "n_relevant is smaller than the number of relevant items in the ranked list; "
            "it must count the relevant items of the whole database"
        )
    return nr


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


# --------------------------------------------------------------------------- ranking


def _descending_keys_f32(scores: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """(nq, m) float32 scores -> (nq, m) uint64 keys sorting as (score desc, id asc).

    ids: (nq, m) database indices of the columns (default: the column numbers).
    """
    s = scores.astype(np.float32, copy=True)
    s += np.float32(0.0)  # -0.0 -> +0.0 so that both zeros tie
    bits = s.view(np.uint32)
    # Order-preserving float -> uint map, then inverted for descending order.
    neg = (bits >> np.uint32(31)).astype(bool)
    asc = np.where(neg, ~bits, bits | np.uint32(0x80000000))
    keys = (~asc).astype(np.uint64) << np.uint64(32)
    if ids is None:
        keys |= np.arange(s.shape[1], dtype=np.uint64)[None, :]
    else:
        keys |= ids.astype(np.uint64)
    return keys


def rank_by_score(
    scores: np.ndarray, k: int | None = None, *, descending: bool = True
) -> np.ndarray:
    """Rank database items for each query.

    scores: (nq, n) real (similarities if ``descending``, distances such as Hamming
    otherwise). Returns (nq, min(k, n)) int64 database indices, best first. Ties are broken
    by database index, lower first (same as a stable sort); NaN scores are not allowed.
    float32 and small integer scores use a fast exact packed-key sort; other dtypes fall
    back to a stable argsort, with the same result.
    """
    s = np.asarray(scores)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2:
        raise InvalidRequest(f"scores must be (n_queries, n), got shape {s.shape}")
    n = s.shape[1]
    kk = n if k is None else min(_check_k(k), n)
    if s.size == 0:
        return np.zeros((s.shape[0], kk), dtype=np.int64)
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise InvalidRequest("scores contain NaN; cannot rank")

    small_int = s.dtype.kind in "iub" and int(np.abs(s.astype(np.int64)).max()) < _EXACT_F32
    if (s.dtype == np.float32 or small_int) and n < (1 << 32):
        v = s.astype(np.float32, copy=False)
        v = v if descending else -v
        m = n
        if kk < n:
            # Only key-sort the candidates: every item scoring >= the kk-th best (so all
            # ties across the cut-off are kept), padded to the same count m on every row.
            thr = np.partition(v, n - kk, axis=1)[:, n - kk : n - kk + 1]
            m = int((v >= thr).sum(axis=1).max())
        if m < n:
            cand = np.argpartition(v, n - m, axis=1)[:, n - m :]
            keys = _descending_keys_f32(np.take_along_axis(v, cand, axis=1), cand)
        else:
            keys = _descending_keys_f32(v)
        keys.sort(axis=1)
        keys = np.ascontiguousarray(keys[:, :kk])
        keys &= np.uint64(0xFFFFFFFF)
        return keys.view(np.int64)

    ss = s.astype(np.float64) if s.dtype.kind in "iub" else s
    order = np.argsort(-ss if descending else ss, axis=1, kind="stable")
    return order[:, :kk].astype(np.int64, copy=False)


# --------------------------------------------------------------------------- labels


def _label_arrays(query_labels: np.ndarray, db_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ql = np.asarray(query_labels)
    dl = np.asarray(db_labels)
    if ql.ndim != dl.ndim or ql.ndim not in (1, 2):
        raise InvalidRequest(
            "labels must be (n,) class ids for single-label or (n, L) 0/1 matrices for "
            f"multi-label, the same kind for queries and database; got {ql.shape} and {dl.shape}"
        )
    if ql.ndim == 2 and ql.shape[1] != dl.shape[1]:
        raise InvalidRequest(
            f"multi-label matrices have {ql.shape[1]} and {dl.shape[1]} label columns"
        )
    return ql, dl


def relevance_mask(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Unranked (nq, n) bool relevance.

    Single-label: labels (nq,) and (n,) ints, relevant = same class.
    Multi-label: labels (nq, L) and (n, L) bool/0-1, relevant = share at least one label.
    """
    ql, dl = _label_arrays(query_labels, db_labels)
    if ql.ndim == 1:
        return ql[:, None] == dl[None, :]
    overlap = (ql != 0).astype(np.float32) @ (dl != 0).astype(np.float32).T
    return overlap > 0


def count_relevant(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """(nq,) int64 number of relevant database items per query (see relevance_mask)."""
    ql, dl = _label_arrays(query_labels, db_labels)
    if ql.ndim == 1:
        classes, counts = np.unique(dl, return_counts=True)
        if len(classes) == 0:
            return np.zeros(len(ql), dtype=np.int64)
        pos = np.clip(np.searchsorted(classes, ql), 0, len(classes) - 1)
        return np.where(classes[pos] == ql, counts[pos], 0).astype(np.int64)
    return relevance_mask(ql, dl).sum(axis=1, dtype=np.int64)


def ranked_relevance(
    query_labels: np.ndarray, db_labels: np.ndarray, ranking: np.ndarray
) -> np.ndarray:
    """Ranked (nq, k) bool relevance from labels and a (nq, k) int ranking of db indices.

    Single-label (1-D labels): same class. Multi-label ((n, L) 0/1 labels): share >= 1 label.
    """
    ql, dl = _label_arrays(query_labels, db_labels)
    rk = np.asarray(ranking)
    if rk.ndim != 2 or rk.shape[0] != ql.shape[0]:
        raise InvalidRequest(f"ranking must be ({ql.shape[0]}, k), got shape {rk.shape}")
    if ql.ndim == 1:
        return dl[rk] == ql[:, None]
    return np.take_along_axis(relevance_mask(ql, dl), rk, axis=1)


# --------------------------------------------------------------------------- metrics


def precision_at_k(relevance: np.ndarray, k: int) -> np.ndarray:
    """(nq,) float64 P@k = (relevant items in the top k) / k.

    relevance: (nq, n) bool ranked. If k > n the missing ranks count as non-relevant
    (the denominator stays k).
    """
    rel = _as_relevance(relevance)
    k = _check_k(k)
    return rel[:, :k].sum(axis=1) / float(k)


def recall_at_k(
    relevance: np.ndarray, k: int, n_relevant: np.ndarray | Sequence[int] | int | None = None
) -> np.ndarray:
    """(nq,) float64 R@k = (relevant items in the top k) / (relevant items in the database).

    relevance: (nq, n) bool ranked; n_relevant: (nq,) int, defaults to the row sums (right
    only when the rows cover the whole database). Queries with none relevant give 0.
    """
    rel = _as_relevance(relevance)
    k = _check_k(k)
    return _safe_div(rel[:, :k].sum(axis=1), _n_relevant(rel, n_relevant))


def _ap_and_denominator(
    relevance: np.ndarray,
    n_relevant: np.ndarray | Sequence[int] | int | None,
    k: int | None,
    convention: str,
) -> tuple[np.ndarray, np.ndarray]:
    if convention not in _CONVENTIONS:
        raise InvalidRequest(f"unknown AP convention {convention!r}; use one of {_CONVENTIONS}")
    rel = _as_relevance(relevance)
    nr = _n_relevant(rel, n_relevant)
    top = rel if k is None else rel[:, : _check_k(k)]
    # S = sum over relevant ranks i of P@i = (hits up to i) / i, only at the relevant cells.
    hits = np.cumsum(top, axis=1, dtype=np.int64)
    rows, cols = np.nonzero(top)
    s = np.bincount(rows, weights=hits[rows, cols] / (cols + 1.0), minlength=top.shape[0])
    if convention == "all":
        den = nr
    elif convention == "min_k_r":
        den = nr if k is None else np.minimum(nr, k)
    else:
        den = top.sum(axis=1, dtype=np.int64)
    return _safe_div(s, den), den


def average_precision(
    relevance: np.ndarray,
    n_relevant: np.ndarray | Sequence[int] | int | None = None,
    k: int | None = None,
    convention: APConvention = "all",
) -> np.ndarray:
    """(nq,) float64 average precision per query.

    relevance: (nq, n) bool ranked (a 1-D row is taken as one query).
    n_relevant: (nq,) int relevant items in the whole database; defaults to the row sums
    (correct when the rows cover the whole database); needed for ``"all"`` and
    ``"min_k_r"`` when the rows are truncated.
    k: evaluate only the top k (None = the whole row).
    convention: ``"all"`` -> S / R; ``"min_k_r"`` -> S / min(k, R);
    ``"retrieved"`` -> S / (relevant in top k) (deep-hashing mAP@K), where S is the sum of
    P@i over the ranks i of the relevant items in the evaluated list. Zero denominator -> 0.
    """
    return _ap_and_denominator(relevance, n_relevant, k, convention)[0]


def mean_average_precision(
    relevance: np.ndarray,
    n_relevant: np.ndarray | Sequence[int] | int | None = None,
    k: int | None = None,
    convention: APConvention = "all",
    *,
    ignore_empty: bool = False,
) -> float:
    """Mean over queries of :func:`average_precision` (same arguments and conventions).

    ignore_empty: leave out queries whose AP denominator is 0 (no relevant item, or for
    ``"retrieved"`` none in the top k) instead of counting them as 0. Returns 0.0 when no
    query is left.
    """
    ap, den = _ap_and_denominator(relevance, n_relevant, k, convention)
    if ignore_empty:
        ap = ap[den > 0]
    return float(ap.mean()) if ap.size else 0.0


def precision_recall_curve(
    relevance: np.ndarray,
    cutoffs: Sequence[int] | np.ndarray | None = None,
    n_relevant: np.ndarray | Sequence[int] | int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean precision and recall at each cut-off, for PR plots.

    relevance: (nq, n) bool ranked; cutoffs: increasing ints >= 1 (None = every rank
    1..n); n_relevant: as in :func:`recall_at_k`.
    Returns (cutoffs (m,) int64, precision (m,) float64, recall (m,) float64), each the
    mean over queries of P@c and R@c (same conventions as precision_at_k / recall_at_k).
    """
    rel = _as_relevance(relevance)
    n = rel.shape[1]
    cuts = (
        np.arange(1, n + 1, dtype=np.int64)
        if cutoffs is None
        else np.asarray(cutoffs, dtype=np.int64).ravel()
    )
    if cuts.size and cuts.min() < 1:
        raise InvalidRequest("cutoffs must be >= 1")
    nr = _n_relevant(rel, n_relevant)
    hits = np.concatenate(
        [np.zeros((rel.shape[0], 1), dtype=np.int64), np.cumsum(rel, axis=1, dtype=np.int64)],
        axis=1,
    )[:, np.minimum(cuts, n)]
    precision = (hits / cuts[None, :]).mean(axis=0) if rel.shape[0] else np.zeros(len(cuts))
    recall = _safe_div(hits, nr[:, None]).mean(axis=0) if rel.shape[0] else np.zeros(len(cuts))
    return cuts, precision, recall
