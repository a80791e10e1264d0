"""Retrieval evaluation protocols: leave-one-out and query-vs-database.

Ranking is by inner product, descending (on L2-normalised features this is the same
ranking as Euclidean distance), ties broken by database index (see
:func:`cbir.eval.metrics.rank_by_score`). Reported numbers (means over queries):

* ``P@k`` for each k: relevant in the top k / k.
* ``mAP``: AP over the whole ranked database, convention ``"all"`` (sum of P@i at the
  relevant ranks / relevant items in the database). Only with ``full_map=True``.
* ``mAP@K`` (K = ``map_k``, default ``max(ks)``): deep-hashing convention ``"retrieved"``
  (sum of P@i at the relevant ranks within the top K / relevant items within the top K).
* Queries with no relevant item count as AP = 0.

Each chunk of queries is scored against the whole database with one float32 matmul
(byte-identical database vectors get identical scores, so they tie exactly).
``full_map=True`` fully sorts every row, giving ``mAP`` too; ``full_map=False`` only
selects and sorts the top K (a partial sort, faster on large databases). Both use the same
ranking, so their ``P@k`` and ``mAP@K`` are identical. Memory is about
``40 * chunk_size * n_database`` bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cbir.errors import InvalidRequest
from cbir.eval.metrics import (
    average_precision,
    rank_by_score,
    ranked_relevance,
)

__all__ = ["format_table", "leave_one_out_retrieval", "query_database_retrieval"]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)


def _features(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] == 0 or a.dtype.kind not in "fiu":
        raise InvalidRequest(f"{name} must be a non-empty (n, d) float array, got {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise InvalidRequest(f"{name} contains NaN or infinite values")
    return a


def _labels(y: np.ndarray, n: int, multilabel: bool, name: str) -> np.ndarray:
    a = np.asarray(y)
    want = 2 if multilabel else 1
    if a.ndim != want or a.shape[0] != n:
        shape = "(n, L) 0/1 matrix" if multilabel else "(n,) int array"
        raise InvalidRequest(f"{name} must be a {shape} with n = {n}, got shape {a.shape}")
    return (a != 0) if multilabel else a


def _ks(ks: Sequence[int], map_k: int | None) -> tuple[list[int], int]:
    kl = [int(k) for k in ks]
    if not kl or min(kl) < 1:
        raise InvalidRequest(f"ks must be a non-empty list of integers >= 1, got {ks!r}")
    mk = max(kl) if map_k is None else int(map_k)
    if mk < 1:
        raise InvalidRequest(f"map_k must be >= 1, got {map_k!r}")
    return sorted(set(kl)), mk


def _dedupe(db: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(unique rows (u, d), inverse (n,) or None when all rows are distinct).

    Scoring the unique rows then gathering makes byte-identical database vectors tie
    exactly (BLAS may round the same dot product differently at different columns).
    """
    rows = np.ascontiguousarray(db).view(np.dtype((np.void, db.dtype.itemsize * db.shape[1])))
    _, first, inverse = np.unique(rows.ravel(), return_index=True, return_inverse=True)
    if len(first) == db.shape[0]:
        return db, None
    return db[first], inverse.ravel()


def _evaluate(
    q: np.ndarray,
    ql: np.ndarray,
    db: np.ndarray,
    dl: np.ndarray,
    ks: list[int],
    map_k: int,
    full_map: bool,
    chunk_size: int,
    leave_one_out: bool,
) -> dict[str, float | int]:
    if q.shape[1] != db.shape[1]:
        raise InvalidRequest(f"query dim {q.shape[1]} != database dim {db.shape[1]}")
    if chunk_size < 1:
        raise InvalidRequest(f"chunk_size must be >= 1, got {chunk_size}")
    nq, n = q.shape[0], db.shape[0]
    n_eff = n - 1 if leave_one_out else n  # database size seen by each query
    top = min(max(max(ks), map_k), n_eff)

    db_unique, inverse = _dedupe(db)
    p_sum = dict.fromkeys(ks, 0.0)
    ap_k_sum = 0.0
    ap_sum = 0.0
    for a in range(0, nq, chunk_size):
        b = min(a + chunk_size, nq)
        scores = q[a:b] @ db_unique.T  # (c, n_unique) float32
        if inverse is not None:
            scores = scores[:, inverse]  # duplicate database vectors tie exactly
        if leave_one_out:
            # Self gets -inf: it ranks strictly last (features are finite) and is cut off.
            scores[np.arange(b - a), np.arange(a, b)] = -np.inf
        ranking = rank_by_score(scores)[:, :n_eff] if full_map else rank_by_score(scores, k=top)
        del scores
        rel = ranked_relevance(ql[a:b], dl, ranking)
        del ranking
        for k in ks:
            p_sum[k] += float(rel[:, :k].sum() / k)
        if full_map:
            ap_sum += float(average_precision(rel).sum())
        ap_k_sum += float(average_precision(rel, k=map_k, convention="retrieved").sum())

    out: dict[str, float | int] = {"queries": nq, "database": n_eff}
    for k in ks:
        out[f"P@{k}"] = p_sum[k] / nq
    if full_map:
        out["mAP"] = ap_sum / nq
    out[f"mAP@{map_k}"] = ap_k_sum / nq
    return out


def leave_one_out_retrieval(
    features: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    map_k: int | None = None,
    full_map: bool = True,
    chunk_size: int = 256,
) -> dict[str, float | int]:
    """Every image queries all the others (itself excluded), single-label relevance.

    features: (n, d) float32, L2-normalised; labels: (n,) int class ids.
    Returns {"queries": n, "database": n - 1, "P@k" for k in ks, "mAP" (over all, only if
    full_map), "mAP@K" (K = map_k or max(ks), hashing convention)} — see the module doc.
    The self-match is removed by index, so exact duplicates of a query still count.
    """
    feats = _features(features, "features")
    lab = _labels(labels, feats.shape[0], False, "labels")
    if feats.shape[0] < 2:
        raise InvalidRequest("leave-one-out needs at least 2 images")
    kl, mk = _ks(ks, map_k)
    return _evaluate(feats, lab, feats, lab, kl, mk, full_map, chunk_size, leave_one_out=True)


def query_database_retrieval(
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    db_feats: np.ndarray,
    db_labels: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    multilabel: bool = False,
    *,
    map_k: int | None = None,
    full_map: bool = True,
    chunk_size: int = 256,
) -> dict[str, float | int]:
    """Queries against a separate database (Corel-5K, CIFAR-10 hashing protocols).

    query_feats: (nq, d) float32, db_feats: (n, d) float32, both L2-normalised.
    Labels: (nq,) / (n,) int classes (relevant = same class), or with ``multilabel=True``
    (nq, L) / (n, L) 0/1 matrices (relevant = share >= 1 label).
    Returns the same keys as :func:`leave_one_out_retrieval` ("database" = n).
    """
    q = _features(query_feats, "query_feats")
    db = _features(db_feats, "db_feats")
    ql = _labels(query_labels, q.shape[0], multilabel, "query_labels")
    dl = _labels(db_labels, db.shape[0], multilabel, "db_labels")
    if multilabel and ql.shape[1] != dl.shape[1]:
        raise InvalidRequest(f"query and database have {ql.shape[1]} and {dl.shape[1]} labels")
    kl, mk = _ks(ks, map_k)
    return _evaluate(q, ql, db, dl, kl, mk, full_map, chunk_size, leave_one_out=False)


def _cell(value: object, floatfmt: str) -> tuple[str, bool]:
    """(text, is_number) for one table cell."""
    if value is None:
        return "", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, float | np.floating):
        return format(float(value), floatfmt), True
    if isinstance(value, int | np.integer):
        return str(int(value)), True
    return str(value), False


def format_table(
    rows: Sequence[Mapping[str, object]], columns: Sequence[str], *, floatfmt: str = ".4f"
) -> str:
    """Aligned plain-text table: header, dashed rule, one line per row.

    Floats use ``floatfmt``; numbers are right-aligned, other values left-aligned; a key
    missing from a row prints empty. Returns the table without a trailing newline.
    """
    cells = [[_cell(row.get(c), floatfmt) for c in columns] for row in rows]
    widths = [
        max([len(c)] + [len(r[i][0]) for r in cells]) for i, c in enumerate(columns)
    ]
    numeric = [any(r[i][1] for r in cells) for i in range(len(columns))]

    def line(texts: Sequence[tuple[str, bool]]) -> str:
        parts = [
            t.rjust(w) if numeric[i] else t.ljust(w)
            for i, ((t, _), w) in enumerate(zip(texts, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    header = line([(c, False) for c in columns])
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([header, rule, *(line(r) for r in cells)])
