"""The hashing papers' evaluation protocols: binary codes ranked by Hamming distance.

:func:`evaluate_codes` ranks a database of packed codes for each query and reports the
numbers the papers tabulate; :func:`evaluate_float` does the same for real-valued
features ranked by inner product (the no-hashing ceiling), with the same keys.

Conventions (all means are over queries):

* **Ranking and ties.** Codes: ascending Hamming distance; features: descending inner
  product (float32). Ties are broken by database index, lower first (a stable sort, as in
  :func:`cbir.eval.metrics.rank_by_score`). Hamming distances tie massively (a 64-bit
  code has 65 possible distances), so the reported numbers depend on the database order;
  ``tie_averaged=True`` also reports ``"mAP (tie-avg)"``, the exact expectation of mAP
  over all orders of tied items (McSherry & Najork, ECIR 2008), independent of it.
* ``"mAP@K"`` for each int K of ``map_ks`` (default 5000): the deep-hashing convention
  (DPSH, HashNet, DSDH, IDEA): sum of P@i at the relevant ranks i <= K divided by the
  number of relevant items within the top K (convention ``"retrieved"`` of
  :mod:`cbir.eval.metrics`); 0 when the top K holds none. K larger than the database is
  capped (then it equals ``"mAP"``); the key keeps the requested K.
* ``"mAP"`` (``None`` in ``map_ks``): AP over the whole ranked database (sum of P@i at
  the relevant ranks / relevant items in the database).
* ``"P@N"`` for each N of ``precision_ns``: relevant in the top N / N.
* ``"P@H<=r"`` (codes only, r = ``radius``, default 2): precision of the items within
  Hamming distance r of the query (hash lookup). **A query retrieving nothing counts as
  precision 0** (the common convention, e.g. DPSH/DSH code); ``"R@H<=r"`` is the recall
  within the radius, ``"empty@H<=r"`` the fraction of queries retrieving nothing.
* ``"pr_curve"`` (codes, ``pr_curve=True``): Hamming-radius PR curve, a dict of arrays
  over r = 0..bits: ``radius`` (bits+1,) int64, ``precision`` (empty -> 0, as above),
  ``precision_nonempty`` (mean over the queries retrieving something; 0 if none),
  ``recall``, ``empty``. ``"pr_rank"`` (codes and features): precision / recall at
  ``pr_points`` rank cut-offs spread evenly over 1..n (dict of ``cutoff``, ``precision``,
  ``recall``), so hashing and float curves share axes.
* Queries with no relevant item in the database get AP = 0 and recall = 0 and stay in
  the means.
* Relevance: single-label labels (n,) int -> same class; multi-label (n, L) 0/1 -> share at
  least one label; or an explicit unranked (nq, n) bool ``relevance`` matrix (e.g. the
  multi-concept queries of SSIR: relevant = has every concept).

Cost: queries are processed in chunks of ``chunk_size``; per chunk, one XOR-popcount
Hamming block (:func:`cbir.hashing.base.hamming_distances`), one stable radix sort of
uint8 distances, and O(chunk x n) bookkeeping. 1,000 queries x 59,000 codes x 64 bits take
a few seconds on one core (about 2 s unloaded), with ~40 x chunk_size x n bytes of memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cbir.errors import InvalidRequest
from cbir.eval.metrics import rank_by_score
from cbir.eval.protocols import format_table
from cbir.hashing.base import as_codes, code_size, hamming_distances

__all__ = [
    "DEFAULT_MAP_KS",
    "DEFAULT_PRECISION_NS",
    "evaluate_codes",
    "evaluate_float",
    "format_results_table",
    "tie_averaged_ap",
]

DEFAULT_MAP_KS: tuple[int | None, ...] = (5000, None)
DEFAULT_PRECISION_NS: tuple[int, ...] = tuple(range(100, 1001, 100))


# --------------------------------------------------------------------------- helpers


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, 0 where den == 0 (broadcasting)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


# --------------------------------------------------------------------------- relevance


class _Relevance:
    """Unranked (c, n) bool relevance rows for chunks of queries."""

    def __init__(
        self,
        nq: int,
        n: int,
        query_labels: np.ndarray | None,
        db_labels: np.ndarray | None,
        relevance: np.ndarray | None,
    ):
        self.matrix: np.ndarray | None = None
        self.ql: np.ndarray | None = None
        self.dl: np.ndarray | None = None
        if relevance is not None:
            if query_labels is not None or db_labels is not None:
                raise InvalidRequest("pass either query_labels/db_labels or relevance, not both")
            rel = np.asarray(relevance)
            if rel.shape != (nq, n):
                raise InvalidRequest(f"relevance must be a ({nq}, {n}) bool matrix, got shape {rel.shape}")
            self.matrix = rel.astype(bool, copy=False)
            return
        if query_labels is None or db_labels is None:
            raise InvalidRequest("pass query_labels and db_labels (or an unranked relevance matrix)")
        ql, dl = np.asarray(query_labels), np.asarray(db_labels)
        if ql.ndim != dl.ndim or ql.ndim not in (1, 2) or len(ql) != nq or len(dl) != n:
            raise InvalidRequest(
                f"labels must be ({nq},) and ({n},) class ids, or ({nq}, L) and ({n}, L) 0/1 matrices; "
                f"got {ql.shape} and {dl.shape}"
            )
        if ql.ndim == 2:
            if ql.shape[1] != dl.shape[1]:
                raise InvalidRequest(
                    f"query and database labels have {ql.shape[1]} and {dl.shape[1]} columns"
                )
            # float32 0/1 products are exact: overlap counts are small integers
            self.ql = (ql != 0).astype(np.float32)
            self.dl = np.ascontiguousarray((dl != 0).astype(np.float32).T)
        else:
            self.ql, self.dl = ql, dl

    def rows(self, a: int, b: int) -> np.ndarray:
        if self.matrix is not None:
            return self.matrix[a:b]
        assert self.ql is not None and self.dl is not None
        if self.ql.ndim == 2:
            return (self.ql[a:b] @ self.dl) > 0
        return self.ql[a:b, None] == self.dl[None, :]


# --------------------------------------------------------------------------- tie-averaged AP


def tie_averaged_ap(
    rel_sorted: np.ndarray, keys_sorted: np.ndarray, n_relevant: np.ndarray | None = None
) -> np.ndarray:
    """(nq,) float64 expected AP over all orders of tied items (McSherry & Najork 2008).

    rel_sorted: (nq, n) bool relevance in rank order; keys_sorted: (nq, n) the ranking
    scores in the same order (equal adjacent keys = a tie group); n_relevant: (nq,)
    relevant items in the database (default: row sums). For a group of g items with r
    relevant, occupying ranks s+1..s+g after h relevant items, a relevant item sits at
    each position p with probability r/g and has (p-1)(r-1)/(g-1) other relevant items
    before it in the group on average, so the group adds
    ``r/g * sum_p (h + 1 + (p-1)(r-1)/(g-1)) / (s+p)`` to the AP numerator, summed in
    closed form with harmonic numbers. Equals plain AP when there are no ties.
    """
    rel = np.asarray(rel_sorted, dtype=bool)
    keys = np.asarray(keys_sorted)
    if rel.ndim != 2 or keys.shape != rel.shape:
        raise InvalidRequest(
            f"rel_sorted and keys_sorted must be (nq, n) of one shape; got {rel.shape}, {keys.shape}"
        )
    nq, n = rel.shape
    nr = rel.sum(axis=1, dtype=np.int64) if n_relevant is None else np.asarray(n_relevant, dtype=np.int64)
    if nq == 0 or n == 0:
        return np.zeros(nq)
    new = np.ones((nq, n), dtype=bool)
    new[:, 1:] = keys[:, 1:] != keys[:, :-1]
    flat_new = new.ravel()
    gid = np.cumsum(flat_new) - 1  # groups never span rows: every row starts a group
    size = np.bincount(gid).astype(np.float64)
    r = np.bincount(gid, weights=rel.ravel().astype(np.float64))
    starts = np.flatnonzero(flat_new)
    row = starts // n
    s = (starts % n).astype(np.int64)
    csum = np.cumsum(r)
    before = csum - r  # relevant items before the group, counted from the first row
    first = np.searchsorted(row, np.arange(nq))  # first group of each row
    h = before - before[first][row]
    contrib = _group_contributions(size, r, s, h, _harmonic(n))
    return _safe_div(np.bincount(row, weights=contrib, minlength=nq), nr)


def _harmonic(n: int) -> np.ndarray:
    """(n + 1,) float64 harmonic numbers H(0..n), H(m) = 1 + 1/2 + ... + 1/m."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def _group_contributions(
    size: np.ndarray, r: np.ndarray, s: np.ndarray, h: np.ndarray, harmonic: np.ndarray
) -> np.ndarray:
    """Expected AP numerator of tie groups (any shape, empty groups give 0).

    size: items in the group, r: relevant among them, s: items ranked before the group,
    h: relevant items ranked before it; harmonic: :func:`_harmonic` up to >= s + size.
    """
    size = np.asarray(size, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    s = np.asarray(s, dtype=np.int64)
    d = harmonic[s + size.astype(np.int64)] - harmonic[s]  # sum over p of 1 / (s + p)
    c = _safe_div(r - 1, np.where(size > 1, size - 1, 0))
    return _safe_div(r, size) * ((h + 1) * d + c * (size - (s + 1) * d))


# --------------------------------------------------------------------------- core


def _check_ks(
    map_ks: Iterable[int | None], precision_ns: Iterable[int]
) -> tuple[list[int | None], list[int]]:
    mks = list(map_ks)
    pns = [int(v) for v in precision_ns]
    for k in [k for k in mks if k is not None] + pns:
        if isinstance(k, bool) or int(k) < 1:
            raise InvalidRequest(
                f"map_ks / precision_ns must be integers >= 1 (or None for mAP over all); got {k!r}"
            )
    return [None if k is None else int(k) for k in mks], pns


class _Accumulator:
    """Sums of per-query metrics over chunks; see the module docstring for the keys."""

    def __init__(
        self, n: int, map_ks: list[int | None], precision_ns: list[int], pr_points: int, tie_averaged: bool
    ):
        self.n = n
        self.map_ks = map_ks
        self.precision_ns = precision_ns
        self.tie_averaged = tie_averaged
        self.sums: dict[str, float] = {}
        self.cutoffs = (
            np.unique(np.round(np.linspace(1, n, min(pr_points, n))).astype(np.int64))
            if pr_points > 0
            else None
        )
        if self.cutoffs is not None:
            self.rank_p = np.zeros(len(self.cutoffs))
            self.rank_r = np.zeros(len(self.cutoffs))

    def add(self, key: str, values: np.ndarray) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(np.sum(values))

    def ranked(self, rel: np.ndarray, n_rel: np.ndarray, keys_sorted: np.ndarray | None) -> None:
        """rel: (c, n) bool in rank order; n_rel: (c,) int64; keys_sorted: (c, n) sort keys
        in rank order for the tie-averaged mAP (None: the caller adds it).

        One cumulative sum serves every metric (same formulas as
        :func:`cbir.eval.metrics.average_precision` and ``precision_at_k``).
        """
        c, n = rel.shape
        hits = np.cumsum(rel, axis=1, dtype=np.int32)  # hits[:, i] = relevant in the top i + 1
        rows, cols = np.nonzero(rel)
        ratio = hits[rows, cols] / (cols + 1.0)  # P@rank at each relevant rank
        for k in self.map_ks:
            if k is None:
                s = np.bincount(rows, weights=ratio, minlength=c)
                self.add("mAP", _safe_div(s, n_rel))
            else:
                kk = min(k, n)
                m = cols < kk
                s = np.bincount(rows[m], weights=ratio[m], minlength=c)
                self.add(f"mAP@{k}", _safe_div(s, hits[:, kk - 1]))
        if self.tie_averaged and keys_sorted is not None:
            self.add("mAP (tie-avg)", tie_averaged_ap(rel, keys_sorted, n_rel))
        for k in self.precision_ns:
            self.add(f"P@{k}", hits[:, min(k, n) - 1] / float(k))
        if self.cutoffs is not None:
            h = hits[:, self.cutoffs - 1]
            self.rank_p += (h / self.cutoffs[None, :]).sum(axis=0)
            self.rank_r += _safe_div(h, n_rel[:, None]).sum(axis=0)

    def result(self, nq: int, head: dict[str, Any]) -> dict[str, Any]:
        out = dict(head)
        order = [("mAP" if k is None else f"mAP@{k}") for k in self.map_ks]
        if self.tie_averaged:
            order.append("mAP (tie-avg)")
        order += [f"P@{k}" for k in self.precision_ns]
        order += [k for k in self.sums if k not in order]
        for key in order:
            out[key] = self.sums.get(key, 0.0) / nq if nq else 0.0
        if self.cutoffs is not None:
            out["pr_rank"] = {
                "cutoff": self.cutoffs,
                "precision": self.rank_p / max(nq, 1),
                "recall": self.rank_r / max(nq, 1),
            }
        return out


def _radius_curve(counts: np.ndarray, hits: np.ndarray, n_rel: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query cumulative (c, bits+1) retrieved / relevant-retrieved -> summed curve arrays."""
    retrieved = np.cumsum(counts, axis=1)
    got = np.cumsum(hits, axis=1)
    prec = _safe_div(got, retrieved)
    rec = _safe_div(got, n_rel[:, None])
    return {
        "precision": prec.sum(axis=0),  # empty queries add 0
        "recall": rec.sum(axis=0),
        "nonempty": (retrieved > 0).sum(axis=0).astype(np.float64),
    }


def evaluate_codes(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    *,
    relevance: np.ndarray | None = None,
    bits: int | None = None,
    map_ks: Sequence[int | None] = DEFAULT_MAP_KS,
    precision_ns: Sequence[int] = DEFAULT_PRECISION_NS,
    radius: int | None = 2,
    pr_curve: bool = True,
    pr_points: int = 100,
    tie_averaged: bool = False,
    chunk_size: int = 100,
) -> dict[str, Any]:
    """Evaluate packed binary codes by Hamming ranking (conventions: module docstring).

    query_codes: (nq, B) uint8 and db_codes: (n, B) uint8, packed with np.packbits (big bit
    order, :func:`cbir.hashing.base.pack_bits`); bits: code length (default 8 * B; when it
    is not a multiple of 8 the padding bits are ignored).
    query_labels / db_labels: (nq,) / (n,) int classes or (nq, L) / (n, L) 0/1 matrices;
    or relevance: unranked (nq, n) bool.
    map_ks: K values for ``mAP@K`` (None -> ``mAP`` over all); precision_ns: N for ``P@N``;
    radius: Hamming radius for ``P@H<=r`` (None: skip); pr_curve: add the radius PR curve;
    pr_points: rank cut-offs of ``pr_rank`` (0: skip); tie_averaged: add ``mAP (tie-avg)``.

    Returns {"queries": nq, "database": n, "bits": bits, "mAP@K"..., "mAP", "P@N"...,
    "P@H<=r", "R@H<=r", "empty@H<=r", "pr_curve": {...}, "pr_rank": {...}} (floats are
    means over queries).
    """
    q = np.asarray(query_codes)
    db = np.asarray(db_codes)
    if q.dtype != np.uint8 or db.dtype != np.uint8 or q.ndim != 2 or db.ndim != 2:
        raise InvalidRequest(
            f"codes must be packed uint8 (n, B) arrays; got {q.dtype} {q.shape} and {db.dtype} {db.shape}"
        )
    if q.shape[1] != db.shape[1]:
        raise InvalidRequest(f"query codes have {q.shape[1]} bytes, database codes {db.shape[1]}")
    b = q.shape[1] * 8 if bits is None else int(bits)
    if b < 1 or code_size(b) != q.shape[1]:
        raise InvalidRequest(f"bits={bits!r} does not fit codes of {q.shape[1]} bytes")
    q, db = as_codes(q, b, "query_codes"), as_codes(db, b, "db_codes")
    nq, n = q.shape[0], db.shape[0]
    if n == 0:
        raise InvalidRequest("the database is empty")
    if chunk_size < 1:
        raise InvalidRequest(f"chunk_size must be >= 1, got {chunk_size}")
    if radius is not None and not 0 <= int(radius) <= b:
        raise InvalidRequest(f"radius must be in 0..{b}, got {radius}")
    mks, pns = _check_ks(map_ks, precision_ns)
    rel_src = _Relevance(nq, n, query_labels, db_labels, relevance)
    acc = _Accumulator(n, mks, pns, pr_points, tie_averaged)
    want_hist = pr_curve or radius is not None
    harmonic = _harmonic(n) if tie_averaged else np.zeros(1)
    dist_dtype = np.uint8 if b < 256 else np.uint16  # small ints: numpy's stable sort is a radix sort
    curve = {k: np.zeros(b + 1) for k in ("precision", "recall", "nonempty")}

    for a in range(0, nq, chunk_size):
        e = min(a + chunk_size, nq)
        dist = hamming_distances(q[a:e], db).astype(dist_dtype)
        rel_u = rel_src.rows(a, e)
        n_rel = rel_u.sum(axis=1, dtype=np.int64)
        order = np.argsort(dist, axis=1, kind="stable")
        rel = np.take_along_axis(rel_u, order, axis=1)
        acc.ranked(rel, n_rel, None)
        del order, rel
        if want_hist or tie_averaged:
            # per query and distance: items (counts) and relevant items (hits)
            c = e - a
            idx = (np.arange(c, dtype=np.int64)[:, None] * (b + 1) + dist).ravel()
            counts = np.bincount(idx, minlength=c * (b + 1)).reshape(c, b + 1)
            hits = np.bincount(idx[rel_u.ravel()], minlength=c * (b + 1)).reshape(c, b + 1)
            if want_hist:
                part = _radius_curve(counts, hits, n_rel)
                for k in curve:
                    curve[k] += part[k]
            if tie_averaged:
                # each distance is one tie group: closed form, no per-item work
                before = np.cumsum(counts, axis=1) - counts
                h_before = np.cumsum(hits, axis=1) - hits
                contrib = _group_contributions(counts, hits, before, h_before, harmonic)
                acc.add("mAP (tie-avg)", _safe_div(contrib.sum(axis=1), n_rel))

    out = acc.result(nq, {"queries": nq, "database": n, "bits": b})
    if radius is not None and nq:
        r = int(radius)
        out[f"P@H<={r}"] = float(curve["precision"][r] / nq)
        out[f"R@H<={r}"] = float(curve["recall"][r] / nq)
        out[f"empty@H<={r}"] = float(1.0 - curve["nonempty"][r] / nq)
    if pr_curve:
        nonempty = curve["nonempty"]
        pn = _safe_div(curve["precision"], nonempty)
        out["pr_curve"] = {
            "radius": np.arange(b + 1, dtype=np.int64),
            "precision": curve["precision"] / max(nq, 1),
            "precision_nonempty": pn,
            "recall": curve["recall"] / max(nq, 1),
            "empty": 1.0 - nonempty / max(nq, 1),
        }
    return out


def _float_matrix(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.dtype.kind not in "fiub":
        raise InvalidRequest(f"{name} must be a 2-D (n, d) float array, got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise InvalidRequest(f"{name} contains NaN or infinite values")
    return a


def _unique_rows(db: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(unique rows, inverse (n,) or None): identical database vectors then tie exactly."""
    rows = np.ascontiguousarray(db).view(np.dtype((np.void, db.dtype.itemsize * db.shape[1])))
    _, first, inverse = np.unique(rows.ravel(), return_index=True, return_inverse=True)
    if len(first) == db.shape[0]:
        return db, None
    return db[first], inverse.ravel()


def evaluate_float(
    query_feats: np.ndarray,
    db_feats: np.ndarray,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
    *,
    relevance: np.ndarray | None = None,
    map_ks: Sequence[int | None] = DEFAULT_MAP_KS,
    precision_ns: Sequence[int] = DEFAULT_PRECISION_NS,
    pr_points: int = 100,
    tie_averaged: bool = False,
    chunk_size: int = 100,
) -> dict[str, Any]:
    """The no-hashing ceiling: rank by inner product (descending), same keys as evaluate_codes.

    query_feats: (nq, d), db_feats: (n, d) float32 (L2-normalise them for cosine /
    Euclidean ranking). Labels / relevance and the options as in :func:`evaluate_codes`;
    there is no Hamming radius, so no ``P@H<=r`` and no ``pr_curve`` (use ``pr_rank``).
    Byte-identical database vectors tie exactly; ties go to the lower database index.
    Returns {"queries", "database", "dim", "mAP@K"..., "mAP", "P@N"..., "pr_rank"}.
    """
    q = _float_matrix(query_feats, "query_feats")
    db = _float_matrix(db_feats, "db_feats")
    if q.shape[1] != db.shape[1]:
        raise InvalidRequest(f"query dim {q.shape[1]} != database dim {db.shape[1]}")
    nq, n = q.shape[0], db.shape[0]
    if n == 0:
        raise InvalidRequest("the database is empty")
    if chunk_size < 1:
        raise InvalidRequest(f"chunk_size must be >= 1, got {chunk_size}")
    mks, pns = _check_ks(map_ks, precision_ns)
    rel_src = _Relevance(nq, n, query_labels, db_labels, relevance)
    acc = _Accumulator(n, mks, pns, pr_points, tie_averaged)
    db_u, inverse = _unique_rows(db)
    db_t = np.ascontiguousarray(db_u.T)
    for a in range(0, nq, chunk_size):
        e = min(a + chunk_size, nq)
        scores = q[a:e] @ db_t
        if inverse is not None:
            scores = scores[:, inverse]
        # descending score, ties by lower index (exact packed-key sort; 0.0 and -0.0 tie)
        order = rank_by_score(scores)
        rel_u = rel_src.rows(a, e)
        n_rel = rel_u.sum(axis=1, dtype=np.int64)
        rel = np.take_along_axis(rel_u, order, axis=1)
        keys = np.take_along_axis(scores, order, axis=1) if tie_averaged else None
        acc.ranked(rel, n_rel, keys)
    return acc.result(nq, {"queries": nq, "database": n, "dim": int(q.shape[1])})


# --------------------------------------------------------------------------- tables


def format_results_table(
    results: Mapping[str, Mapping[Any, Mapping[str, Any]]],
    metric: str = "mAP@5000",
    *,
    floatfmt: str = ".4f",
) -> str:
    """Methods as rows, code lengths as columns, one metric per cell.

    results: {method: {bits: metrics dict (from evaluate_codes / evaluate_float)}}; int
    bit keys become columns "<b> bits" in ascending order, other keys (e.g. "float") follow
    as given. A missing cell prints empty. Returns the metric name on the first line, then
    the table (:func:`cbir.eval.protocols.format_table`), with no trailing newline.
    """
    keys: list[Any] = []
    for per_bits in results.values():
        for k in per_bits:
            if k not in keys:
                keys.append(k)
    ints = sorted(k for k in keys if isinstance(k, int | np.integer) and not isinstance(k, bool))
    others = [k for k in keys if k not in ints]
    cols = ints + others

    def header(k: Any) -> str:
        return f"{int(k)} bits" if k in ints else str(k)

    rows = []
    for method, per_bits in results.items():
        row: dict[str, object] = {"method": method}
        for k in cols:
            if k in per_bits and metric in per_bits[k]:
                row[header(k)] = per_bits[k][metric]
        rows.append(row)
    return f"{metric}\n" + format_table(rows, ["method", *(header(k) for k in cols)], floatfmt=floatfmt)
