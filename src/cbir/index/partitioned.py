"""``class-partitioned``: one exact table per predicted class (the deep-CBIR paper's trick).

Each vector is filed under the top-1 class its classifier predicted (``classes`` in
add, required). A query scans only the tables of its ``n_partitions`` most probable
classes (``query_probs`` (nq, C) in search), so the work drops ~C/n_partitions-fold,
at the price of missing neighbours filed under other classes. Without ``query_probs``
every table is scanned (exact search). After each search ``last_scanned`` (nq,) int64
says how many vectors each query scanned.

A query whose most probable class has no table falls through to the next most probable
classes that have one, and so does a query whose chosen tables hold fewer than k vectors:
it scans further classes (by probability) until they do, so a class of one image still
gives k results (and a search by a stored image, which excludes itself, is not empty).
Class -1 means "no prediction": those vectors go to one extra table that every query
scans, so they are never lost.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from cbir.errors import InvalidRequest
from cbir.index.base import INDEXES, Blob, IndexBase, flat_vectors, top_k

#: class of vectors that have no predicted class; their table is scanned by every query
UNCLASSIFIED = -1
_NO_TABLE = -2  # pads the per-query table lists in _search


@INDEXES.register("class-partitioned")
class ClassPartitionedIndex(IndexBase):
    """Exact search restricted to the query's most probable classes.

    ``add(ids, vectors, classes=(n,) int)``; ``search(q, k, query_probs=(nq, C) float,
    n_partitions=1)``. ``n_partitions`` is also a construction default.
    """

    name = "class-partitioned"
    _search_kw = frozenset({"n_partitions"})

    def __init__(self, dim: int, n_partitions: int = 1):
        super().__init__(dim)
        self.n_partitions = _check_n_partitions(n_partitions)
        self.params = {"n_partitions": self.n_partitions}
        self._parts: dict[int, faiss.IndexIDMap2] = {}
        self._id_class = np.empty(0, dtype=np.int64)  # class of each id in self._ids (sorted)
        #: vectors scanned by each query of the last search, (nq,) int64
        self.last_scanned = np.zeros(0, dtype=np.int64)

    def partition_sizes(self) -> dict[int, int]:
        """{class: number of vectors filed under it}."""
        return {c: int(p.ntotal) for c, p in sorted(self._parts.items())}

    # -- add / remove --------------------------------------------------------------------------
    def _check_add(self, ids: np.ndarray, x: np.ndarray, **kw: Any) -> dict[str, Any]:
        classes = kw.get("classes")
        if classes is None:
            raise InvalidRequest(
                "class-partitioned add() needs classes=(n,) int: the top-1 predicted class "
                "of each vector (e.g. Embedding.probs.argmax(1))"
            )
        arr = np.asarray(classes)
        if arr.shape != (len(ids),) or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InvalidRequest(
                f"classes must be a 1-D int array of {len(ids)} class indices; "
                f"got {arr.dtype} {arr.shape}"
            )
        if arr.size and arr.min() < -1:
            raise InvalidRequest("classes must be >= 0, or -1 for a vector without a prediction")
        return {"classes": arr.astype(np.int64)}

    def _add(self, ids: np.ndarray, x: np.ndarray, **kw: Any) -> None:
        classes = kw["classes"]
        for c in np.unique(classes):
            rows = np.flatnonzero(classes == c)
            part = self._parts.get(int(c))
            if part is None:
                part = self._parts[int(c)] = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            part.add_with_ids(x[rows], ids[rows])
        all_ids = np.concatenate([self._ids, ids])
        all_cls = np.concatenate([self._id_class, classes])
        self._id_class = all_cls[np.argsort(all_ids, kind="stable")]

    def _remove(self, ids: np.ndarray) -> None:
        pos = np.searchsorted(self._ids, ids)
        classes = self._id_class[pos]
        for c in np.unique(classes):
            part = self._parts[int(c)]
            part.remove_ids(ids[classes == c])
            if part.ntotal == 0:
                del self._parts[int(c)]
        self._id_class = np.delete(self._id_class, pos)

    # -- search --------------------------------------------------------------------------------
    def _check_search(self, q: np.ndarray, k: int, **kw: Any) -> dict[str, Any]:
        n_part = kw.get("n_partitions")
        n_part = self.n_partitions if n_part is None else _check_n_partitions(n_part)
        probs = kw.get("query_probs")
        if probs is not None:
            probs = np.asarray(probs)
            if probs.ndim != 2 or probs.shape[0] != q.shape[0] or probs.shape[1] < 1:
                raise InvalidRequest(
                    f"query_probs must be (nq={q.shape[0]}, n_classes) class probabilities; "
                    f"got shape {probs.shape}"
                )
            probs = probs.astype(np.float32, copy=False)
            if not np.isfinite(probs).all():
                raise InvalidRequest("query_probs contain NaN or infinity")
        return {"query_probs": probs, "n_partitions": n_part}

    def _after_empty_search(self, nq: int) -> None:
        self.last_scanned = np.zeros(nq, dtype=np.int64)

    def _search(self, q: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        probs = kw["query_probs"]
        nq = q.shape[0]
        if probs is None:  # no class information: scan every table
            every = np.array(sorted(self._parts), dtype=np.int64)
            chosen = np.broadcast_to(every, (nq, every.size))
        else:
            chosen = self._choose_tables(probs, k, kw["n_partitions"])
        width = chosen.shape[1]
        scores = np.full((nq, width * k), -np.inf, dtype=np.float32)
        labels = np.full((nq, width * k), -1, dtype=np.int64)
        scanned = np.zeros(nq, dtype=np.int64)
        for c in np.unique(chosen):
            part = self._parts.get(int(c))
            if part is None:
                continue
            rows, slot = np.nonzero(chosen == c)  # each query picks a class at most once
            kk = min(k, part.ntotal)
            d, i = part.search(q[rows], kk)
            cols = slot[:, None] * k + np.arange(kk)
            scores[rows[:, None], cols] = d
            labels[rows[:, None], cols] = i
            scanned[rows] += part.ntotal
        self.last_scanned = scanned
        return top_k(scores, labels, k)

    def _choose_tables(self, probs: np.ndarray, k: int, n_partitions: int) -> np.ndarray:
        """(nq, width) classes each query scans, most probable first; -2 pads (no table).

        Each query takes its ``n_partitions`` most probable classes that have a table, then
        the next ones until those tables (with the unclassified one) hold at least ``k``
        vectors, so a small class never leaves a query with fewer than k results. Classes
        beyond the width of ``probs`` come last. The unclassified table is appended.
        """
        nq = probs.shape[0]
        tables = np.array([c for c in sorted(self._parts) if c != UNCLASSIFIED], dtype=np.int64)
        sizes = np.array([self._parts[int(c)].ntotal for c in tables], dtype=np.int64)
        extra = self._parts[UNCLASSIFIED].ntotal if UNCLASSIFIED in self._parts else 0
        n_tables = tables.size
        score = np.full((nq, n_tables), -np.inf, dtype=np.float32)
        known = tables < probs.shape[1]
        score[:, known] = probs[:, tables[known]]
        order = np.argsort(-score, axis=1, kind="stable")
        ranked = tables[order]
        enough = (np.cumsum(sizes[order], axis=1) + extra) >= k
        need = np.where(enough.any(axis=1), enough.argmax(axis=1) + 1, n_tables)
        need = np.maximum(need, min(n_partitions, n_tables))
        width = int(need.max()) if nq else 0
        chosen = ranked[:, :width].copy()
        chosen[np.arange(width)[None, :] >= need[:, None]] = _NO_TABLE
        if extra:  # scanned by every query
            chosen = np.concatenate([chosen, np.full((nq, 1), UNCLASSIFIED)], axis=1)
        return chosen

    # -- persistence -------------------------------------------------------------------------
    def _blobs(self) -> list[Blob]:
        classes = sorted(self._parts)
        sizes = [self._parts[c].ntotal for c in classes]
        n = sum(sizes)
        return [
            Blob("part_classes", np.array(classes, dtype=np.int64)),
            Blob("part_sizes", np.array(sizes, dtype=np.int64)),
            Blob("part_ids", np.concatenate(
                [faiss.vector_to_array(self._parts[c].id_map) for c in classes]
                or [np.empty(0, dtype=np.int64)])),
            Blob("part_vectors", dtype="<f4", shape=(n, self.dim),
                 chunks=(flat_vectors(self._parts[c].index) for c in classes)),
        ]

    def _restore(self, state: dict[str, Any], blobs: dict[str, Any]) -> None:
        vecs, ids = blobs["part_vectors"], blobs["part_ids"]
        at = 0
        id_class = np.empty(ids.size, dtype=np.int64)
        for c, size in zip(blobs["part_classes"].tolist(), blobs["part_sizes"].tolist(),
                           strict=True):
            part = self._parts[c] = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            part.add_with_ids(vecs[at : at + size], ids[at : at + size])
            id_class[at : at + size] = c
            at += size
        self._id_class = id_class[np.argsort(ids, kind="stable")]


def _check_n_partitions(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidRequest(f"n_partitions must be a positive integer; got {value!r}")
    return int(value)
