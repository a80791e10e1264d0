"""Vector indexes: protocol, registry and FAISS backends."""

from cbir.index.base import INDEXES, VectorIndex

__all__ = ["INDEXES", "VectorIndex"]
