"""``exact``: brute-force inner-product search (FAISS IndexIDMap2 over IndexFlatIP).

Scans every vector per query: recall 1.0, O(n*dim) per query, 4*dim bytes per vector
(``dtype="float16"``: 2*dim, exact for vectors that are float16 already, as a
collection's are). The ground truth the approximate backends are measured against.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from cbir.index.base import INDEXES, Blob, IndexBase, check_dtype, new_flat


@INDEXES.register("exact")
class ExactIndex(IndexBase):
    """Exact search. ``ExactIndex(dim, dtype="float32")``; ``dtype`` is how vectors are kept."""

    name = "exact"

    def __init__(self, dim: int, dtype: str = "float32"):
        super().__init__(dim)
        self.dtype = check_dtype(dtype)
        self.params = {"dtype": self.dtype}
        self._index = faiss.IndexIDMap2(new_flat(self.dim, self.dtype))

    def _add(self, ids: np.ndarray, x: np.ndarray, **kw: Any) -> None:
        self._index.add_with_ids(x, ids)

    def _remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(ids)

    def _search(self, q: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(q, k)

    def _blobs(self) -> list[Blob]:
        return [Blob("index", self._index)]

    def _restore(self, state: dict[str, Any], blobs: dict[str, Any]) -> None:
        self._index = blobs["index"]
