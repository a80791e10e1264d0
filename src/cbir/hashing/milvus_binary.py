"""``milvus`` binary index: packed hash codes in a Milvus BINARY_VECTOR field, HAMMING metric.

The Hamming counterpart of :mod:`cbir.index.milvus` (same server, URI, token and naming rules),
registered in :data:`cbir.hashing.binary_index.BINARY_INDEXES` and held to the same contract as
``binary-flat``: exact results ordered by (Hamming distance, id).

One Milvus collection per index: ``id`` INT64 primary key (catalog row id) and ``code``
BINARY_VECTOR(8 * ceil(bits / 8)) under a ``BIN_FLAT`` index (exact; the default) or
``BIN_IVF_FLAT`` searched with nprobe = nlist (every list, so exact too), metric HAMMING.

* **Bits that are not a multiple of 8**: Milvus needs a binary dim divisible by 8, so the field
  is ``8 * code_size`` bits wide and holds the packed codes as they are; their padding bits are
  zero (``as_codes`` clears them in stored and query codes alike), and zero bits on both sides
  add nothing to a Hamming distance.
* **Ties**: Milvus returns the ``limit`` nearest codes, but equal distances in any order. Every
  k-NN search asks for more than k (``k + margin``) and re-sorts by (distance, id); if the k-th
  distance equals the last one returned, that tie group may be cut, so the search is repeated
  with a doubled limit until the k-th distance is strictly below the last returned one (or
  every code was returned). Radius searches are Milvus range searches
  (``range_filter <= d < radius``) with the limit doubled until fewer hits than the limit come
  back. Past Milvus's largest limit (16384) the few queries that need more are answered
  exactly from a local copy of every (id, code) read from the server (rare: a tie group or a
  radius ball of more than 16384 codes).
* ``add`` = delete the ids already present, then insert (as the float backend does);
  ``remove`` = delete by primary key. Searches run at **Strong** consistency: a removed id is
  never returned.
* **save/load**: the cbir binary-index container (:mod:`cbir.hashing.binary_index`) with
  ``"backend": "milvus"``, the params (URI, collection name, index type) and the ids (8 bytes
  a code, so ``len``/``ids`` need no round trip) -- never the codes, never the token. ``load``
  re-attaches to the collection (IndexMismatch if it is gone or has another width) and re-reads
  the ids from the server when its ``count(*)`` differs from the file's.

pymilvus is the optional extra ``milvus``, imported lazily (importing this module needs none).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Self

import numpy as np

from cbir.errors import IndexMismatch, InvalidRequest
from cbir.hashing.base import as_codes
from cbir.hashing.binary_index import (
    BINARY_INDEXES,
    BinaryFlatIndex,
    BinaryIndexBase,
    _as_ids,
    _check_header,
    check_radius,
)
from cbir.index.base import (
    Blob,
    check_k,
    check_positive_int,
    chunked,
    isin_sorted,
    read_index_file,
    write_index_file,
)
from cbir.index.milvus import MARK, REQUEST_BYTES, connect, resolve_uri, wait_index_built

INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
#: Milvus's largest limit (topk) per search; a module attribute so tests can lower it
MAX_TOPK = 16384
#: hits per search request at most (queries x limit), to keep responses well under gRPC's 64 MB
MAX_HITS = 1 << 20
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


@BINARY_INDEXES.register("milvus")
class MilvusBinaryIndex(BinaryIndexBase):
    """Codes in a Milvus server. ``MilvusBinaryIndex(bits, uri=None, collection=None,
    index_type="BIN_FLAT", nlist=1024)``: ``uri`` else $CBIR_MILVUS_URI; ``collection`` a name
    (default a new ``cbir_bin_<random>``; an explicit name replaces a previous cbir collection of
    that name and refuses one cbir did not make); ``nlist`` for BIN_IVF_FLAT (searched with
    nprobe = nlist: exact).
    """

    name = "milvus"

    def __init__(self, bits: int, uri: str | None = None, collection: str | None = None,
                 index_type: str = "BIN_FLAT", nlist: int = 1024):
        self._setup(bits, uri, collection, index_type, nlist)
        self._client = connect(self.uri)
        self._create()

    def _setup(self, bits: int, uri: str | None, collection: str | None, index_type: str,
               nlist: int) -> None:
        super().__init__(bits)
        if index_type not in INDEX_TYPES:
            raise InvalidRequest(f"index_type must be one of {INDEX_TYPES}; got {index_type!r}")
        self.collection = collection or f"{MARK}_bin_{uuid.uuid4().hex}"
        if not _NAME.match(self.collection):
            raise InvalidRequest(f"Milvus collection name must be letters, digits and _ (not starting "
                                 f"with a digit); got {self.collection!r}")
        self.index_type = index_type
        self.nlist = check_positive_int(nlist, "nlist")
        self.uri = resolve_uri(uri)
        #: the BINARY_VECTOR width: bits rounded up to a whole byte (zero padding bits)
        self.dim = 8 * self.code_size
        self.params = {"uri": self.uri, "collection": self.collection, "index_type": index_type,
                       "nlist": self.nlist}
        self._client: Any = None

    def nbytes_per_code(self) -> float:
        """Local memory per code: the id only (the codes live in Milvus)."""
        return 8.0

    # -- Milvus collection -------------------------------------------------------------------
    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        c = self._client
        if c.has_collection(self.collection):
            desc = c.describe_collection(self.collection).get("description", "")
            if not str(desc).startswith(MARK):
                raise InvalidRequest(f"Milvus collection {self.collection!r} at {self.uri} was not made by "
                                     "cbir; refusing to replace it (choose another name)")
            c.drop_collection(self.collection)
        schema = MilvusClient.create_schema(
            auto_id=False, enable_dynamic_field=False,
            description=f"{MARK} binary codes ({self.bits} bits; catalog row ids)")
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=self.dim)
        index_params = c.prepare_index_params()
        build = {"nlist": self.nlist} if self.index_type == "BIN_IVF_FLAT" else {}
        index_params.add_index("code", index_type=self.index_type, metric_type="HAMMING", params=build)
        c.create_collection(self.collection, schema=schema, index_params=index_params,
                            consistency_level="Strong")  # also loads it

    def _attach(self, expected: int) -> None:
        self._client = connect(self.uri)
        c = self._client
        if not c.has_collection(self.collection):
            raise IndexMismatch(f"Milvus collection {self.collection!r} no longer exists at {self.uri}; "
                                "rebuild the binary index")
        fields = {f["name"]: f for f in c.describe_collection(self.collection)["fields"]}
        dim = int(fields.get("code", {}).get("params", {}).get("dim", -1))
        if dim != self.dim:
            raise IndexMismatch(f"Milvus collection {self.collection!r} holds {dim}-bit binary vectors, "
                                f"not {self.dim}")
        c.load_collection(self.collection)
        if self.server_count() != expected:
            self.refresh_ids()

    def server_count(self) -> int:
        """Codes in the Milvus collection (``count(*)`` at Strong consistency)."""
        res = self._client.query(self.collection, filter="", output_fields=["count(*)"],
                                 consistency_level="Strong")
        return int(res[0]["count(*)"])

    def _read_all(self, with_codes: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Every (id, code) in the server, sorted by id (codes None unless ``with_codes``)."""
        fields = ["id", "code"] if with_codes else ["id"]
        it = self._client.query_iterator(self.collection, batch_size=16384, filter="id >= 0",
                                         output_fields=fields, consistency_level="Strong")
        ids: list[int] = []
        raw: list[bytes] = []
        try:
            while rows := it.next():
                ids.extend(r["id"] for r in rows)
                if with_codes:
                    raw.extend(_code_bytes(r["code"]) for r in rows)
        finally:
            it.close()
        ids_a = np.array(ids, dtype=np.int64)
        order = np.argsort(ids_a, kind="stable")
        if not with_codes:
            return ids_a[order], None
        codes = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(-1, self.code_size)
        return ids_a[order], codes[order]

    def refresh_ids(self) -> None:
        """Re-read every id from the server (when another process changed the collection)."""
        self._ids = self._read_all(with_codes=False)[0]

    def flush(self) -> None:
        """Seal the growing segments so Milvus builds the index on them now (benchmarks)."""
        self._client.flush(self.collection)

    def wait_index(self, timeout: float = 3600.0) -> None:
        """Block until Milvus has indexed every sealed row (after ``flush``)."""
        wait_index_built(self._client, self.collection, "code", timeout)

    def drop(self) -> None:
        """Delete the Milvus collection (the index is unusable afterwards)."""
        self._client.drop_collection(self.collection)
        self._ids = np.empty(0, dtype=np.int64)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- add / remove -----------------------------------------------------------------------
    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Upsert: an id already present gets the new code (delete + insert)."""
        c = as_codes(codes, self.bits)
        ids = _as_ids(ids, c.shape[0])
        if ids.size == 0:
            return
        present = ids[isin_sorted(self._ids, ids)]
        if present.size:
            self._delete_ids(present)
        rows = max(1, REQUEST_BYTES // (self.code_size + 16))
        for sl in chunked(len(ids), rows):
            data = [{"id": i, "code": b.tobytes()} for i, b in zip(ids[sl].tolist(), c[sl], strict=True)]
            self._client.insert(self.collection, data)
        self._ids = np.union1d(self._ids, ids).astype(np.int64)

    def _delete_ids(self, ids: np.ndarray) -> None:
        for sl in chunked(len(ids), 16384):
            self._client.delete(self.collection, ids=ids[sl].tolist())

    def _delete(self, positions: np.ndarray) -> None:  # BinaryIndexBase.remove's hook
        self._delete_ids(self._ids[positions])

    # -- search -----------------------------------------------------------------------------
    def _params(self, radius: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"nprobe": self.nlist} if self.index_type == "BIN_IVF_FLAT" else {}
        if radius is not None:  # range search: range_filter <= distance < radius
            params |= {"radius": radius, "range_filter": 0}
        return {"metric_type": "HAMMING", "params": params}

    def _query(self, q: np.ndarray, limit: int, radius: int | None = None
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (distances int64, ids int64) of Milvus's ``limit`` nearest (or in range)."""
        out: list[tuple[np.ndarray, np.ndarray]] = []
        per_call = max(1, min(1024, MAX_HITS // limit))
        for sl in chunked(q.shape[0], per_call):
            res = self._client.search(self.collection, data=[b.tobytes() for b in q[sl]], limit=limit,
                                      anns_field="code", search_params=self._params(radius),
                                      consistency_level="Strong")
            for hits in res:
                ids = getattr(hits, "ids", None)
                dist = getattr(hits, "distances", None)
                if ids is None or dist is None:
                    ids, dist = [h["id"] for h in hits], [h["distance"] for h in hits]
                out.append((np.rint(np.asarray(dist, dtype=np.float64)).astype(np.int64),
                            np.asarray(ids, dtype=np.int64)))
        return out

    def _local_copy(self) -> BinaryFlatIndex:
        """Every code of the server in a FAISS flat index (for the rare searches past MAX_TOPK)."""
        ids, codes = self._read_all(with_codes=True)
        flat = BinaryFlatIndex(self.bits)
        flat.add(ids, codes)
        return flat

    def search(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = as_codes(query_codes, self.bits, what="query codes")
        k = check_k(k)
        nq = q.shape[0]
        dist = np.full((nq, k), self.bits + 1, dtype=np.int32)
        out = np.full((nq, k), -1, dtype=np.int64)
        n = len(self)
        if nq == 0 or n == 0:
            return dist, out
        kk = min(k, n)
        limit = min(n, kk + max(16, kk // 4))
        pending = np.arange(nq)
        while pending.size:
            if limit > MAX_TOPK:  # a tie group wider than Milvus's limit: answer from a local copy
                d, i = self._local_copy().search(q[pending], kk)
                dist[pending, :kk], out[pending, :kk] = d, i
                break
            again = []
            for r, (d, i) in zip(pending.tolist(), self._query(q[pending], limit), strict=True):
                m = d.size
                # complete: all codes came back, or the k-th distance is below the last returned one
                if m < limit or limit >= n or d[kk - 1] < d[-1]:
                    order = np.lexsort((i, d))[:kk]
                    dist[r, : order.size], out[r, : order.size] = d[order], i[order]
                else:
                    again.append(r)
            pending = np.array(again, dtype=np.int64)
            limit = min(n, 2 * limit)
        return dist, out

    def search_radius(self, query_codes: np.ndarray, r: int) -> list[tuple[np.ndarray, np.ndarray]]:
        q = as_codes(query_codes, self.bits, what="query codes")
        r = min(check_radius(r), self.bits)
        n = len(self)
        results: list[tuple[np.ndarray, np.ndarray]] = [
            (np.empty(0, np.int64), np.empty(0, np.int32)) for _ in range(q.shape[0])]
        if n == 0:
            return results
        limit = min(n, 256)
        pending = np.arange(q.shape[0])
        while pending.size:
            if limit > MAX_TOPK:  # more than Milvus's limit within r: answer from a local copy
                for row, res in zip(pending.tolist(), self._local_copy().search_radius(q[pending], r),
                                    strict=True):
                    results[row] = res
                break
            again = []
            for row, (d, i) in zip(pending.tolist(), self._query(q[pending], limit, radius=r + 1),
                                   strict=True):
                if d.size < limit or limit >= n:
                    keep = d <= r  # (whatever the server's bound convention, nothing beyond r)
                    d, i = d[keep], i[keep]
                    order = np.lexsort((i, d))
                    results[row] = (i[order], d[order].astype(np.int32))
                else:
                    again.append(row)
            pending = np.array(again, dtype=np.int64)
            limit = min(n, 2 * limit)
        return results

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        header = self._header(state={
            "milvus_collection": self.collection, "milvus_uri": self.uri,
            "schema": {"id": "INT64 primary key (catalog row id)",
                       "code": f"BINARY_VECTOR({self.dim}) HAMMING {self.index_type}"}})
        write_index_file(Path(path), header, [Blob("ids", self._ids)])

    @classmethod
    def load(cls, path: Path) -> Self:
        header, blobs = read_index_file(Path(path))
        _check_header(header, path)
        if header.get("backend") != cls.name:
            raise IndexMismatch(
                f"{path}: holds a {header.get('backend')!r} binary index, not {cls.name!r}; "
                "use cbir.hashing.load_binary_index to load any backend"
            )
        obj = cls.__new__(cls)
        obj._setup(bits=header["bits"], **header.get("params", {}))
        ids = blobs.get("ids")
        if not isinstance(ids, np.ndarray) or ids.ndim != 1 or (ids.size > 1 and np.any(np.diff(ids) <= 0)):
            raise IndexMismatch(f"{path}: ids are not sorted and unique (corrupt file)")
        obj._ids = ids.astype(np.int64)
        obj._attach(expected=len(obj._ids))
        return obj


def _code_bytes(value: Any) -> bytes:
    """A BINARY_VECTOR as pymilvus returns it from ``query`` (bytes, or a one-item list of bytes)."""
    if isinstance(value, list | tuple):
        value = value[0]
    return bytes(value)
