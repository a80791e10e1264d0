"""Binary hash codes: hashers (features -> packed codes) and Hamming indexes.

Importing this package registers every hasher (``lsh``, ``pcah``, ``itq``, ``sh``; the
trained ``wdht``, ``ws-dsh``, ``ws-hashnet``, ``idea``, ``idea-l``, ``idea-a``) and every
binary index backend (``binary-flat``, ``multi-index``, ``milvus``: a Milvus server,
pymilvus imported only when one is used).

It does not import torch: :mod:`cbir.hashing.weak` and :mod:`cbir.hashing.idea` are
torch-free at import time (their classes register here like the others) and import torch
inside ``fit`` / ``encode`` / ``load``, through :mod:`cbir.hashing.training` and
:mod:`cbir.hashing.losses`, the only modules that import torch at the top.
"""

from __future__ import annotations

from cbir.hashing import (  # noqa: F401  (registers the components)
    binary_index,
    idea,
    milvus_binary,
    unsupervised,
    weak,
)
from cbir.hashing.base import (
    FORMAT_VERSION,
    HASHERS,
    MAX_BITS,
    MIN_BITS,
    SHARED_SUPERVISION,
    Hasher,
    HasherBase,
    check_bits,
    code_size,
    create_hasher,
    hamming_distances,
    load_hasher,
    pack_bits,
    unpack_bits,
)
from cbir.hashing.binary_index import (
    BINARY_INDEXES,
    BinaryFlatIndex,
    BinaryIndex,
    MultiIndexHashing,
    create_binary_index,
    load_binary_index,
)
from cbir.hashing.unsupervised import ITQ, LSH, PCAH, SH, quantization_loss

__all__ = [
    "BINARY_INDEXES",
    "FORMAT_VERSION",
    "HASHERS",
    "ITQ",
    "LSH",
    "MAX_BITS",
    "MIN_BITS",
    "PCAH",
    "SH",
    "SHARED_SUPERVISION",
    "BinaryFlatIndex",
    "BinaryIndex",
    "Hasher",
    "HasherBase",
    "MultiIndexHashing",
    "check_bits",
    "code_size",
    "create_binary_index",
    "create_hasher",
    "hamming_distances",
    "load_binary_index",
    "load_hasher",
    "pack_bits",
    "quantization_loss",
    "unpack_bits",
]
