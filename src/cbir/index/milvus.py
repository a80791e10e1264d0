"""``milvus``: the vectors live in a Milvus server; cbir keeps only a small local file naming them.

One Milvus collection per index: ``id`` INT64 primary key = the catalog's row id (never reused),
``top_class`` INT64 partition key (the predicted top-1 class, -1 = none; the deep-CBIR paper's
per-class tables) and ``vector`` FLOAT_VECTOR (dim) under an HNSW, IVF_FLAT or FLAT index with
the IP metric (vectors are L2-normalised, so scores are cosines, as with the FAISS backends).

* ``add`` = upsert (an id already present is replaced: delete + insert, see ``add``), ``remove``
  = delete by primary key.
* Searches run at **Strong** consistency by default: Milvus then waits until every write this
  or any other client made before the search is visible, so a removed image is never returned
  (Bounded/Session/Eventually can return it for a moment: bench/bench_milvus.py measures it).
* ``search(q, k, query_probs=(nq, C), n_partitions=P)`` restricts each query to its P most
  probable classes with a ``top_class in [...]`` filter (Milvus prunes partitions by the key),
  falling through to further classes until they hold k vectors, exactly as ``class-partitioned``
  chooses its tables. Without ``n_partitions`` (the default) every vector is searched.
* The local file (the cbir index container of :mod:`cbir.index.base`) holds the Milvus URI, the
  collection name, the construction params, and the ids with their classes (8+8 bytes a vector)
  so ``len``/``ids``/the class fall-through need no round trip. ``load`` compares the file's
  count with the server's ``count(*)`` and re-reads ids and classes from the server when they
  differ (another process changed the collection). Credentials are never written: the token
  comes from ``CBIR_MILVUS_TOKEN`` or the file named by ``CBIR_MILVUS_TOKEN_FILE``.
* The URI: ``uri=...``, else ``CBIR_MILVUS_URI``. A new index with an explicit ``collection``
  name drops a previous cbir collection of that name (an index starts empty) and refuses to touch
  a collection that cbir did not create.

pymilvus is the optional extra ``milvus`` (``pip install 'cbir[milvus]'``), imported lazily.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from cbir.errors import BackendUnavailable, IndexMismatch, InvalidRequest
from cbir.index.base import (
    INDEXES,
    SHARED_ADD_HINTS,
    Blob,
    IndexBase,
    as_ids,
    as_vectors,
    check_positive_int,
    chunked,
    isin_sorted,
    reject_unknown,
)

URI_ENV = "CBIR_MILVUS_URI"
TOKEN_ENV = "CBIR_MILVUS_TOKEN"
TOKEN_FILE_ENV = "CBIR_MILVUS_TOKEN_FILE"
#: collection descriptions start with this; cbir drops/reuses only collections marked so
MARK = "cbir"
CONSISTENCY = ("Strong", "Bounded", "Session", "Eventually")
INDEX_TYPES = ("HNSW", "IVF_FLAT", "FLAT")
#: Milvus's largest topk (limit) per search
MAX_TOPK = 16384
#: bytes per upsert request (Milvus's default gRPC receive limit is 64 MB)
REQUEST_BYTES = 16 << 20
UNCLASSIFIED = -1
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


# ----------------------------------------------------------------------------- connection


def milvus_token() -> str:
    """The token from $CBIR_MILVUS_TOKEN, else the file named by $CBIR_MILVUS_TOKEN_FILE, else ""."""
    token = os.environ.get(TOKEN_ENV, "")
    path = os.environ.get(TOKEN_FILE_ENV)
    if not token and path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise InvalidRequest(f"${TOKEN_FILE_ENV}={path}: cannot read the Milvus token ({e})") from None
    return token


def resolve_uri(uri: str | None) -> str:
    uri = uri or os.environ.get(URI_ENV) or ""
    if not uri:
        raise InvalidRequest(f"the milvus index needs a server: pass --milvus-uri http://HOST:19530 "
                             f"(or set ${URI_ENV})")
    if not re.match(r"^(https?|tcp|grpc)://", uri):
        raise InvalidRequest(f"Milvus URI must look like http://HOST:19530; got {public_uri(uri)!r}")
    check_no_credentials(uri)
    return uri


def check_no_credentials(uri: str) -> None:
    """Refuse a URI carrying a credential (``user:password@``, ``?token=``): the collection
    writes its URI to disk (catalog, index file), and credentials must never be written."""
    try:
        parts = urlsplit(uri)
        has_user = parts.username is not None or parts.password is not None
    except ValueError:
        raise InvalidRequest("the Milvus URI cannot be parsed") from None
    if has_user or parts.query or parts.fragment:
        raise InvalidRequest(
            f"the Milvus URI {public_uri(uri)!r} carries a user, password or query: cbir writes the "
            f"URI into the collection, so give the credential in ${TOKEN_ENV} (user:password or a "
            f"token) or in a file named by ${TOKEN_FILE_ENV} instead")


def public_uri(uri: str | None) -> str | None:
    """``uri`` to show (``cbir hash list``, logs): without a ``user:password@`` part or a query
    string (``?token=...``), the places a credential can hide in a URI."""
    if not uri:
        return uri
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
    except ValueError:
        return "(unparsable URI)"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    netloc = host + (f":{parts.port}" if parts.port else "") if parts.netloc else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def wait_index_built(client: Any, collection: str, field: str, timeout: float) -> None:
    """Block until Milvus has indexed every sealed row of ``collection``'s ``field``."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        info = client.describe_index(collection, field)
        if int(info.get("pending_index_rows", 0)) == 0 and \
                int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 0)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Milvus index not built within {timeout:.0f} s: {info}")
        time.sleep(0.5)


def connect(uri: str, timeout: float = 10.0) -> Any:
    """A pymilvus MilvusClient for ``uri`` (token from the environment); BackendUnavailable if unreachable."""
    from cbir.extras import require

    require("the milvus index", "milvus")
    from pymilvus import MilvusClient

    try:
        return MilvusClient(uri=uri, token=milvus_token(), timeout=timeout)
    except Exception as e:  # noqa: BLE001 - pymilvus raises several types for "cannot connect"
        raise BackendUnavailable(f"cannot reach Milvus at {uri} ({type(e).__name__}: {e}); is the "
                                 "server running? (--milvus-uri / $CBIR_MILVUS_URI)") from None


def choose_classes(probs: np.ndarray, counts: dict[int, int], k: int,
                   n_partitions: int) -> list[tuple[int, ...]]:
    """Per query, the classes to search: its ``n_partitions`` most probable classes that hold
    vectors, then further ones (by probability) until they hold k vectors; plus -1 (no class).
    The same rule as the class-partitioned backend's tables."""
    classes = np.array(sorted(c for c in counts if c != UNCLASSIFIED), dtype=np.int64)
    sizes = np.array([counts[int(c)] for c in classes], dtype=np.int64)
    extra = counts.get(UNCLASSIFIED, 0)
    nq = probs.shape[0]
    score = np.full((nq, classes.size), -np.inf, dtype=np.float32)
    known = classes < probs.shape[1]
    score[:, known] = probs[:, classes[known]]
    order = np.argsort(-score, axis=1, kind="stable")
    enough = (np.cumsum(sizes[order], axis=1) + extra) >= k
    need = np.where(enough.any(axis=1), enough.argmax(axis=1) + 1, classes.size)
    need = np.maximum(need, min(n_partitions, classes.size))
    out = []
    for i in range(nq):
        chosen = sorted(int(c) for c in classes[order[i, : need[i]]])
        out.append(tuple(chosen + ([UNCLASSIFIED] if extra else [])))
    return out


# ----------------------------------------------------------------------------- the backend


@INDEXES.register("milvus")
class MilvusIndex(IndexBase):
    """Vectors in a Milvus server. Knobs: ``uri``, ``collection`` (name; default a new
    ``cbir_<random>``), ``index_type`` (HNSW, IVF_FLAT, FLAT), ``M`` / ``ef_construction`` /
    ``ef_search`` (HNSW), ``nlist`` / ``nprobe`` (IVF_FLAT), ``n_partitions`` (None: search all
    classes), ``consistency`` (Strong). ``ef_search``, ``nprobe``, ``n_partitions`` and
    ``consistency`` are also search keywords.
    """

    name = "milvus"
    _search_kw = frozenset({"ef_search", "nprobe", "n_partitions", "consistency"})

    def __init__(self, dim: int, uri: str | None = None, collection: str | None = None,
                 index_type: str = "HNSW", M: int = 16, ef_construction: int = 200,  # noqa: N803
                 ef_search: int = 96, nlist: int = 1024, nprobe: int = 32,
                 n_partitions: int | None = None, consistency: str = "Strong"):
        self._setup(dim, uri, collection, index_type, M, ef_construction, ef_search, nlist, nprobe,
                    n_partitions, consistency)
        self._client = connect(self.uri)
        self._create()

    def _setup(self, dim: int, uri: str | None, collection: str | None, index_type: str, M: int,  # noqa: N803
               ef_construction: int, ef_search: int, nlist: int, nprobe: int,
               n_partitions: int | None, consistency: str) -> None:
        super().__init__(dim)
        if index_type not in INDEX_TYPES:
            raise InvalidRequest(f"index_type must be one of {INDEX_TYPES}; got {index_type!r}")
        self.collection = collection or f"{MARK}_{uuid.uuid4().hex}"
        if not _NAME.match(self.collection):
            raise InvalidRequest(f"Milvus collection name must be letters, digits and _ (not starting "
                                 f"with a digit); got {self.collection!r}")
        self.index_type = index_type
        self.M = check_positive_int(M, "M")
        self.ef_construction = check_positive_int(ef_construction, "ef_construction")
        self.ef_search = check_positive_int(ef_search, "ef_search")
        self.nlist = check_positive_int(nlist, "nlist")
        self.nprobe = check_positive_int(nprobe, "nprobe")
        self.n_partitions = check_positive_int(n_partitions, "n_partitions", allow_none=True)
        self.consistency = _check_consistency(consistency)
        self.uri = resolve_uri(uri)
        self.params = {"uri": self.uri, "collection": self.collection, "index_type": index_type,
                       "M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                       "nlist": self.nlist, "nprobe": self.nprobe, "n_partitions": self.n_partitions,
                       "consistency": self.consistency}
        self._id_class = np.empty(0, dtype=np.int64)  # class of each id in self._ids (sorted)
        self._client: Any = None

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
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description=f"{MARK} image index (catalog row ids)")
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("top_class", DataType.INT64, is_partition_key=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = c.prepare_index_params()
        build = {"HNSW": {"M": self.M, "efConstruction": self.ef_construction},
                 "IVF_FLAT": {"nlist": self.nlist}, "FLAT": {}}[self.index_type]
        index_params.add_index("vector", index_type=self.index_type, metric_type="IP", params=build)
        c.create_collection(self.collection, schema=schema, index_params=index_params,
                            consistency_level="Strong")  # create_collection also loads it

    def _attach(self, expected: int) -> None:
        """Connect to the saved collection and check it (load path)."""
        self._client = connect(self.uri)
        c = self._client
        if not c.has_collection(self.collection):
            raise IndexMismatch(f"Milvus collection {self.collection!r} no longer exists at {self.uri}; "
                                "rebuild the index")
        fields = {f["name"]: f for f in c.describe_collection(self.collection)["fields"]}
        dim = int(fields.get("vector", {}).get("params", {}).get("dim", -1))
        if dim != self.dim:
            raise IndexMismatch(f"Milvus collection {self.collection!r} holds {dim}-d vectors, "
                                f"not {self.dim}")
        c.load_collection(self.collection)
        if self.server_count() != expected:
            self.refresh_ids()

    def server_count(self) -> int:
        """Vectors in the Milvus collection (``count(*)`` at Strong consistency)."""
        res = self._client.query(self.collection, filter="", output_fields=["count(*)"],
                                 consistency_level="Strong")
        return int(res[0]["count(*)"])

    def refresh_ids(self) -> None:
        """Re-read every (id, class) from the server (when another process changed it)."""
        it = self._client.query_iterator(self.collection, batch_size=16384, filter="id >= 0",
                                         output_fields=["id", "top_class"], consistency_level="Strong")
        ids, classes = [], []
        try:
            while rows := it.next():
                ids.extend(r["id"] for r in rows)
                classes.extend(r["top_class"] for r in rows)
        finally:
            it.close()
        ids_a = np.array(ids, dtype=np.int64)
        order = np.argsort(ids_a, kind="stable")
        self._ids = ids_a[order]
        self._id_class = np.array(classes, dtype=np.int64)[order]

    def flush(self) -> None:
        """Seal the growing segments so Milvus builds the vector index on them now (benchmarks)."""
        self._client.flush(self.collection)

    def wait_index(self, timeout: float = 3600.0) -> None:
        """Block until Milvus has indexed every sealed row (after ``flush``)."""
        wait_index_built(self._client, self.collection, "vector", timeout)

    def drop(self) -> None:
        """Delete the Milvus collection (the index is unusable afterwards)."""
        self._client.drop_collection(self.collection)
        self._ids = np.empty(0, dtype=np.int64)
        self._id_class = np.empty(0, dtype=np.int64)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def class_counts(self) -> dict[int, int]:
        """{class: vectors filed under it} (from the local ids; -1 = no class)."""
        c, n = np.unique(self._id_class, return_counts=True)
        return dict(zip(c.tolist(), n.tolist(), strict=True))

    # -- add / remove -----------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray, **kw: Any) -> None:
        """Upsert: an id already present gets the new vector (and class)."""
        reject_unknown(kw, SHARED_ADD_HINTS, f"{self.name}.add()")
        x = as_vectors(vectors, self.dim)
        ids = as_ids(ids, x.shape[0])
        classes = _check_classes(kw.get("classes"), len(ids))
        if ids.size == 0:
            return
        # upsert = delete + insert. Not Milvus's own upsert: in 2.3.5 it files rows with a
        # partition key under other partitions than search-time pruning looks in, so a
        # ``top_class`` filter missed upserted rows (tests/unit/test_milvus.py shows it)
        present = ids[isin_sorted(self._ids, ids)]
        if present.size:
            self._delete(present)
        rows = max(1, REQUEST_BYTES // (4 * self.dim + 16))
        for sl in chunked(len(ids), rows):
            data = [{"id": int(i), "top_class": int(c), "vector": v}
                    for i, c, v in zip(ids[sl].tolist(), classes[sl].tolist(), x[sl], strict=True)]
            self._client.insert(self.collection, data)
        all_ids = np.concatenate([self._ids, ids])
        all_cls = np.concatenate([self._id_class, classes])
        # keep the last entry of each id (the new class of a replaced id)
        order = np.lexsort((-np.arange(all_ids.size), all_ids))
        all_ids, all_cls = all_ids[order], all_cls[order]
        first = np.concatenate(([True], all_ids[1:] != all_ids[:-1])) if all_ids.size \
            else all_ids.astype(bool)
        self._ids, self._id_class = all_ids[first], all_cls[first]

    def _delete(self, ids: np.ndarray) -> None:
        for sl in chunked(len(ids), 16384):
            self._client.delete(self.collection, ids=ids[sl].tolist())

    def _remove(self, ids: np.ndarray) -> None:
        self._delete(ids)
        self._id_class = np.delete(self._id_class, np.searchsorted(self._ids, ids))

    # -- search -----------------------------------------------------------------------------
    def _check_search(self, q: np.ndarray, k: int, **kw: Any) -> dict[str, Any]:
        ef = kw.get("ef_search")
        nprobe = kw.get("nprobe")
        n_part = kw.get("n_partitions", self.n_partitions)
        probs = kw.get("query_probs")
        if probs is not None:
            probs = np.asarray(probs)
            if probs.ndim != 2 or probs.shape[0] != q.shape[0] or probs.shape[1] < 1:
                raise InvalidRequest(f"query_probs must be (nq={q.shape[0]}, n_classes) class "
                                     f"probabilities; got shape {probs.shape}")
            probs = probs.astype(np.float32, copy=False)
            if not np.isfinite(probs).all():
                raise InvalidRequest("query_probs contain NaN or infinity")
        return {
            "ef_search": self.ef_search if ef is None else check_positive_int(ef, "ef_search"),
            "nprobe": self.nprobe if nprobe is None else check_positive_int(nprobe, "nprobe"),
            "n_partitions": check_positive_int(n_part, "n_partitions", allow_none=True),
            "query_probs": probs,
            "consistency": _check_consistency(kw.get("consistency") or self.consistency),
        }

    def _search(self, q: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, MAX_TOPK)
        nq = q.shape[0]
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        labels = np.full((nq, k), -1, dtype=np.int64)
        probs, n_part = kw["query_probs"], kw["n_partitions"]
        if probs is None or n_part is None:
            groups = {"": np.arange(nq)}
        else:
            chosen = choose_classes(probs, self.class_counts(), k, n_part)
            by: dict[tuple[int, ...], list[int]] = {}
            for i, cls in enumerate(chosen):
                by.setdefault(cls, []).append(i)
            groups = {f"top_class in {list(c)}": np.array(r) for c, r in by.items()}
        params = {"HNSW": {"ef": max(kw["ef_search"], k)}, "IVF_FLAT": {"nprobe": kw["nprobe"]},
                  "FLAT": {}}[self.index_type]
        for expr, rows in groups.items():
            for sl in chunked(rows.size, 1024):
                part = rows[sl]
                res = self._client.search(
                    self.collection, data=list(q[part]), limit=k, filter=expr,
                    search_params={"metric_type": "IP", "params": params},
                    consistency_level=kw["consistency"])
                for r, hits in zip(part.tolist(), res, strict=True):
                    m = len(hits)
                    if m:
                        labels[r, :m] = [h["id"] for h in hits]
                        scores[r, :m] = [h["distance"] for h in hits]
        return scores, labels

    # -- persistence ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"milvus_collection": self.collection, "milvus_uri": self.uri,
                "schema": {"id": "INT64 primary key (catalog row id)",
                           "top_class": "INT64 partition key", "vector": f"FLOAT_VECTOR({self.dim}) IP"}}

    def _blobs(self) -> list[Blob]:
        return [Blob("classes", self._id_class)]

    @classmethod
    def _from_file(cls, header: dict[str, Any], blobs: dict[str, Any]) -> Self:
        obj = cls.__new__(cls)
        obj._setup(dim=header["dim"], **header["params"])
        obj._ids, obj._id_class = blobs["ids"], blobs["classes"]
        if obj._ids.shape != obj._id_class.shape:
            raise IndexMismatch("milvus index file: ids and classes do not match (corrupt file)")
        obj._attach(expected=len(obj._ids))
        return obj

    def _restore(self, state: dict[str, Any], blobs: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError  # _from_file does it


def _check_consistency(value: Any) -> str:
    if value not in CONSISTENCY:
        raise InvalidRequest(f"consistency must be one of {CONSISTENCY}; got {value!r}")
    return str(value)


def _check_classes(classes: Any, n: int) -> np.ndarray:
    if classes is None:
        return np.full(n, UNCLASSIFIED, dtype=np.int64)
    arr = np.asarray(classes)
    if arr.shape != (n,) or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise InvalidRequest(f"classes must be a 1-D int array of {n} class indices; "
                             f"got {arr.dtype} {arr.shape}")
    if arr.size and arr.min() < UNCLASSIFIED:
        raise InvalidRequest("classes must be >= 0, or -1 for a vector without a prediction")
    return arr.astype(np.int64)
