"""``hnsw``: graph search (FAISS IndexHNSWFlat, inner-product metric) with tombstone removal.

FAISS HNSW cannot delete. Each vector lives in a *slot* (its position in the graph);
``_slot_ids`` (ntotal,) int64 maps slot -> catalog id, -1 for a tombstone. While
tombstones exist, search passes an IDSelectorBitmap of live slots in
SearchParametersHNSW, so deleted vectors are walked through but never returned (and
still count for k: no over-fetch needed). When tombstones pass ``max_tombstones``
(default 25 % of slots) the graph is rebuilt from the live vectors (``compact()``).
Replacing an id tombstones its old slot. ``save`` keeps tombstones (load gives
bit-identical results); call ``compact()`` first for a smaller file.

Memory: 4*dim + ~8*M bytes per vector (M=32: ~260 B of graph next to 5 KB of vector);
``dtype="float16"`` (IndexHNSWSQ, fp16) halves the vector part, losslessly for vectors
that are float16 already (a collection's are).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from cbir.errors import InvalidRequest
from cbir.index.base import INDEXES, Blob, IndexBase, check_dtype, check_positive_int, chunked


@INDEXES.register("hnsw")
class HNSWIndex(IndexBase):
    """HNSW. Knobs: ``M`` (graph degree; memory and build time grow with it),
    ``ef_construction`` (build quality), ``ef_search`` (recall vs latency; also a search
    keyword), ``max_tombstones`` (fraction of dead slots that triggers a rebuild),
    ``dtype`` (how vectors are kept: "float32" or "float16").
    """

    name = "hnsw"
    _search_kw = frozenset({"ef_search"})

    def __init__(
        self,
        dim: int,
        M: int = 32,  # the name every HNSW paper and library uses
        ef_construction: int = 80,
        ef_search: int = 96,
        max_tombstones: float = 0.25,
        dtype: str = "float32",
    ):
        super().__init__(dim)
        self.dtype = check_dtype(dtype)
        self.M = check_positive_int(M, "M")
        self.ef_construction = check_positive_int(ef_construction, "ef_construction")
        self.ef_search = check_positive_int(ef_search, "ef_search")
        if not 0.0 < float(max_tombstones) <= 1.0:
            raise InvalidRequest(f"max_tombstones must be in (0, 1]; got {max_tombstones!r}")
        self.max_tombstones = float(max_tombstones)
        self.params = {"M": self.M, "ef_construction": self.ef_construction,
                       "ef_search": self.ef_search, "max_tombstones": self.max_tombstones,
                       "dtype": self.dtype}
        self._index = self._new_graph()
        self._slot_ids = np.empty(0, dtype=np.int64)  # slot -> id, -1 = tombstone
        self._id_slots = np.empty(0, dtype=np.int64)  # slot of each id in self._ids (sorted)
        self._bitmap: np.ndarray | None = None  # packed live-slot bitmap, rebuilt lazily

    def _new_graph(self) -> faiss.IndexHNSW:
        if self.dtype == "float16":
            index = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_fp16, self.M,
                                      faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexHNSWFlat(self.dim, self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    @property
    def n_tombstones(self) -> int:
        """Dead slots still in the graph."""
        return int(self._slot_ids.size - len(self))

    # -- hooks -------------------------------------------------------------------------------
    def _add(self, ids: np.ndarray, x: np.ndarray, **kw: Any) -> None:
        start = self._index.ntotal
        for sl in chunked(len(x), 100_000):
            self._index.add(x[sl])
        slots = np.arange(start, start + len(x), dtype=np.int64)
        self._slot_ids = np.concatenate([self._slot_ids, ids])
        self._set_sorted(np.concatenate([self._ids, ids]), np.concatenate([self._id_slots, slots]))
        self._bitmap = None

    def _set_sorted(self, ids: np.ndarray, slots: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        self._id_slots = slots[order]

    def _remove(self, ids: np.ndarray) -> None:
        pos = np.searchsorted(self._ids, ids)  # ids are all present
        self._slot_ids[self._id_slots[pos]] = -1
        self._id_slots = np.delete(self._id_slots, pos)
        self._bitmap = None

    def add(self, ids: np.ndarray, vectors: np.ndarray, **kw: Any) -> None:
        super().add(ids, vectors, **kw)
        self._maybe_compact()

    def remove(self, ids: np.ndarray) -> int:
        n = super().remove(ids)
        self._maybe_compact()
        return n

    def _maybe_compact(self) -> None:
        if self.n_tombstones > self.max_tombstones * max(1, self._slot_ids.size):
            self.compact()

    def compact(self) -> None:
        """Rebuild the graph from live vectors only (drops every tombstone; O(n) build)."""
        if self.n_tombstones == 0:
            return
        old = self._index
        live = np.flatnonzero(self._slot_ids >= 0)
        self._index = self._new_graph()
        for sl in chunked(live.size, 50_000):
            self._index.add(old.reconstruct_batch(live[sl]))
        del old
        self._slot_ids = self._slot_ids[live]
        self._set_sorted(self._slot_ids, np.arange(live.size, dtype=np.int64))
        self._bitmap = None

    def _check_search(self, q: np.ndarray, k: int, **kw: Any) -> dict[str, Any]:
        ef = kw.get("ef_search")
        return {"ef_search": self.ef_search if ef is None else check_positive_int(ef, "ef_search")}

    def _search(self, q: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersHNSW(efSearch=max(kw["ef_search"], k))
        if self.n_tombstones:
            if self._bitmap is None:
                self._bitmap = np.packbits(self._slot_ids >= 0, bitorder="little")
            sel = faiss.IDSelectorBitmap(self._slot_ids.size, faiss.swig_ptr(self._bitmap))
            params.sel = sel  # ``sel`` and ``self._bitmap`` stay alive for the call below
        scores, slots = self._index.search(q, k, params=params)
        labels = np.where(slots >= 0, self._slot_ids[slots.clip(min=0)], -1)
        return scores, labels

    def _state(self) -> dict[str, Any]:
        return {"slots": int(self._slot_ids.size), "tombstones": self.n_tombstones}

    def _blobs(self) -> list[Blob]:
        return [Blob("graph", self._index), Blob("slot_ids", self._slot_ids)]

    def _restore(self, state: dict[str, Any], blobs: dict[str, Any]) -> None:
        self._index = blobs["graph"]
        self._slot_ids = blobs["slot_ids"]
        live = np.flatnonzero(self._slot_ids >= 0)
        self._set_sorted(self._slot_ids[live], live)
