"""``exact``: brute-force inner-product search (FAISS IndexIDMap2 over IndexFlatIP).

Scans every vector per query: recall 1.0, O(n*dim) per query, 4*dim bytes per vector.
The ground truth the approximate backends are measured against.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from cbir.index.base import INDEXES, Blob, IndexBase


@INDEXES.register("exact")
class ExactIndex(IndexBase):
    """Exact search. ``ExactIndex(dim)``; no knobs."""

    name = "exact"

    def __init__(self, dim: int):
        super().__init__(dim)
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

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
