"""Binary hash codes: hashers (features -> packed codes) and Hamming indexes.

Importing this package registers every hasher (``lsh``, ``pcah``, ``itq``, ``sh``) and
every binary index backend (``binary-flat``, ``multi-index``).
"""

from __future__ import annotations

from cbir.hashing import binary_index, unsupervised  # noqa: F401  (registers the components)
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
