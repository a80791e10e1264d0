"""The VectorIndex protocol and its registry.

Every backend stores (id, vector) pairs where ids are int64 catalog row ids (stable:
the catalog never reuses an id), searches by inner product on L2-normalised vectors,
and saves/loads itself to one file. The contract suite in tests/contract runs over
every registered backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cbir.registry import Registry


@runtime_checkable
class VectorIndex(Protocol):
    #: registry name, e.g. "exact"
    name: str
    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray, **kw: Any) -> None:
        """Add int64 ids (n,) with float32 vectors (n, dim). Adding an id already present replaces it."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; unknown ids are ignored. Returns how many were removed."""
        ...

    def search(self, queries: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        """(nq, dim) float32 -> (scores (nq, k) float32 inner products, ids (nq, k) int64).

        Rows are sorted best first; missing results are padded with id -1 and score -inf.
        """
        ...

    def ids(self) -> np.ndarray:
        """All ids present, int64, sorted."""
        ...

    def save(self, path: Path) -> None:
        """Write the index atomically (temp file + rename) to ``path``."""
        ...


INDEXES: Registry[VectorIndex] = Registry("index")
