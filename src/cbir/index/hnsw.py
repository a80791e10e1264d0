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
that are float16 already (a collection's are). ``dtype="int8"`` (IndexHNSWSQ, 8 bits per
dimension over ranges trained on the first vectors, +-10 %) quarters it: the graph walks
the 8-bit codes, and with a ``VectorSource`` (``use_vector_source``; a collection passes its
catalog's features) the best ``k_factor * k`` candidates are re-scored exactly, so scores
stay exact inner products and only the candidate list is approximate. Without a source the
scores are the 8-bit ones (``exact_scores`` is False). Ranges trained on fewer than
``SQ8_TRAIN_ENOUGH`` vectors are trained again (graph rebuilt) each time the index grows 4x.
Measurements: docs/storage.md "An 8-bit HNSW index".
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from cbir.errors import InvalidRequest
from cbir.index.base import (
    INDEXES,
    VECTOR_DTYPES,
    Blob,
    IndexBase,
    VectorSource,
    check_k_factor,
    check_positive_int,
    chunked,
    rescore,
    top_k,
)

#: how HNSW may keep its vectors: the shared dtypes, or 8-bit codes re-scored from a source
HNSW_DTYPES = (*VECTOR_DTYPES, "int8")
#: the 8-bit ranges are trained on at most this many vectors (a fixed-seed sample)
SQ8_TRAIN_MAX = 65_536
#: ranges trained on fewer vectors than this are trained again as the index grows
SQ8_TRAIN_ENOUGH = 10_000
#: each range is widened by this fraction of itself on both sides (later outliers clip less)
SQ8_MARGIN = 0.1


@INDEXES.register("hnsw")
class HNSWIndex(IndexBase):
    """HNSW. Knobs: ``M`` (graph degree; memory and build time grow with it),
    ``ef_construction`` (build quality), ``ef_search`` (recall vs latency; also a search
    keyword), ``max_tombstones`` (fraction of dead slots that triggers a rebuild),
    ``dtype`` (how vectors are kept: "float32", "float16" or "int8"), ``k_factor`` (int8:
    candidates re-scored per result; also a search keyword). Search keyword ``rescore=False``
    (int8) returns the 8-bit scores without reading the source: for a caller that scans the
    whole collection and checks the few pairs it keeps itself (``cbir.duplicates``).
    """

    name = "hnsw"
    _search_kw = frozenset({"ef_search", "k_factor", "rescore"})

    def __init__(
        self,
        dim: int,
        M: int = 32,  # the name every HNSW paper and library uses
        ef_construction: int = 80,
        ef_search: int = 96,
        max_tombstones: float = 0.25,
        dtype: str = "float32",
        k_factor: float = 2.0,
    ):
        super().__init__(dim)
        if dtype not in HNSW_DTYPES:
            raise InvalidRequest(f"dtype must be one of {list(HNSW_DTYPES)}; got {dtype!r}")
        self.dtype = str(dtype)
        self.k_factor = check_k_factor(k_factor)
        self.M = check_positive_int(M, "M")
        self.ef_construction = check_positive_int(ef_construction, "ef_construction")
        self.ef_search = check_positive_int(ef_search, "ef_search")
        if not 0.0 < float(max_tombstones) <= 1.0:
            raise InvalidRequest(f"max_tombstones must be in (0, 1]; got {max_tombstones!r}")
        self.max_tombstones = float(max_tombstones)
        self.params = {"M": self.M, "ef_construction": self.ef_construction,
                       "ef_search": self.ef_search, "max_tombstones": self.max_tombstones,
                       "dtype": self.dtype}
        if self.dtype == "int8":
            self.params["k_factor"] = self.k_factor
        self._source: VectorSource | None = None
        self._trained_on = 0  # int8: how many vectors the 8-bit ranges were trained on
        self._index = self._new_graph()
        self._slot_ids = np.empty(0, dtype=np.int64)  # slot -> id, -1 = tombstone
        self._id_slots = np.empty(0, dtype=np.int64)  # slot of each id in self._ids (sorted)
        self._bitmap: np.ndarray | None = None  # packed live-slot bitmap, rebuilt lazily

    def _new_graph(self) -> faiss.IndexHNSW:
        if self.dtype == "float16":
            index = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_fp16, self.M,
                                      faiss.METRIC_INNER_PRODUCT)
        elif self.dtype == "int8":
            index = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_8bit, self.M,
                                      faiss.METRIC_INNER_PRODUCT)
            sq = faiss.downcast_index(index.storage).sq
            sq.rangestat = faiss.ScalarQuantizer.RS_minmax
            sq.rangestat_arg = SQ8_MARGIN
        else:
            index = faiss.IndexHNSWFlat(self.dim, self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    # -- exact vectors (int8) ----------------------------------------------------------------
    def use_vector_source(self, source: VectorSource | None) -> None:
        """Where exact vectors come from (int8: re-scoring and retraining); None to forget it."""
        self._source = source

    @property
    def exact_scores(self) -> bool:  # type: ignore[override]
        return self.dtype != "int8" or self._source is not None

    def _own(self) -> None:
        source = self._source
        super()._own()
        self._source = source

    def _exact(self, slots: np.ndarray, graph: faiss.IndexHNSW | None = None) -> np.ndarray:
        """float32 vectors of these slots: from the source when it knows them, else decoded
        (from ``graph``, default the current one)."""
        graph = self._index if graph is None else graph
        x = graph.reconstruct_batch(slots) if slots.size else np.empty((0, self.dim), np.float32)
        if self._source is not None and slots.size and self.dtype == "int8":
            ids = self._slot_ids[slots]
            got, vecs = self._source(ids)
            got = np.asarray(got, dtype=np.int64)
            if got.size:
                order = np.argsort(ids, kind="stable")
                pos = np.searchsorted(ids[order], got)
                x[order[pos]] = np.asarray(vecs, dtype=np.float32)
        return x

    def _train(self, x: np.ndarray) -> None:
        if x.shape[0] > SQ8_TRAIN_MAX:
            x = x[np.sort(np.random.default_rng(0).choice(x.shape[0], SQ8_TRAIN_MAX, replace=False))]
        self._index.train(np.ascontiguousarray(x, dtype=np.float32))
        self._trained_on = int(x.shape[0])

    @property
    def n_tombstones(self) -> int:
        """Dead slots still in the graph."""
        return int(self._slot_ids.size - len(self))

    # -- hooks -------------------------------------------------------------------------------
    def _add(self, ids: np.ndarray, x: np.ndarray, **kw: Any) -> None:
        if self.dtype == "int8" and not self._index.is_trained:
            self._train(x)
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
        if (self.dtype == "int8" and self._trained_on < SQ8_TRAIN_ENOUGH
                and len(self) >= 4 * max(self._trained_on, 1)):
            self._rebuild(retrain=True)  # ranges from a few vectors: train them on all of them
        else:
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
        self._rebuild(retrain=False)

    def _rebuild(self, retrain: bool) -> None:
        """A new graph of the live vectors (int8: exact ones from the source when there is one,
        re-encoded with the old ranges, or with ranges trained again when ``retrain``)."""
        live = np.flatnonzero(self._slot_ids >= 0)
        new = self._new_graph()
        if self.dtype == "int8":
            if retrain:
                sample = live
                if live.size > SQ8_TRAIN_MAX:
                    sample = np.sort(np.random.default_rng(0).choice(live, SQ8_TRAIN_MAX, replace=False))
                new.train(self._exact(sample))
                self._trained_on = int(sample.size)
            else:  # the same ranges: decoded codes re-encode to themselves
                faiss.downcast_index(new.storage).sq.trained = \
                    faiss.downcast_index(self._index.storage).sq.trained
                new.is_trained = new.storage.is_trained = True
        old, self._index = self._index, new
        for sl in chunked(live.size, 50_000):
            x = self._exact(live[sl], old) if retrain else old.reconstruct_batch(live[sl])
            self._index.add(x)
        del old
        self._slot_ids = self._slot_ids[live]
        self._set_sorted(self._slot_ids, np.arange(live.size, dtype=np.int64))
        self._bitmap = None

    def _check_search(self, q: np.ndarray, k: int, **kw: Any) -> dict[str, Any]:
        ef = kw.get("ef_search")
        kf = kw.get("k_factor")
        rescore = kw.get("rescore", True)
        if not isinstance(rescore, bool):
            raise InvalidRequest(f"rescore must be true or false; got {rescore!r}")
        return {"ef_search": self.ef_search if ef is None else check_positive_int(ef, "ef_search"),
                "k_factor": self.k_factor if kf is None else check_k_factor(kf),
                "rescore": rescore}

    def _search(self, q: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.dtype != "int8" or not kw["rescore"]:
            return self._walk(q, k, kw["ef_search"])
        kk = min(len(self), max(k, math.ceil(k * kw["k_factor"])))
        scores, labels = self._walk(q, kk, kw["ef_search"])
        if self._source is None:  # the 8-bit scores (exact_scores is False)
            return top_k(scores, labels, k)
        return rescore(q, labels, self._source, k)

    def _walk(self, q: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersHNSW(efSearch=max(ef, k))
        if self.n_tombstones:
            if self._bitmap is None:
                self._bitmap = np.packbits(self._slot_ids >= 0, bitorder="little")
            sel = faiss.IDSelectorBitmap(self._slot_ids.size, faiss.swig_ptr(self._bitmap))
            params.sel = sel  # ``sel`` and ``self._bitmap`` stay alive for the call below
        scores, slots = self._index.search(q, k, params=params)
        labels = np.where(slots >= 0, self._slot_ids[slots.clip(min=0)], -1)
        return scores, labels

    def _state(self) -> dict[str, Any]:
        state = {"slots": int(self._slot_ids.size), "tombstones": self.n_tombstones}
        if self.dtype == "int8":
            state["trained_on"] = self._trained_on
        return state

    def _blobs(self) -> list[Blob]:
        return [Blob("graph", self._index), Blob("slot_ids", self._slot_ids)]

    def _restore(self, state: dict[str, Any], blobs: dict[str, Any]) -> None:
        self._index = blobs["graph"]
        self._slot_ids = blobs["slot_ids"]
        self._trained_on = int(state.get("trained_on", 0))
        live = np.flatnonzero(self._slot_ids >= 0)
        self._set_sorted(self._slot_ids[live], live)
