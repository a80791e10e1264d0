"""``ivf``: inverted-file search (FAISS IndexIVFFlat, or IndexIVFPQ with exact re-ranking).

Training policy (transparent to callers):

* Until there are ``min_points_per_list * nlist`` vectors (39 per list, FAISS's own
  minimum; for IVF-PQ also 39 * 2**pq_nbits for the codebooks) the vectors sit in an
  exact flat index and search is exact. With ``nlist=None`` (auto, ~4*sqrt(n)) that
  means exact scanning below ~24k vectors, where it is also fastest.
* The add() that crosses the threshold trains k-means (spherical, ``niter`` rounds, on a
  sample of ``train_points_per_list * nlist`` vectors) and moves everything into the IVF.
* With auto nlist, when the collection has grown ~4x since training (so the ideal nlist
  doubled) the next add() retrains on all vectors (needs ~2x memory for a moment). Not
  for IVF-PQ without refine, whose vectors cannot be recovered.

``nprobe`` (lists scanned per query) is the recall knob: a construction param and a
search keyword. IVF-PQ (``pq_m`` sub-quantizers of ``pq_nbits``) scans compact codes,
then, with ``refine=True``, re-ranks ``k_factor * k`` candidates with the exact vectors
(kept in a flat IndexIDMap2; so no memory is saved, only scan time). Adding an id that
exists replaces it (remove + add). ``dtype="float16"`` keeps the IVF-Flat and the exact
vectors as fp16 (IndexIVFScalarQuantizer without residuals): half the bytes, lossless for
vectors that are float16 already (a collection's are).
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from cbir.errors import InvalidRequest
from cbir.index.base import (
    INDEXES,
    Blob,
    IndexBase,
    auto_nlist,
    check_dtype,
    check_k_factor,
    check_positive_int,
    chunked,
    flat_vectors,
    new_flat,
    omp_threads,
    top_k,
)

_CHUNK = 65_536


@INDEXES.register("ivf")
class IVFIndex(IndexBase):
    """IVF-Flat (default) or IVF-PQ (``pq_m=...``); see the module docstring for the policy."""

    name = "ivf"
    _search_kw = frozenset({"nprobe", "k_factor"})

    def __init__(
        self,
        dim: int,
        nlist: int | None = None,
        nprobe: int = 16,
        pq_m: int | None = None,
        pq_nbits: int = 8,
        refine: bool = True,
        k_factor: float = 4.0,
        min_points_per_list: int = 39,
        train_points_per_list: int = 64,
        niter: int = 10,
        auto_retrain: bool = True,
        seed: int = 1234,
        dtype: str = "float32",
    ):
        super().__init__(dim)
        self.dtype = check_dtype(dtype)
        self.nlist = check_positive_int(nlist, "nlist", allow_none=True)
        self.nprobe = check_positive_int(nprobe, "nprobe")
        self.pq_m = check_positive_int(pq_m, "pq_m", allow_none=True)
        self.pq_nbits = check_positive_int(pq_nbits, "pq_nbits")
        if self.pq_m is not None and self.dim % self.pq_m:
            raise InvalidRequest(f"pq_m must divide dim={self.dim}; got pq_m={self.pq_m}")
        if not 1 <= self.pq_nbits <= 16:
            raise InvalidRequest(f"pq_nbits must be in 1..16; got {pq_nbits}")
        self.refine = bool(refine)
        self.k_factor = check_k_factor(k_factor)
        self.min_points_per_list = check_positive_int(min_points_per_list, "min_points_per_list")
        self.train_points_per_list = max(
            self.min_points_per_list,
            check_positive_int(train_points_per_list, "train_points_per_list"),
        )
        self.niter = check_positive_int(niter, "niter")
        self.auto_retrain = bool(auto_retrain)
        self.seed = int(seed)
        self.params = {
            "nlist": self.nlist, "nprobe": self.nprobe, "pq_m": self.pq_m,
            "pq_nbits": self.pq_nbits, "refine": self.refine, "k_factor": self.k_factor,
            "min_points_per_list": self.min_points_per_list,
            "train_points_per_list": self.train_points_per_list, "niter": self.niter,
            "auto_retrain": self.auto_retrain, "seed": self.seed, "dtype": self.dtype,
        }
        #: exact vectors: all of them before training; kept after it only for IVF-PQ + refine
        self._flat: faiss.IndexIDMap2 | None = self._new_flat()
        self._ivf: faiss.IndexIVF | None = None
        self._trained_nlist = 0

    # -- state -----------------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        """False while vectors are still scanned exactly (too few to train)."""
        return self._ivf is not None

    @property
    def current_nlist(self) -> int:
        """Lists of the trained IVF (0 before training)."""
        return self._trained_nlist

    def _new_flat(self) -> faiss.IndexIDMap2:
        return faiss.IndexIDMap2(new_flat(self.dim, self.dtype))

    def _keeps_flat(self) -> bool:
        return self.pq_m is not None and self.refine

    def _min_train(self, nlist: int) -> int:
        need = self.min_points_per_list * nlist
        if self.pq_m is not None:
            need = max(need, 39 * 2**self.pq_nbits)
        return need

    def _target_nlist(self, n: int) -> int:
        return self.nlist if self.nlist is not None else auto_nlist(n)

    # -- add / remove ------------------------------------------------------------------------
    def _add(self, ids: np.ndarray, x: np.ndarray, **kw: Any) -> None:
        n_after = len(self) + len(x)
        if self._ivf is None:
            nlist = self._target_nlist(n_after)
            if n_after >= self._min_train(nlist):
                self._train(nlist, ids, x)
            else:
                self._flat.add_with_ids(x, ids)
            return
        if (
            self.nlist is None
            and self.auto_retrain
            and (self.pq_m is None or self.refine)
            and auto_nlist(n_after) >= 2 * self._trained_nlist
        ):
            self._train(auto_nlist(n_after), ids, x)
            return
        for sl in chunked(len(x), _CHUNK):
            self._ivf.add_with_ids(x[sl], ids[sl])
        if self._flat is not None:
            self._flat.add_with_ids(x, ids)

    def _stored(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, dim) float32 or float16) of everything stored (maybe
        views; float16 when stored so: callers convert chunk by chunk)."""
        if self._flat is not None:
            ids = faiss.vector_to_array(self._flat.id_map)
            return ids, flat_vectors(self._flat.index)
        # IVF-Flat codes are the raw vectors (fp16 SQ without residuals: raw float16 ones):
        # gather them list by list.
        ivf, invlists = self._ivf, self._ivf.invlists
        dtype = np.float16 if self.dtype == "float16" else np.float32
        vecs = np.empty((ivf.ntotal, self.dim), dtype=dtype)
        ids = np.empty(ivf.ntotal, dtype=np.int64)
        at = 0
        for lst in range(ivf.nlist):
            size = invlists.list_size(lst)
            if not size:
                continue
            ids[at : at + size] = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
            codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * ivf.code_size)
            vecs[at : at + size] = codes.view(dtype).reshape(size, self.dim)
            at += size
        return ids, vecs

    def _train(self, nlist: int, new_ids: np.ndarray, new_x: np.ndarray) -> None:
        """(Re)build the IVF with ``nlist`` lists from stored + new vectors."""
        old_ids, old_x = self._stored() if len(self) else (new_ids[:0], new_x[:0])
        n_old, n_all = len(old_ids), len(old_ids) + len(new_ids)
        rng = np.random.default_rng(self.seed)
        n_train = min(n_all, self.train_points_per_list * nlist)
        if self.pq_m is not None:
            n_train = min(n_all, max(n_train, 64 * 2**self.pq_nbits))
        pick = np.sort(rng.choice(n_all, size=n_train, replace=False))
        sample = np.concatenate([old_x[pick[pick < n_old]].astype(np.float32),
                                 new_x[pick[pick >= n_old] - n_old]])

        quantizer = faiss.IndexFlatIP(self.dim)
        if self.pq_m is None and self.dtype == "float16":
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist,
                                                faiss.ScalarQuantizer.QT_fp16,
                                                faiss.METRIC_INNER_PRODUCT, False)
        elif self.pq_m is None:
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFPQ(
                quantizer, self.dim, nlist, self.pq_m, self.pq_nbits, faiss.METRIC_INNER_PRODUCT
            )
        ivf.own_fields = True
        quantizer.this.disown()  # owned by ivf now
        cp = faiss.ClusteringParameters()
        cp.niter = self.niter
        cp.seed = self.seed
        cp.spherical = True  # unit-norm centroids: IP assignment is then cosine
        cp.min_points_per_centroid = 1  # our threshold already checked the sample size
        cp.max_points_per_centroid = 1 << 30  # we sampled already
        faiss.Clustering(self.dim, nlist, cp).train(sample, quantizer)
        # Only the PQ codebooks are left to train (IVF skips a trained quantizer): dim/pq_m-d
        # k-means with many tiny parallel loops, where OpenMP threads lose badly as soon
        # as the CPU is shared (2 cores, 100k x 1280: 38 s on 1 thread, 726 s on 2).
        with omp_threads(1):
            ivf.train(sample)
        del sample

        self._ivf = None  # drop the old IVF (if retraining) before filling the new one
        for sl in chunked(n_old, _CHUNK):
            ivf.add_with_ids(np.ascontiguousarray(old_x[sl], dtype=np.float32), old_ids[sl])
        for sl in chunked(len(new_ids), _CHUNK):
            ivf.add_with_ids(new_x[sl], new_ids[sl])
        del old_x
        if self._keeps_flat():
            self._flat.add_with_ids(new_x, new_ids)
        else:
            self._flat = None
        self._ivf = ivf
        self._trained_nlist = nlist

    def _remove(self, ids: np.ndarray) -> None:
        if self._ivf is not None:
            self._ivf.remove_ids(ids)
        if self._flat is not None:
            self._flat.remove_ids(ids)

    # -- search --------------------------------------------------------------------------------
    def _check_search(self, q: np.ndarray, k: int, **kw: Any) -> dict[str, Any]:
        nprobe = kw.get("nprobe")
        k_factor = kw.get("k_factor")
        return {
            "nprobe": self.nprobe if nprobe is None else check_positive_int(nprobe, "nprobe"),
            "k_factor": self.k_factor if k_factor is None else check_k_factor(k_factor),
        }

    def _search(self, q: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        if self._ivf is None:
            return self._flat.search(q, k)
        params = faiss.SearchParametersIVF(nprobe=min(kw["nprobe"], self._trained_nlist))
        if not self._keeps_flat():
            return self._ivf.search(q, k, params=params)
        kf = min(len(self), max(k, math.ceil(k * kw["k_factor"])))
        _, cand = self._ivf.search(q, kf, params=params)
        valid = cand >= 0
        scores = np.full(cand.shape, -np.inf, dtype=np.float32)
        if valid.any():
            vecs = self._flat.reconstruct_batch(cand[valid])
            rows = np.nonzero(valid)[0]
            scores[valid] = np.einsum("ij,ij->i", vecs, q[rows])
        return top_k(scores, cand, k)

    # -- persistence -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"trained_nlist": self._trained_nlist}

    def _blobs(self) -> list[Blob]:
        blobs = []
        if self._flat is not None:
            blobs.append(Blob("flat", self._flat))
        if self._ivf is not None:
            blobs.append(Blob("ivf", self._ivf))
        return blobs

    def _restore(self, state: dict[str, Any], blobs: dict[str, Any]) -> None:
        self._flat = blobs.get("flat")
        self._ivf = blobs.get("ivf")
        self._trained_nlist = int(state.get("trained_nlist", 0))
