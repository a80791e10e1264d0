"""The VectorIndex protocol, its registry, and what every backend shares.

Every backend stores (id, vector) pairs where ids are int64 catalog row ids (stable:
the catalog never reuses an id), searches by inner product on L2-normalised vectors,
and saves/loads itself to one self-describing file. The contract suite in
tests/contract runs over every registered backend.

File format (``FORMAT_VERSION`` 1), one file per index::

    MAGIC (8 bytes) | u64 header length | header JSON (utf-8) | blob 0 | blob 1 | ...
    blob = u64 byte length | bytes   (a FAISS index, or a raw little-endian array)

The header names the backend, dim, construction params, format version, the FAISS
version that wrote it and, for every blob, its name, kind, dtype and shape.
``head -c 4096 file`` shows it. FAISS indexes are streamed to and from the file, so
saving a 5 GB index does not need another 5 GB of RAM.

Loading with ``mmap=True`` maps the file read-only instead of reading it: arrays become
views of the mapping and FAISS blobs are read through a ``ZeroCopyIOReader``, so their
vectors, codes, inverted lists and HNSW links stay in the page cache and only the pages a
search touches count (a cold 1M-image CLI search no longer reads 5 GB). FAISS aborts
the process on any write to such a view, so a mapped index is read-only: the first
``add``/``remove`` that changes something first re-reads it (owned) from the same open
file, which also survives the path being replaced meanwhile.
"""

from __future__ import annotations

import io
import json
import math
import mmap as _mmap
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import faiss
import numpy as np

from cbir.atomic import atomic_open
from cbir.errors import IndexMismatch, InvalidRequest
from cbir.registry import Registry

FORMAT_VERSION = 1
MAGIC = b"CBIRIDX\n"
#: keyword hints every backend accepts and may ignore, so a caller can always pass them
SHARED_ADD_HINTS = frozenset({"classes"})
SHARED_SEARCH_HINTS = frozenset({"query_probs"})
#: exact vectors by id, for backends that keep only approximate ones (``hnsw`` with
#: ``dtype="int8"``): ``source(ids)`` -> (ids found, float32 (n, dim) vectors); ids it does not
#: know are left out. A collection passes its catalog's float16 features (``Catalog.features``).
VectorSource = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@runtime_checkable
class VectorIndex(Protocol):
    #: registry name, e.g. "exact"
    name: str
    dim: int
    #: JSON-serialisable construction params; ``create_index(name, dim, **params)`` rebuilds it
    params: dict[str, Any]

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray, **kw: Any) -> None:
        """Add int64 ids (n,) with float32 vectors (n, dim). Adding an id already present replaces it.

        Hints a backend does not use (``classes``) are ignored; unknown keywords raise
        InvalidRequest.
        """
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; unknown ids are ignored. Returns how many were removed."""
        ...

    def search(self, queries: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        """(nq, dim) float32 -> (scores (nq, k) float32 inner products, ids (nq, k) int64).

        Rows are sorted best first; missing results are padded with id -1 and score -inf.
        Hints a backend does not use (``query_probs``) are ignored; unknown keywords raise.
        """
        ...

    def ids(self) -> np.ndarray:
        """All ids present, int64, sorted."""
        ...

    def save(self, path: Path) -> None:
        """Write the index atomically (temp file + rename) to ``path``."""
        ...

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Read an index written by ``save``; raises IndexMismatch for another backend or format."""
        ...


INDEXES: Registry[VectorIndex] = Registry("index")


#: searches of at most this many queries run FAISS on one OpenMP thread (see omp_threads)
SINGLE_THREAD_MAX_QUERIES = 1


@contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """Run FAISS with ``n`` OpenMP threads inside the block (None: leave as is).

    Why: one query cannot use FAISS's threads (HNSW and IVF parallelise over queries)
    but still pays an OpenMP barrier, and with the CPU shared by another process that
    barrier cost a lot (2 cores, bench/bench_index.py: HNSW p99 4.9 -> 0.9 ms, exact
    10k p50 24 -> 2.7 ms). The setting is per OS thread in OpenMP and is restored on
    exit, so other threads and later batch calls keep their parallelism.
    """
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


# ----------------------------------------------------------------------------- validation


def as_vectors(x: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """Check and convert to C-contiguous float32 (n, dim); raise InvalidRequest otherwise."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != dim:
        hint = " (one vector? pass x[None, :])" if arr.ndim == 1 and arr.shape[0] == dim else ""
        raise InvalidRequest(
            f"{what} must be a 2-D array of shape (n, {dim}); got shape {arr.shape}{hint}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidRequest(f"{what} must be float32; got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise InvalidRequest(f"{what} contain NaN or infinity")
    return arr


def as_ids(ids: Any, n: int) -> np.ndarray:
    """Check and convert to int64 (n,): non-negative, unique; raise InvalidRequest otherwise."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidRequest(f"ids must be a 1-D array of {n} integers; got shape {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidRequest(f"ids must be integers (int64 catalog row ids); got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if n and arr.min() < 0:
        raise InvalidRequest("ids must be >= 0 (-1 marks padding in search results)")
    if n > 1 and np.unique(arr).size != n:
        raise InvalidRequest("ids must be unique within one add() call")
    return arr


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidRequest(f"k must be a positive integer; got {k!r}")
    return int(k)


def reject_unknown(kw: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raise InvalidRequest naming keywords that are neither allowed nor shared hints."""
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise InvalidRequest(
            f"{where} got unknown keyword(s) {unknown}; allowed: {sorted(set(allowed))}"
        )


# ----------------------------------------------------------------------------- results


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (nq, k) float32 all -inf, ids (nq, k) int64 all -1)."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def pad_result(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen (nq, kk<=k) results to (nq, k); any id -1 gets score -inf."""
    out_s, out_i = empty_result(scores.shape[0], k)
    kk = scores.shape[1]
    out_s[:, :kk] = scores
    out_i[:, :kk] = labels
    out_s[out_i < 0] = -np.inf
    return out_s, out_i


def top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of (nq, m) candidates per row (score descending), padded to (nq, k)."""
    scores = np.where(labels < 0, -np.inf, scores).astype(np.float32)
    m = scores.shape[1]
    if m > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        labels = np.take_along_axis(labels, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return pad_result(
        np.take_along_axis(scores, order, axis=1), np.take_along_axis(labels, order, axis=1), k
    )


def rescore(q: np.ndarray, cand: np.ndarray, source: VectorSource, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of candidate ids (nq, m) by inner product with the vectors ``source`` gives.

    One ``source`` call for the batch's distinct ids; a candidate it does not know (removed
    meanwhile, or a damaged row) is dropped (id -1, score -inf).
    """
    valid = cand >= 0
    uniq = np.unique(cand[valid])
    got, vecs = source(uniq) if uniq.size else (np.empty(0, np.int64), np.empty((0, q.shape[1])))
    got = np.asarray(got, dtype=np.int64)
    order = np.argsort(got, kind="stable")
    got, vecs = got[order], np.asarray(vecs, dtype=np.float32)[order]
    scores = np.full(cand.shape, -np.inf, dtype=np.float32)
    if got.size:
        pos = np.searchsorted(got, cand.clip(min=0)).clip(max=got.size - 1)
        known = valid & (got[pos] == cand)
        rows = np.nonzero(known)[0]
        scores[known] = np.einsum("ij,ij->i", vecs[pos[known]], q[rows])
        cand = np.where(known, cand, -1)
    else:
        cand = np.full(cand.shape, -1, dtype=np.int64)
    return top_k(scores, cand, k)


def isin_sorted(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Boolean (len(ids),): which ids occur in the sorted int64 array ``sorted_ids``."""
    if sorted_ids.size == 0 or ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    pos = np.searchsorted(sorted_ids, ids).clip(max=sorted_ids.size - 1)
    return sorted_ids[pos] == ids


def flat_vectors(index: faiss.Index) -> np.ndarray:
    """(ntotal, d) vectors of an IndexFlat (a zero-copy float32 view, valid until it changes)
    or of an fp16 IndexScalarQuantizer (a float16 view: callers convert as they copy)."""
    flat = faiss.downcast_index(index)
    n, d = flat.ntotal, flat.d
    if isinstance(flat, faiss.IndexScalarQuantizer):
        if n == 0:
            return np.empty((0, d), dtype=np.float16)
        codes = faiss.rev_swig_ptr(flat.codes.data(), n * flat.code_size)
        return codes.view(np.float16).reshape(n, d)
    if n == 0:
        return np.empty((0, d), dtype=np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)


# ----------------------------------------------------------------------------- file format


@dataclass
class Blob:
    """One payload of an index file: a FAISS index, or an array (possibly given in row chunks)."""

    name: str
    value: faiss.Index | np.ndarray | None = None
    #: for arrays written chunk by chunk: dtype, full shape and an iterator of row chunks
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    chunks: Iterable[np.ndarray] | None = None

    def spec(self) -> dict[str, Any]:
        if isinstance(self.value, np.ndarray):
            return {"name": self.name, "kind": "array", "dtype": self.value.dtype.str,
                    "shape": list(self.value.shape)}
        if self.chunks is not None:
            return {"name": self.name, "kind": "array", "dtype": np.dtype(self.dtype).str,
                    "shape": list(self.shape or ())}
        return {"name": self.name, "kind": "faiss"}


def _write_blob(f: io.BufferedWriter, blob: Blob) -> None:
    start = f.tell()
    f.write(b"\0" * 8)
    if isinstance(blob.value, np.ndarray):
        arr = np.ascontiguousarray(blob.value)
        f.write(memoryview(arr).cast("B"))
    elif blob.chunks is not None:
        for chunk in blob.chunks:
            f.write(memoryview(np.ascontiguousarray(chunk, dtype=blob.dtype)).cast("B"))
    else:
        writer = faiss.PyCallbackIOWriter(f.write)
        faiss.write_index(blob.value, writer)
        del writer
    end = f.tell()
    f.seek(start)
    f.write(struct.pack("<Q", end - start - 8))
    f.seek(end)


def write_index_file(path: Path, header: dict[str, Any], blobs: list[Blob]) -> None:
    """Atomically write header + blobs: temp file in the same dir, fsync, os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": "cbir-index",
        "format_version": FORMAT_VERSION,
        "faiss_version": faiss.__version__,
        **header,
        "blobs": [b.spec() for b in blobs],
    }
    raw = json.dumps(header, indent=1, sort_keys=True).encode() + b"\n"
    with atomic_open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(raw)) + raw)
        for blob in blobs:
            _write_blob(f, blob)


def _read_exact(f: io.BufferedReader, n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise IndexMismatch(f"{path}: index file is truncated")
    return data


def _read_header(f: io.BufferedReader, path: Path) -> dict[str, Any]:
    if f.read(len(MAGIC)) != MAGIC:
        raise IndexMismatch(f"{path}: not a cbir index file (bad magic bytes)")
    (n,) = struct.unpack("<Q", _read_exact(f, 8, path))
    try:
        header = json.loads(_read_exact(f, n, path))
    except ValueError as e:
        raise IndexMismatch(f"{path}: corrupt index header ({e})") from None
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexMismatch(
            f"{path}: index format version {version} is not supported (this cbir reads "
            f"version {FORMAT_VERSION}); rebuild the index"
        )
    return header


def read_index_header(path: Path) -> dict[str, Any]:
    """Only the JSON header of an index file (cheap)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such index file")
    with open(path, "rb") as f:
        return _read_header(f, path)


def _read_array(f: io.BufferedReader, spec: dict[str, Any], size: int, path: Path) -> np.ndarray:
    arr = np.empty(tuple(spec["shape"]), dtype=np.dtype(spec["dtype"]))
    if arr.nbytes != size:
        raise IndexMismatch(f"{path}: blob {spec['name']!r} has {size} bytes, want {arr.nbytes}")
    view = memoryview(arr).cast("B") if arr.nbytes else memoryview(b"")
    got = 0
    while got < size:
        n = f.readinto(view[got:])
        if not n:
            raise IndexMismatch(f"{path}: index file is truncated")
        got += n
    return arr


def read_index_file(path: Path, *, mmap: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, {blob name: faiss.Index or np.ndarray}) of an index file.

    With ``mmap=True`` the blobs are read-only views of a memory map of the file, which
    ``header["_mapping"]`` (a :class:`Mapping`) keeps alive: hold on to it as long as the
    blobs are used, and never write to them (see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such index file")
    if mmap:
        mapping = Mapping(path)
        header, blobs = mapping.parse()
        header["_mapping"] = mapping
        return header, blobs
    with open(path, "rb") as f:
        return _read_stream(f, path)


def _read_stream(f: io.BufferedReader, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    blobs: dict[str, Any] = {}
    header = _read_header(f, path)
    for spec in header["blobs"]:
        (size,) = struct.unpack("<Q", _read_exact(f, 8, path))
        start = f.tell()
        if spec["kind"] == "array":
            blobs[spec["name"]] = _read_array(f, spec, size, path)
        else:
            reader = faiss.PyCallbackIOReader(f.read)
            try:
                blobs[spec["name"]] = faiss.read_index(reader)
            except RuntimeError as e:
                raise IndexMismatch(f"{path}: corrupt FAISS blob {spec['name']!r}: {e}") from None
            del reader
        if f.tell() != start + size:
            raise IndexMismatch(f"{path}: blob {spec['name']!r} has the wrong length")
    return header, blobs


class Mapping:
    """A read-only memory map of an index file, and the open file under it.

    The open file pins the inode, so ``read_owned`` reads the very bytes that were mapped
    even after a writer replaced ``path`` (atomic rename); the map lives as long as this
    object, which the index holding views into it keeps.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "rb")  # noqa: SIM115 — lives as long as the mapping
        try:
            self.mm = _mmap.mmap(self.file.fileno(), 0, access=_mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            self.file.close()
            raise IndexMismatch(f"{self.path}: index file is truncated") from None
        self.buf = np.frombuffer(self.mm, dtype=np.uint8)

    def _u64(self, at: int) -> int:
        if at + 8 > self.buf.size:
            raise IndexMismatch(f"{self.path}: index file is truncated")
        return struct.unpack_from("<Q", self.mm, at)[0]

    def parse(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(header, blobs as zero-copy views)."""
        path, buf = self.path, self.buf
        self.file.seek(0)
        header = _read_header(self.file, path)
        at = self.file.tell()
        blobs: dict[str, Any] = {}
        for spec in header["blobs"]:
            size = self._u64(at)
            at += 8
            if at + size > buf.size:
                raise IndexMismatch(f"{path}: index file is truncated")
            if spec["kind"] == "array":
                shape = tuple(spec["shape"])
                dtype = np.dtype(spec["dtype"])
                count = math.prod(shape)
                if count * dtype.itemsize != size:
                    raise IndexMismatch(f"{path}: blob {spec['name']!r} has {size} bytes, want "
                                        f"{count * dtype.itemsize}")
                blobs[spec["name"]] = np.frombuffer(self.mm, dtype=dtype, count=count,
                                                    offset=at).reshape(shape)
            else:
                reader = faiss.ZeroCopyIOReader(faiss.swig_ptr(buf[at:at + size]), size)
                try:
                    blobs[spec["name"]] = faiss.read_index(reader)
                except RuntimeError as e:
                    raise IndexMismatch(f"{path}: corrupt FAISS blob {spec['name']!r}: {e}") from None
                if reader.rp_ != size:
                    raise IndexMismatch(f"{path}: blob {spec['name']!r} has the wrong length")
                del reader
            at += size
        return header, blobs

    def read_owned(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The same file read into memory (owned, writable), from the pinned inode."""
        self.file.seek(0)
        return _read_stream(self.file, self.path)


# ----------------------------------------------------------------------------- base class


class IndexBase:
    """Shared plumbing: validation, replace-on-add, id bookkeeping, padding, save/load.

    Subclasses implement ``_add``, ``_remove``, ``_search`` (called with validated inputs,
    only on ids that are new / present, and with 1 <= k <= len(self)), ``_blobs`` and
    ``_restore``; ``_add_kw`` / ``_search_kw`` name the keywords they accept.
    """

    name: ClassVar[str] = ""
    #: scores are exact inner products with the stored vectors (see ``VectorSource``)
    exact_scores: bool = True
    _add_kw: ClassVar[frozenset[str]] = frozenset()
    _search_kw: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, dim: int):
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise InvalidRequest(f"dim must be a positive integer; got {dim!r}")
        self.dim = int(dim)
        self.params: dict[str, Any] = {}
        self._ids = np.empty(0, dtype=np.int64)  # sorted
        #: set when loaded with mmap=True: the blobs are read-only views of this mapping
        self._mapping: Mapping | None = None

    def __len__(self) -> int:
        return int(self._ids.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, n={len(self)}, params={self.params})"

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    # -- public API --------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray, **kw: Any) -> None:
        reject_unknown(kw, self._add_kw | SHARED_ADD_HINTS, f"{self.name}.add()")
        x = as_vectors(vectors, self.dim)
        ids = as_ids(ids, x.shape[0])
        opts = self._check_add(ids, x, **kw)
        if ids.size == 0:
            return
        self._own()
        present = ids[isin_sorted(self._ids, ids)]
        if present.size:
            self._remove(present)
            self._ids = np.setdiff1d(self._ids, present, assume_unique=True)
        self._add(ids, x, **opts)
        self._ids = np.union1d(self._ids, ids)

    def remove(self, ids: np.ndarray) -> int:
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InvalidRequest(f"ids must be a 1-D integer array; got {arr.dtype} {arr.shape}")
        arr = np.unique(arr.astype(np.int64))
        present = arr[isin_sorted(self._ids, arr)]
        if present.size:
            self._own()
            self._remove(present)
            self._ids = np.setdiff1d(self._ids, present, assume_unique=True)
        return int(present.size)

    def search(self, queries: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        reject_unknown(kw, self._search_kw | SHARED_SEARCH_HINTS, f"{self.name}.search()")
        q = as_vectors(queries, self.dim, what="queries")
        k = check_k(k)
        opts = self._check_search(q, k, **kw)
        if len(self) == 0 or q.shape[0] == 0:
            self._after_empty_search(q.shape[0])
            return empty_result(q.shape[0], k)
        with omp_threads(1 if q.shape[0] <= SINGLE_THREAD_MAX_QUERIES else None):
            scores, labels = self._search(q, min(k, len(self)), **opts)
        return pad_result(scores, labels, k)

    def save(self, path: Path) -> None:
        header = {"backend": self.name, "dim": self.dim, "params": self.params,
                  "count": len(self), "state": self._state()}
        write_index_file(path, header, [Blob("ids", self._ids), *self._blobs()])

    @property
    def mapped(self) -> bool:
        """True while the index is a read-only memory map of its file (see ``load``)."""
        return self._mapping is not None

    @classmethod
    def load(cls, path: Path, *, mmap: bool = False) -> Self:
        """Read an index file; ``mmap=True`` maps it instead (read-only views, loads in
        milliseconds whatever its size; the first change re-reads it into memory)."""
        header, blobs = read_index_file(path, mmap=mmap)
        if header.get("backend") != cls.name:
            raise IndexMismatch(
                f"{path}: holds a {header.get('backend')!r} index, not {cls.name!r}; "
                "use cbir.index.load_index to load any backend"
            )
        mapping = header.pop("_mapping", None)
        obj = cls._from_file(header, blobs)
        obj._mapping = mapping
        return obj

    def _own(self) -> None:
        """Before a change: replace mapped (read-only) blobs by an in-memory copy of them."""
        mapping = self._mapping
        if mapping is None:
            return
        header, blobs = mapping.read_owned()
        # the same file, so the same state, now owned (changes go only through add/remove,
        # which call this first; search-time caches are rebuilt on demand)
        self.__dict__.update(type(self)._from_file(header, blobs).__dict__)
        self._mapping = None

    @classmethod
    def _from_file(cls, header: dict[str, Any], blobs: dict[str, Any]) -> Self:
        obj = cls(dim=header["dim"], **header["params"])
        obj._ids = blobs["ids"]
        obj._restore(header.get("state", {}), blobs)
        return obj

    # -- hooks ---------------------------------------------------------------------------
    def _check_add(self, ids: np.ndarray, x: np.ndarray, **kw: Any) -> dict[str, Any]:
        """Validate add() keywords before anything changes; return those ``_add`` gets."""
        return {}

    def _check_search(self, q: np.ndarray, k: int, **kw: Any) -> dict[str, Any]:
        """Validate search() keywords; return those ``_search`` gets."""
        return {}

    def _after_empty_search(self, nq: int) -> None:
        """Called instead of ``_search`` when the index or the query batch is empty."""

    def _state(self) -> dict[str, Any]:
        return {}

    def _add(self, ids: np.ndarray, x: np.ndarray, **kw: Any) -> None:
        raise NotImplementedError

    def _remove(self, ids: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, q: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _blobs(self) -> list[Blob]:
        raise NotImplementedError

    def _restore(self, state: dict[str, Any], blobs: dict[str, Any]) -> None:
        raise NotImplementedError


def check_positive_int(value: Any, what: str, allow_none: bool = False) -> int | None:
    """Validate a construction/search knob; raise InvalidRequest naming it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidRequest(f"{what} must be a positive integer; got {value!r}")
    return int(value)


#: how an index may keep its vectors: "float32" (4*dim bytes each) or "float16" (2*dim bytes,
#: FAISS's fp16 scalar quantizer). The catalog stores float16 features, so for a collection
#: float16 loses nothing: the index holds exactly the values the catalog has.
VECTOR_DTYPES = ("float32", "float16")


def check_k_factor(value: Any) -> float:
    """Validate a re-scoring depth (candidates re-scored per result): a number >= 1."""
    try:
        k_factor = float(value)
    except (TypeError, ValueError):
        k_factor = float("nan")
    if not k_factor >= 1.0:
        raise InvalidRequest(f"k_factor must be a number >= 1; got {value!r}")
    return k_factor


def check_dtype(value: Any) -> str:
    if value not in VECTOR_DTYPES:
        raise InvalidRequest(f"dtype must be one of {list(VECTOR_DTYPES)}; got {value!r}")
    return str(value)


def new_flat(dim: int, dtype: str = "float32") -> faiss.IndexFlatCodes:
    """An empty exact inner-product store of ``dtype`` vectors (IndexFlatIP or fp16 SQ)."""
    if dtype == "float16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexFlatIP(dim)


def chunked(n: int, size: int) -> Iterator[slice]:
    """Row slices of at most ``size`` covering range(n)."""
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + size))


def auto_nlist(n: int) -> int:
    """The IVF rule of thumb: about 4*sqrt(n) lists."""
    return max(1, round(4 * math.sqrt(max(n, 1))))
