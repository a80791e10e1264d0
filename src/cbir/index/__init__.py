"""Vector indexes: protocol, registry, FAISS backends, and factories.

Importing this package registers every backend: ``exact``, ``ivf``, ``hnsw``,
``class-partitioned``, ``milvus`` (a Milvus server; pymilvus is imported only when one is used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cbir.errors import InvalidRequest
from cbir.index import exact, hnsw, ivf, milvus, partitioned  # noqa: F401  (registers the backends)
from cbir.index.base import FORMAT_VERSION, INDEXES, IndexBase, VectorIndex, read_index_header
from cbir.index.exact import ExactIndex
from cbir.index.hnsw import HNSWIndex
from cbir.index.ivf import IVFIndex
from cbir.index.partitioned import ClassPartitionedIndex

__all__ = [
    "FORMAT_VERSION",
    "INDEXES",
    "ClassPartitionedIndex",
    "ExactIndex",
    "HNSWIndex",
    "IVFIndex",
    "VectorIndex",
    "choose_index",
    "create_index",
    "load_index",
]

#: below this many vectors ``choose_index`` picks exact search (see its docstring)
EXACT_MAX = 20_000


def create_index(name: str, dim: int, **params: Any) -> VectorIndex:
    """Build an empty index of backend ``name`` for ``dim``-d vectors (unknown names list the known ones)."""
    return INDEXES.create(name, dim=dim, **params)


def load_index(path: Path, *, mmap: bool = False) -> VectorIndex:
    """Load any index written by ``VectorIndex.save``; the file names its backend.

    ``mmap=True`` memory-maps the file when the backend can (those built on IndexBase): it
    loads in milliseconds and costs RAM only for the pages searches touch; the first change
    re-reads it into memory. Other backends load as usual.
    """
    header = read_index_header(Path(path))
    backend = header.get("backend")
    if not isinstance(backend, str):
        raise InvalidRequest(f"{path}: index header names no backend")
    cls = INDEXES.get(backend)
    if mmap and isinstance(cls, type) and issubclass(cls, IndexBase):
        return cls.load(Path(path), mmap=True)
    return cls.load(Path(path))


def choose_index(n: int) -> str:
    """Backend for a collection of ``n`` vectors: "exact" below EXACT_MAX (20k), else "hnsw".

    From bench/bench_index.py (1280-d, 2 cores shared with other jobs, one query at a time):
    exact costs ~0.29 us per vector per query (p50 2.9 ms at 10k, 29 ms at 100k), so it
    stays under ~6 ms up to 20k, with recall 1, no build and real deletes. Above that
    HNSW (M=32, ef_search=96) gives p50 0.5-0.8 ms and recall@10 0.98-1.0 from 100k to
    1M; IVF-Flat (nprobe=16) reached 0.98-0.995 but 2.6 ms p50 at 1M, built no faster
    (~15 min at 1M under load), and must retrain as the collection grows. Pick "ivf"
    by hand for collections with many deletions (HNSW tombstones them and rebuilds at 25 %).
    "class-partitioned" is never chosen: it needs predicted classes and loses recall.
    """
    if n < 0:
        raise InvalidRequest(f"n must be >= 0; got {n}")
    return "exact" if n < EXACT_MAX else "hnsw"
