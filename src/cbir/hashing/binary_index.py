"""Hamming-space indexes over packed binary codes, with a registry of backends.

Every backend stores (id, code) pairs: int64 ids (>= 0, stable catalog row ids) and packed
uint8 codes (n, ceil(bits/8)) as produced by a :class:`~cbir.hashing.base.Hasher`.

* ``search(q, k)`` -> (distances int32 (nq, k), ids int64 (nq, k)), sorted by Hamming
  distance, ties by id (lower first). Exact for every backend. When fewer than k codes
  are stored the rows are padded with id -1 and distance ``bits + 1`` (larger than any
  real distance, so rows stay sorted).
* ``search_radius(q, r)`` -> one (ids int64, distances int32) pair per query with every
  code at distance <= r, sorted the same way. Exact.
* ``add`` with an id already present replaces its code; ``remove`` ignores unknown ids.

Backends:

* ``binary-flat``: FAISS ``IndexBinaryFlat`` brute force (SIMD popcount, multi-threaded).
* ``multi-index``: multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): the code is
  cut into m substrings, each with a table (sorted substring keys); a radius-r query
  probes, in every table, the buckets within floor(r/m) of the query's substring, and
  verifies the candidates with the full distance (pigeonhole: exact). k-NN grows the
  per-table radius s = 0, 1, ... until k codes lie within (s+1)*m - 1, which is then
  exact. Codes live in the same FAISS flat storage; when probing would cost more than a
  scan (``scan_ratio``), the query runs the FAISS flat scan instead.

Both keep the codes in id order (position p holds the p-th smallest id), which is what
makes ties resolve by id. Adding ids larger than every stored id appends; other adds
rebuild the storage (O(n)). ``multi-index`` rebuilds its tables lazily at the next search
after any change (m argsorts of n keys).

Files reuse the cbir index container (:mod:`cbir.index.base`: magic, JSON header, raw
blobs, atomic write) with ``"format": "cbir-binary-index"``; the blobs are the sorted ids
and the packed codes (flattened to 1-D), so a file does not depend on the FAISS version.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import faiss
import numpy as np

from cbir.errors import IndexMismatch, InvalidRequest
from cbir.hashing.base import as_codes, as_words, check_bits, code_size, popcount
from cbir.index.base import (
    Blob,
    check_k,
    isin_sorted,
    read_index_file,
    read_index_header,
    write_index_file,
)
from cbir.registry import Registry

BINARY_FORMAT = "cbir-binary-index"
BINARY_FORMAT_VERSION = 1
#: rows per chunk when computing multi-index substring keys
_KEY_CHUNK = 1 << 20
#: batched radius search: at most this many queries, and query x probe pairs, per chunk
_MAX_QUERY_CHUNK = 1 << 14
_MAX_BATCH_PROBES = 1 << 20

__all__ = [
    "BINARY_FORMAT_VERSION",
    "BINARY_INDEXES",
    "BinaryFlatIndex",
    "BinaryIndex",
    "BinaryIndexBase",
    "MultiIndexHashing",
    "create_binary_index",
    "load_binary_index",
]


@runtime_checkable
class BinaryIndex(Protocol):
    #: registry name, e.g. "binary-flat"
    name: str
    bits: int
    #: bytes per code, ceil(bits / 8)
    code_size: int
    #: JSON-serialisable construction params; ``create_binary_index(name, bits, **params)`` rebuilds it
    params: dict[str, Any]

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Add int64 ids (n,) with packed uint8 codes (n, code_size); a present id is replaced."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; unknown ids are ignored. Returns how many were removed."""
        ...

    def search(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(nq, code_size) uint8 -> (distances (nq, k) int32, ids (nq, k) int64), (distance, id) order."""
        ...

    def search_radius(self, query_codes: np.ndarray, r: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (ids int64, distances int32) of every code within Hamming distance <= r."""
        ...

    def ids(self) -> np.ndarray:
        """All ids present, int64, sorted."""
        ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> BinaryIndex: ...


BINARY_INDEXES: Registry[BinaryIndex] = Registry("binary index")


def _as_ids(ids: Any, n: int) -> np.ndarray:
    """Check and convert to int64 (n,): non-negative, unique; raise InvalidRequest otherwise.

    Same rules as cbir.index.base.as_ids, with a sort-based uniqueness check (fast for
    millions of ids).
    """
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InvalidRequest(f"ids must be a 1-D array of {n} integers; got shape {arr.shape}")
    if n and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidRequest(f"ids must be integers (int64 catalog row ids); got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if n and arr.min() < 0:
        raise InvalidRequest("ids must be >= 0 (-1 marks padding in search results)")
    if n > 1 and _sorted_unique(arr).size != n:
        raise InvalidRequest("ids must be unique within one add() call")
    return arr


def check_radius(r: Any) -> int:
    if isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 0:
        raise InvalidRequest(f"radius must be a non-negative integer; got {r!r}")
    return int(r)


def _sort_rows(dist: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of (nq, k) results by (distance, position)."""
    key = (dist.astype(np.int64) << 40) | pos.astype(np.int64)
    order = np.argsort(key, axis=1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(pos, order, axis=1)


class BinaryIndexBase:
    """Shared plumbing: validation, id order, replace-on-add, padding, save/load.

    Subclasses keep codes at positions aligned with ``self._ids`` (sorted) and implement
    ``_append(codes)``, ``_reset(codes)``, ``_delete(positions)``, ``_all_codes()``,
    ``_knn(q, k) -> (dist, positions)`` (1 <= k <= len) and ``_radius(q, r) -> list of
    (positions, dist)``, all results sorted by (distance, position).
    """

    name: ClassVar[str] = ""

    def __init__(self, bits: int):
        self.bits = check_bits(bits)
        self.code_size = code_size(self.bits)
        self.params: dict[str, Any] = {}
        self._ids = np.empty(0, dtype=np.int64)  # sorted

    def __len__(self) -> int:
        return int(self._ids.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits}, n={len(self)}, params={self.params})"

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def nbytes_per_code(self) -> float:
        """Approximate memory per stored code in bytes (codes + ids + any tables)."""
        return float(self.code_size + 8)

    def build(self) -> None:
        """Build any search structure now instead of lazily at the next search (no-op here)."""

    # -- public API --------------------------------------------------------------------
    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        c = as_codes(codes, self.bits)
        ids = _as_ids(ids, c.shape[0])
        if ids.size == 0:
            return
        self.remove(ids)
        order = np.argsort(ids, kind="stable")
        ids, c = ids[order], c[order]
        if self._ids.size == 0 or ids[0] > self._ids[-1]:
            self._append(c)
            self._ids = np.concatenate([self._ids, ids])
            return
        all_ids = np.concatenate([self._ids, ids])
        order = np.argsort(all_ids, kind="stable")
        self._reset(np.concatenate([self._all_codes(), c])[order])
        self._ids = all_ids[order]

    def remove(self, ids: np.ndarray) -> int:
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InvalidRequest(f"ids must be a 1-D integer array; got {arr.dtype} {arr.shape}")
        arr = _sorted_unique(arr.astype(np.int64))
        present = arr[isin_sorted(self._ids, arr)]
        if present.size:
            pos = np.searchsorted(self._ids, present)
            self._delete(pos)
            self._ids = np.delete(self._ids, pos)
        return int(present.size)

    def search(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = as_codes(query_codes, self.bits, what="query codes")
        k = check_k(k)
        nq = q.shape[0]
        dist = np.full((nq, k), self.bits + 1, dtype=np.int32)
        out = np.full((nq, k), -1, dtype=np.int64)
        if nq == 0 or len(self) == 0:
            return dist, out
        kk = min(k, len(self))
        d, pos = self._knn(q, kk)
        dist[:, :kk] = d
        out[:, :kk] = self._ids[pos]
        return dist, out

    def search_radius(self, query_codes: np.ndarray, r: int) -> list[tuple[np.ndarray, np.ndarray]]:
        q = as_codes(query_codes, self.bits, what="query codes")
        r = min(check_radius(r), self.bits)
        if len(self) == 0:
            return [(np.empty(0, np.int64), np.empty(0, np.int32)) for _ in range(q.shape[0])]
        return [(self._ids[p], d.astype(np.int32)) for p, d in self._radius(q, r)]

    def _header(self, **extra: Any) -> dict[str, Any]:
        """The saved file's header: format, backend, sizes, params (plus ``extra`` keys)."""
        return {
            "format": BINARY_FORMAT,
            "binary_format_version": BINARY_FORMAT_VERSION,
            "backend": self.name,
            "bits": self.bits,
            "code_size": self.code_size,
            "params": self.params,
            "count": len(self),
            "bit_order": "big (np.packbits default)",
            **extra,
        }

    def save(self, path: Path) -> None:
        header = self._header()
        # codes go flat (n * code_size,): the container cannot write empty 2-D arrays
        codes = self._all_codes().reshape(-1)
        write_index_file(Path(path), header, [Blob("ids", self._ids), Blob("codes", codes)])

    @classmethod
    def load(cls, path: Path) -> Self:
        header, blobs = read_index_file(Path(path))
        _check_header(header, path)
        if header.get("backend") != cls.name:
            raise IndexMismatch(
                f"{path}: holds a {header.get('backend')!r} binary index, not {cls.name!r}; "
                "use cbir.hashing.load_binary_index to load any backend"
            )
        obj = cls(bits=header["bits"], **header.get("params", {}))
        flat, ids = blobs["codes"], blobs["ids"]
        if flat.dtype != np.uint8 or flat.ndim != 1 or flat.size != ids.size * obj.code_size:
            raise IndexMismatch(f"{path}: ids and codes do not match (corrupt file)")
        codes = as_codes(flat.reshape(-1, obj.code_size), obj.bits)
        if ids.shape != (codes.shape[0],) or (ids.size > 1 and np.any(np.diff(ids) <= 0)):
            raise IndexMismatch(f"{path}: ids and codes do not match (corrupt file)")
        obj._reset(codes)
        obj._ids = ids.astype(np.int64)
        return obj

    # -- hooks ---------------------------------------------------------------------------
    def _append(self, codes: np.ndarray) -> None:
        raise NotImplementedError

    def _reset(self, codes: np.ndarray) -> None:
        raise NotImplementedError

    def _delete(self, positions: np.ndarray) -> None:
        raise NotImplementedError

    def _all_codes(self) -> np.ndarray:
        raise NotImplementedError

    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _radius(self, q: np.ndarray, r: int) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError


def _check_header(header: dict[str, Any], path: Path) -> None:
    if header.get("format") != BINARY_FORMAT:
        raise IndexMismatch(f"{path}: not a binary index file (format {header.get('format')!r})")
    if header.get("binary_format_version") != BINARY_FORMAT_VERSION:
        raise IndexMismatch(
            f"{path}: binary index format version {header.get('binary_format_version')} is not "
            f"supported (this cbir reads {BINARY_FORMAT_VERSION}); rebuild the index"
        )


# ----------------------------------------------------------------------------- binary-flat


@BINARY_INDEXES.register("binary-flat")
class BinaryFlatIndex(BinaryIndexBase):
    """Exhaustive Hamming search with FAISS IndexBinaryFlat. ``BinaryFlatIndex(bits)``; no knobs.

    FAISS returns positions, which map to ids in sorted order; FAISS breaks distance ties
    by the smaller position, and each row is re-sorted by (distance, position) anyway.
    """

    name = "binary-flat"

    def __init__(self, bits: int):
        super().__init__(bits)
        self._index = faiss.IndexBinaryFlat(8 * self.code_size)

    def _append(self, codes: np.ndarray) -> None:
        self._index.add(codes)

    def _reset(self, codes: np.ndarray) -> None:
        self._index = faiss.IndexBinaryFlat(8 * self.code_size)
        if codes.shape[0]:
            self._index.add(np.ascontiguousarray(codes))

    def _delete(self, positions: np.ndarray) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(positions.astype(np.int64)))  # keeps order

    def _all_codes(self) -> np.ndarray:
        n = self._index.ntotal
        if n == 0:
            return np.empty((0, self.code_size), dtype=np.uint8)
        return self._index.reconstruct_n(0, n)

    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, pos = self._index.search(q, k)
        return _sort_rows(d.astype(np.int32), pos)

    def _radius(self, q: np.ndarray, r: int) -> list[tuple[np.ndarray, np.ndarray]]:
        lims, d, pos = self._index.range_search(q, r + 1)  # FAISS keeps distance < radius
        out = []
        for i in range(q.shape[0]):
            di = d[lims[i] : lims[i + 1]].astype(np.int64)
            pi = pos[lims[i] : lims[i + 1]]
            order = np.argsort((di << 40) | pi)
            out.append((pi[order], di[order].astype(np.int32)))
        return out


# ----------------------------------------------------------------------------- multi-index


@lru_cache(maxsize=256)
def _flip_masks(length: int, s: int) -> np.ndarray:
    """All ``length``-bit integers with exactly ``s`` bits set, uint32 (C(length, s),)."""
    if s > length:
        masks = np.empty(0, dtype=np.uint32)
    elif s == 0:
        masks = np.zeros(1, dtype=np.uint32)
    elif length <= 22:  # filter all 2^length values: fast, at most 16 MB
        every = np.arange(1 << length, dtype=np.uint32)
        masks = every[popcount(every) == s]
    else:
        combos = np.array(list(combinations(range(length), s)), dtype=np.uint32)
        masks = np.bitwise_or.reduce(np.uint32(1) << combos, axis=1)
    masks.setflags(write=False)
    return masks


def default_substrings(bits: int) -> int:
    """Norouzi et al.'s m ~ bits / log2(n) for n ~ 1M (about 20 bits per substring), at most 32 bits each."""
    return max(1, math.ceil(bits / 32), round(bits / 20))


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique for int arrays by sorting (NumPy 2's hash-based unique is slower here)."""
    a = np.sort(a)
    if a.size > 1:
        a = a[np.concatenate(([True], a[1:] != a[:-1]))]
    return a


def _top_k(d: np.ndarray, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (distance, position) pairs, sorted; d, p: (c,) candidates, c >= k."""
    if d.size > k:  # keep every code at distance <= the k-th smallest, ties included
        sel = np.flatnonzero(d <= np.partition(d, k - 1)[k - 1])
        d, p = d[sel], p[sel]
    key = (d.astype(np.int64) << 40) | p.astype(np.int64)
    if key.size > k:
        key = np.partition(key, k - 1)[:k]
    key.sort()
    return (key >> 40).astype(np.int32), key & ((1 << 40) - 1)


def _ranges_to_indices(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenate arange(lo[i], hi[i]) over i (int64)."""
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    keep = counts > 0
    lo, counts = lo[keep], counts[keep]
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    return starts + np.arange(total, dtype=np.int64)


@BINARY_INDEXES.register("multi-index")
class MultiIndexHashing(BinaryFlatIndex):
    """Multi-index hashing. ``MultiIndexHashing(bits, m=None, scan_ratio=256.0)``.

    m: number of substrings (default :func:`default_substrings`: 64 bits -> 3, 32 -> 2,
    128 -> 6); substrings are contiguous, lengths differ by at most 1, each <= 32 bits.
    scan_ratio: probe when (buckets to probe) * scan_ratio < n, else scan all codes with
    the FAISS flat search this class inherits; a search never probes more buckets than
    there are codes, whatever the ratio. 256 is about the break-even measured at 1M
    64-bit codes (one bucket probe in NumPy ~ 250 codes scanned by FAISS).

    Codes live in the inherited FAISS IndexBinaryFlat (position order = id order); the
    tables hold, per substring, the sorted keys (uint32) and the positions that sort them.
    """

    name = "multi-index"

    def __init__(self, bits: int, m: int | None = None, scan_ratio: float = 256.0):
        super().__init__(bits)
        if m is None:
            m = default_substrings(self.bits)
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or not (
            math.ceil(self.bits / 32) <= m <= self.bits
        ):
            raise InvalidRequest(
                f"m (substrings) must be an integer from {math.ceil(self.bits / 32)} to {self.bits} "
                f"for {self.bits}-bit codes (substrings of at most 32 bits); got {m!r}"
            )
        if isinstance(scan_ratio, bool) or not isinstance(scan_ratio, int | float) or scan_ratio <= 0:
            raise InvalidRequest(f"scan_ratio must be a positive number; got {scan_ratio!r}")
        self.m = int(m)
        self.scan_ratio = float(scan_ratio)
        self.params = {"m": self.m, "scan_ratio": self.scan_ratio}
        base, extra = divmod(self.bits, self.m)
        self._lens = [base + (1 if j < extra else 0) for j in range(self.m)]
        self._starts = [sum(self._lens[:j]) for j in range(self.m)]
        self._tables: list[tuple[np.ndarray, np.ndarray]] | None = None
        itemsize = next(s for s in (8, 4, 2, 1) if self.code_size % s == 0)
        self._word = np.dtype(f"u{itemsize}")  # widest unsigned int that tiles a code

    def nbytes_per_code(self) -> float:
        pos_bytes = 4 if len(self) < 2**31 else 8
        return float(self.code_size + 8 + self.m * (4 + pos_bytes))

    def build(self) -> None:
        """Sort the m substring tables now (search does it lazily after any change)."""
        self._build()

    # -- storage hooks: every change invalidates the tables --------------------------------
    def _append(self, codes: np.ndarray) -> None:
        super()._append(codes)
        self._tables = None

    def _reset(self, codes: np.ndarray) -> None:
        super()._reset(codes)
        self._tables = None

    def _delete(self, positions: np.ndarray) -> None:
        super()._delete(positions)
        self._tables = None

    def _view(self) -> np.ndarray:
        """Zero-copy (n, code_size / itemsize) view of the FAISS storage (valid until it changes)."""
        n = self._index.ntotal
        if n == 0:
            return np.empty((0, self.code_size // self._word.itemsize), dtype=self._word)
        raw = faiss.rev_swig_ptr(self._index.xb.data(), n * self.code_size)
        return np.asarray(raw).reshape(n, self.code_size).view(self._word)

    # -- substrings ----------------------------------------------------------------------
    def _keys(self, codes: np.ndarray) -> np.ndarray:
        """Packed uint8 (n, code_size) -> (n, m) uint32 substring keys (first bit most significant)."""
        keys = np.empty((codes.shape[0], self.m), dtype=np.uint32)
        for rows in range(0, codes.shape[0], _KEY_CHUNK):
            be = as_words(codes[rows : rows + _KEY_CHUNK]).view(">u8").astype(np.uint64)
            out = keys[rows : rows + _KEY_CHUNK]
            for j, (s, ln) in enumerate(zip(self._starts, self._lens, strict=True)):
                e, w0 = s + ln, s // 64
                if (e - 1) // 64 == w0:  # bit b of the code is bit 63 - b % 64 of word b // 64
                    out[:, j] = (be[:, w0] >> np.uint64(64 * (w0 + 1) - e)) & np.uint64((1 << ln) - 1)
                else:
                    len_hi = 64 * (w0 + 1) - s
                    len_lo = ln - len_hi
                    hi = (be[:, w0] & np.uint64((1 << len_hi) - 1)) << np.uint64(len_lo)
                    out[:, j] = hi | (be[:, w0 + 1] >> np.uint64(64 - len_lo))
        return keys

    def _build(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._tables is None:
            n = self._index.ntotal
            keys = self._keys(self._view().view(np.uint8))
            pos_dtype = np.int32 if n < 2**31 else np.int64
            tables = []
            for j in range(self.m):
                order = np.argsort(keys[:, j], kind="stable").astype(pos_dtype)
                tables.append((np.ascontiguousarray(keys[order, j]), order))
            self._tables = tables
        return self._tables

    def _probes(self, s_max: int) -> int:
        """Buckets probed per query for per-table radii 0..s_max (all tables)."""
        return sum(math.comb(ln, s) for ln in self._lens for s in range(min(s_max, ln) + 1))

    def _scan_cheaper(self, s_max: int) -> bool:
        probes = self._probes(s_max)
        n = self._index.ntotal
        return probes >= n or probes * self.scan_ratio >= n

    def _lookup(self, j: int, probes: np.ndarray) -> np.ndarray:
        """Positions of stored codes whose substring j equals one of ``probes`` (distinct keys)."""
        keys, order = self._tables[j]
        lo = np.searchsorted(keys, probes, side="left")
        hi = np.searchsorted(keys, probes, side="right")
        return order[_ranges_to_indices(lo, hi)]

    # -- k-NN ----------------------------------------------------------------------------
    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self._build()
        words = self._view()
        qw = np.ascontiguousarray(q).view(self._word)
        qkeys = self._keys(q)
        dist = np.empty((q.shape[0], k), dtype=np.int32)
        pos = np.empty((q.shape[0], k), dtype=np.int64)
        to_scan = []
        for i in range(q.shape[0]):
            res = self._knn_probe(words, qw[i], qkeys[i], k)
            if res is None:
                to_scan.append(i)
            else:
                dist[i], pos[i] = res
        if to_scan:  # probing would cost more than a scan: FAISS scans them all at once
            dist[to_scan], pos[to_scan] = super()._knn(q[to_scan], k)
        return dist, pos

    def _knn_probe(
        self, words: np.ndarray, qw: np.ndarray, qkey: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """k-NN of one query by growing the per-table radius; None when a scan is cheaper."""
        seen = np.zeros(words.shape[0], dtype=bool)
        found_d: list[np.ndarray] = []
        found_p: list[np.ndarray] = []
        for s in range(max(self._lens) + 1):
            if self._scan_cheaper(s):
                return None
            for j, ln in enumerate(self._lens):
                if s > ln:
                    continue
                cand = self._lookup(j, qkey[j] ^ _flip_masks(ln, s))
                cand = cand[~seen[cand]]
                if cand.size:
                    seen[cand] = True
                    found_p.append(cand)
                    found_d.append(popcount(words[cand] ^ qw).sum(axis=1, dtype=np.int32))
            # Pigeonhole: every code within (s+1)*m - 1 of the query has been found.
            reach = (s + 1) * self.m - 1
            within = sum(int(np.count_nonzero(d <= reach)) for d in found_d)
            if within >= k:
                d, p = np.concatenate(found_d), np.concatenate(found_p)
                keep = d <= reach
                return _top_k(d[keep], p[keep], k)
        return None  # only reached if k > n, which the caller rules out

    # -- radius --------------------------------------------------------------------------
    def _radius(self, q: np.ndarray, r: int) -> list[tuple[np.ndarray, np.ndarray]]:
        s_max = r // self.m
        if self._scan_cheaper(s_max):
            return super()._radius(q, r)
        self._build()
        masks = [
            np.concatenate([_flip_masks(ln, s) for s in range(min(s_max, ln) + 1)]) for ln in self._lens
        ]
        chunk = max(1, min(_MAX_QUERY_CHUNK, _MAX_BATCH_PROBES // max(mk.size for mk in masks)))
        words = self._view()
        qw = np.ascontiguousarray(q).view(self._word)
        qkeys = self._keys(q)
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for a in range(0, q.shape[0], chunk):
            out += self._radius_batch(words, qw[a : a + chunk], qkeys[a : a + chunk], r, masks)
        return out

    def _radius_batch(
        self, words: np.ndarray, qw: np.ndarray, qkeys: np.ndarray, r: int, masks: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Probe every table for a chunk of queries at once; int64 keys pack (query, distance, position)."""
        nq = qw.shape[0]
        cand = []
        for j, mk in enumerate(masks):
            keys, order = self._tables[j]
            probes = (qkeys[:, j : j + 1] ^ mk[None, :]).ravel()
            lo = np.searchsorted(keys, probes, side="left")
            hi = np.searchsorted(keys, probes, side="right")
            qi = np.repeat(np.repeat(np.arange(nq, dtype=np.int64), mk.size), hi - lo)
            cand.append((qi << 48) | order[_ranges_to_indices(lo, hi)].astype(np.int64))
        pairs = _sorted_unique(np.concatenate(cand))  # distinct (query, position)
        qi, pos = pairs >> 48, pairs & ((1 << 48) - 1)
        d = popcount(words[pos] ^ qw[qi]).sum(axis=1, dtype=np.int64)
        keep = d <= r
        key = np.sort((qi[keep] << 48) | (d[keep] << 40) | pos[keep])
        bounds = np.searchsorted(key >> 48, np.arange(nq + 1))
        d_all = ((key >> 40) & 0xFF).astype(np.int32)
        p_all = key & ((1 << 40) - 1)
        return [(p_all[a:b], d_all[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# ----------------------------------------------------------------------------- factories


def create_binary_index(name: str, bits: int, **params: Any) -> BinaryIndex:
    """Build an empty binary index of backend ``name`` for ``bits``-bit codes."""
    return BINARY_INDEXES.create(name, bits=bits, **params)


def load_binary_index(path: Path) -> BinaryIndex:
    """Load any binary index written by ``BinaryIndex.save``; the file names its backend."""
    header = read_index_header(Path(path))
    _check_header(header, path)
    backend = header.get("backend")
    if not isinstance(backend, str):
        raise IndexMismatch(f"{path}: binary index header names no backend")
    return BINARY_INDEXES.get(backend).load(Path(path))
