"""The Hasher protocol, its registry, bit packing and Hamming distances.

A hasher maps float features (n, d) float32 to ``bits`` binary digits per item, packed
eight to a byte with :func:`numpy.packbits`:

* **Bit order** (``bitorder="big"``, NumPy's default): bit ``j`` of a code (``j`` = 0 ..
  bits-1, the ``j``-th hash function) is byte ``j // 8``, mask ``0x80 >> (j % 8)``. When
  ``bits`` is not a multiple of 8 the unused low bits of the last byte are 0.
* A bit is 1 when the hasher's real-valued projection is ``> 0`` (see
  :meth:`HasherBase.project`).

``fit(features, **supervision)`` takes optional supervision by keyword. Every hasher
accepts the shared names in :data:`SHARED_SUPERVISION` (and ignores those it does not
use, so one pipeline can call every hasher the same way); any other keyword raises
InvalidRequest. Unsupervised hashers use none; weakly supervised ones (tags, tag
vectors) declare theirs in ``supervision``.

File format (``FORMAT_VERSION`` 1): one ``.safetensors`` file. The arrays (projection
matrices, means...) are its tensors; a JSON document in the safetensors metadata under
the key ``"cbir.hasher"`` holds ``format``, ``format_version``, ``name``, ``bits``,
``dim``, ``params`` (``create_hasher(name, bits, **params)`` rebuilds the unfitted
hasher) and ``state`` (fitted scalars). No pickle. The safetensors header is plain JSON
at the start of the file: ``head -c 2000 hasher.safetensors`` shows it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np

from cbir.atomic import atomic_write_bytes
from cbir.errors import BackendUnavailable, IndexMismatch, InvalidRequest
from cbir.registry import Registry

FORMAT_VERSION = 1
FILE_FORMAT = "cbir-hasher"
METADATA_KEY = "cbir.hasher"
MIN_BITS = 8
MAX_BITS = 128
#: supervision keywords every hasher's fit() accepts (and may ignore)
SHARED_SUPERVISION = frozenset({"labels", "tags", "tag_vectors", "similarity"})
#: rows per chunk when encoding, so memory stays bounded for millions of features
ENCODE_CHUNK = 65_536

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
#: elements (query x database x 64-bit word) per block in hamming_distances
_BLOCK_ELEMS = 1 << 22
#: below this many multiply-adds, fit() runs BLAS/OpenMP single-threaded (see small_problem_threads)
SMALL_FIT_FLOPS = 2e9

__all__ = [
    "FORMAT_VERSION",
    "HASHERS",
    "MAX_BITS",
    "MIN_BITS",
    "SHARED_SUPERVISION",
    "Hasher",
    "HasherBase",
    "as_codes",
    "as_features",
    "check_bits",
    "code_size",
    "create_hasher",
    "hamming_distances",
    "load_hasher",
    "pack_bits",
    "read_hasher_header",
    "unpack_bits",
]


# ----------------------------------------------------------------------------- validation


def check_bits(bits: Any) -> int:
    """Validate a code length: an integer in [MIN_BITS, MAX_BITS]; raise InvalidRequest otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not (
        MIN_BITS <= bits <= MAX_BITS
    ):
        raise InvalidRequest(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}; got {bits!r}")
    return int(bits)


def code_size(bits: int) -> int:
    """Bytes per packed code: ceil(bits / 8)."""
    return (int(bits) + 7) // 8


def as_features(x: Any, dim: int | None = None, what: str = "features") -> np.ndarray:
    """Check and convert to C-contiguous float32 (n, d), finite; raise InvalidRequest otherwise.

    dim: the expected d (a fitted hasher's); a different d raises IndexMismatch.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        hint = " (one vector? pass x[None, :])" if arr.ndim == 1 else ""
        raise InvalidRequest(f"{what} must be a 2-D (n, d) float32 array; got shape {arr.shape}{hint}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidRequest(f"{what} must be float32; got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise IndexMismatch(
            f"{what} have dimension {arr.shape[1]} but the hasher was fitted on {dim}-d features; "
            "use features from the same extractor, or fit a new hasher"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise InvalidRequest(f"{what} contain NaN or infinity")
    return arr


def _padding_mask(bits: int) -> np.uint8:
    """Mask of the used bits of the last byte of a ``bits``-bit code."""
    rem = bits % 8
    return np.uint8(0xFF if rem == 0 else (0xFF << (8 - rem)) & 0xFF)


def as_codes(codes: Any, bits: int, what: str = "codes") -> np.ndarray:
    """Check packed codes: uint8 (n, ceil(bits/8)); returns a C-contiguous copy-or-view.

    Unused padding bits (bits not a multiple of 8) are cleared so they never count in a
    Hamming distance. Raises InvalidRequest for another dtype, rank or width.
    """
    arr = np.asarray(codes)
    cs = code_size(bits)
    if arr.dtype == np.bool_:
        raise InvalidRequest(f"{what} must be packed uint8; pack a bool array with cbir.hashing.pack_bits")
    if arr.dtype != np.uint8:
        raise InvalidRequest(f"{what} must be packed uint8 (np.packbits); got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != cs:
        hint = " (one code? pass c[None, :])" if arr.ndim == 1 and arr.shape[0] == cs else ""
        raise InvalidRequest(
            f"{what} must have shape (n, {cs}) for {bits}-bit codes; got {arr.shape}{hint}"
        )
    arr = np.ascontiguousarray(arr)
    mask = _padding_mask(bits)
    if mask != 0xFF and arr.size and np.any(arr[:, -1] & ~mask):
        arr = arr.copy()
        arr[:, -1] &= mask
    return arr


# ----------------------------------------------------------------------------- bits


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool (n, b) -> packed uint8 (n, ceil(b/8)), big bit order (see the module docstring)."""
    arr = np.asarray(bits)
    if arr.ndim != 2:
        raise InvalidRequest(f"bits must be a 2-D (n, b) bool array; got shape {arr.shape}")
    return np.packbits(arr.astype(bool, copy=False), axis=1, bitorder="big")


def unpack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packed uint8 (n, ceil(bits/8)) -> bool (n, bits); inverse of :func:`pack_bits`."""
    arr = np.asarray(codes)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != code_size(bits):
        raise InvalidRequest(
            f"codes must be uint8 of shape (n, {code_size(bits)}) for {bits} bits; "
            f"got {arr.dtype} {arr.shape}"
        )
    return np.unpackbits(arr, axis=1, count=bits, bitorder="big").astype(bool)


def as_words(codes: np.ndarray) -> np.ndarray:
    """uint8 (n, c) -> uint64 (n, ceil(c/8)) zero-padded, for popcount (byte order irrelevant)."""
    n, c = codes.shape
    w = (c + 7) // 8
    if c == 8 * w:
        return np.ascontiguousarray(codes).view(np.uint64)
    out = np.zeros((n, 8 * w), dtype=np.uint8)
    out[:, :c] = codes
    return out.view(np.uint64)


def popcount(x: np.ndarray) -> np.ndarray:
    """Per-element popcount of an unsigned integer array (uint8 result)."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(x)
    b = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, x.dtype.itemsize)
    return _POPCOUNT8[b].sum(axis=-1, dtype=np.uint8)


def hamming_distances(q_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances: packed uint8 (nq, c) x (n, c) -> int32 (nq, n).

    Vectorised XOR + popcount (``np.bitwise_count`` on 64-bit words with NumPy 2, a byte
    lookup table otherwise), in blocks of about 4M word pairs so memory stays bounded.
    """
    q = np.asarray(q_codes)
    db = np.asarray(db_codes)
    if q.dtype != np.uint8 or db.dtype != np.uint8 or q.ndim != 2 or db.ndim != 2:
        raise InvalidRequest(
            f"codes must be 2-D packed uint8 arrays; got {q.dtype} {q.shape} and {db.dtype} {db.shape}"
        )
    if q.shape[1] != db.shape[1]:
        raise InvalidRequest(f"query codes have {q.shape[1]} bytes, database codes {db.shape[1]}")
    qw, dw = as_words(q), as_words(db)
    nq, n, w = qw.shape[0], dw.shape[0], qw.shape[1]
    out = np.empty((nq, n), dtype=np.int32)
    if nq == 0 or n == 0:
        return out
    bn = max(1, min(n, _BLOCK_ELEMS // w))
    bq = max(1, _BLOCK_ELEMS // (w * bn))
    for i in range(0, nq, bq):
        qi = qw[i : i + bq]
        for j in range(0, n, bn):
            x = qi[:, None, :] ^ dw[None, j : j + bn, :]
            if w == 1:
                out[i : i + bq, j : j + bn] = popcount(x[:, :, 0])
            else:
                out[i : i + bq, j : j + bn] = popcount(x).sum(axis=2, dtype=np.int32)
    return out


@contextlib.contextmanager
def small_problem_threads(flops: float) -> Iterator[None]:
    """Run BLAS and OpenMP single-threaded for problems under SMALL_FIT_FLOPS multiply-adds.

    Many small BLAS/LAPACK calls (ITQ's 50 rotations, a 64x64 SVD) get 10-100x slower
    with several threads on a busy 2-core machine, worse when FAISS's OpenMP threads are
    spinning. Needs ``threadpoolctl`` (optional); without it this does nothing.
    """
    if flops >= SMALL_FIT_FLOPS:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        yield
        return
    with threadpool_limits(limits=1):
        yield


# ----------------------------------------------------------------------------- protocol


@runtime_checkable
class Hasher(Protocol):
    #: registry name, e.g. "itq"
    name: str
    #: code length in bits (MIN_BITS..MAX_BITS)
    bits: int
    #: JSON-serialisable construction params; ``create_hasher(name, bits, **params)`` rebuilds it
    params: dict[str, Any]

    def fit(self, features: np.ndarray, **supervision: Any) -> Self:
        """Learn the hash functions from (n, d) float32 features (and optional supervision)."""
        ...

    def encode(self, features: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> packed codes uint8 (n, ceil(bits/8)), big bit order."""
        ...

    def save(self, path: Path) -> None:
        """Write the fitted hasher atomically to one .safetensors file."""
        ...

    @classmethod
    def load(cls, path: Path) -> Hasher:
        """Read a hasher written by ``save``."""
        ...


HASHERS: Registry[Hasher] = Registry("hasher")


def _import_safetensors() -> Any:
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:  # pragma: no cover - depends on the environment
        raise BackendUnavailable(
            "saving and loading hashers needs safetensors: pip install safetensors"
        ) from None
    return safetensors




def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header JSON, arrays) of a hasher file; raises IndexMismatch for anything else."""
    st = _import_safetensors()
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such hasher file")
    try:
        with st.safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types
        raise IndexMismatch(f"{path}: not a readable safetensors file ({e})") from None
    try:
        header = json.loads(meta[METADATA_KEY])
    except (KeyError, ValueError):
        raise IndexMismatch(f"{path}: not a cbir hasher file (no {METADATA_KEY!r} metadata)") from None
    if header.get("format") != FILE_FORMAT:
        raise IndexMismatch(f"{path}: not a cbir hasher file (format {header.get('format')!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise IndexMismatch(
            f"{path}: hasher format version {header.get('format_version')} is not supported "
            f"(this cbir reads version {FORMAT_VERSION}); fit and save the hasher again"
        )
    return header, arrays


def read_hasher_header(path: Path) -> dict[str, Any]:
    """The JSON header of a hasher file (name, bits, dim, params, state, format version)."""
    return _read_file(Path(path))[0]


class HasherBase:
    """Shared plumbing: validation, chunked encoding, save/load.

    Subclasses set ``name`` (and ``supervision``, the fit keywords they use) and implement
    ``_fit(x, **supervision)``, ``_project(x) -> (n, bits) float32``, ``_arrays()`` and
    ``_restore(arrays, state)``; ``_state()`` returns fitted JSON scalars.
    """

    name: ClassVar[str] = ""
    #: fit() keywords this hasher uses, besides the ignorable SHARED_SUPERVISION
    supervision: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, bits: int, *, seed: int = 0):
        self.bits = check_bits(bits)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise InvalidRequest(f"seed must be a non-negative integer; got {seed!r}")
        self.seed = int(seed)
        self.params: dict[str, Any] = {"seed": self.seed}
        #: feature dimension, set by fit()
        self.dim: int | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits}, dim={self.dim}, params={self.params})"

    @property
    def code_size(self) -> int:
        return code_size(self.bits)

    @property
    def fitted(self) -> bool:
        return self.dim is not None

    # -- public API --------------------------------------------------------------------
    def fit(self, features: np.ndarray, **supervision: Any) -> Self:
        """Learn from (n, d) float32 features, n >= 2; returns self."""
        unknown = sorted(set(supervision) - self.supervision - SHARED_SUPERVISION)
        if unknown:
            allowed = sorted(self.supervision | SHARED_SUPERVISION)
            raise InvalidRequest(f"{self.name}.fit() got unknown keyword(s) {unknown}; allowed: {allowed}")
        x = as_features(features)
        if x.shape[0] < 2:
            raise InvalidRequest(f"{self.name} needs at least 2 training features; got {x.shape[0]}")
        used = {k: v for k, v in supervision.items() if k in self.supervision}
        n, d = x.shape
        with small_problem_threads(float(n) * d * max(d, self.bits)):
            self._fit(x, **used)
        self.dim = int(x.shape[1])
        return self

    def project(self, features: np.ndarray) -> np.ndarray:
        """Real-valued codes (n, d) -> (n, bits) float32; bit j is 1 where column j is > 0."""
        x = self._check_fitted(features)
        out = np.empty((x.shape[0], self.bits), dtype=np.float32)
        for i in range(0, x.shape[0], ENCODE_CHUNK):
            out[i : i + ENCODE_CHUNK] = self._project(x[i : i + ENCODE_CHUNK])
        return out

    def encode(self, features: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> packed uint8 (n, ceil(bits/8)), big bit order."""
        x = self._check_fitted(features)
        out = np.empty((x.shape[0], self.code_size), dtype=np.uint8)
        for i in range(0, x.shape[0], ENCODE_CHUNK):
            out[i : i + ENCODE_CHUNK] = pack_bits(self._project(x[i : i + ENCODE_CHUNK]) > 0)
        return out

    def save(self, path: Path) -> None:
        if not self.fitted:
            raise InvalidRequest(f"{self.name} hasher is not fitted; call fit(features) before save()")
        st = _import_safetensors()
        header = {
            "format": FILE_FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "bits": self.bits,
            "dim": self.dim,
            "params": self.params,
            "state": self._state(),
            "bit_order": "big (np.packbits default): bit j -> byte j//8, mask 0x80 >> j%8",
        }
        arrays = {k: np.ascontiguousarray(v) for k, v in self._arrays().items()}
        data = st.numpy.save(arrays, metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})
        atomic_write_bytes(Path(path), data)

    @classmethod
    def load(cls, path: Path) -> Self:
        header, arrays = _read_file(Path(path))
        if header.get("name") != cls.name:
            raise IndexMismatch(
                f"{path}: holds a {header.get('name')!r} hasher, not {cls.name!r}; "
                "use cbir.hashing.load_hasher to load any hasher"
            )
        obj = cls(bits=header["bits"], **header.get("params", {}))
        obj._restore(arrays, header.get("state", {}))
        obj.dim = int(header["dim"])
        return obj

    # -- helpers and hooks ---------------------------------------------------------------
    def _check_fitted(self, features: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise InvalidRequest(f"{self.name} hasher is not fitted; call fit(features) first")
        return as_features(features, dim=self.dim)

    def _fit(self, x: np.ndarray, **supervision: Any) -> None:
        raise NotImplementedError

    def _project(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {}


# ----------------------------------------------------------------------------- factories


def create_hasher(name: str, bits: int, **params: Any) -> Hasher:
    """Build an unfitted hasher ``name`` with ``bits`` bits (unknown names list the known ones)."""
    factory = HASHERS.get(name)
    try:
        inspect.signature(factory).bind(bits=bits, **params)
    except TypeError as e:
        raise InvalidRequest(f"hasher {name!r}: bad parameters {sorted(params)} ({e})") from None
    return HASHERS.create(name, bits=bits, **params)


def load_hasher(path: Path) -> Hasher:
    """Load any hasher written by ``Hasher.save``; the file names its method."""
    header = read_hasher_header(Path(path))
    name = header.get("name")
    if not isinstance(name, str):
        raise IndexMismatch(f"{path}: hasher header names no method")
    return HASHERS.get(name).load(Path(path))
