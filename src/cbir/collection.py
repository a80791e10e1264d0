"""A collection: one directory holding the manifest, the catalog and the vector index.

```
<collection>/manifest.json      format version + extractor (name, dim, preprocessing)
<collection>/catalog.sqlite     images, errors, labels, tags, float16 features (WAL)
<collection>/index/<kind>.faiss the vector index, a cache derived from the catalog
<collection>/index/state.json   which kind is current and the catalog generation it reflects
<collection>/writer.lock        one writer at a time
```

The catalog is the source of truth. The index is brought up to date from it by id set
difference (ids are never reused), so a crash between the two never loses anything: the
next reader simply syncs the index again.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import CollectionError, InvalidRequest
from cbir.extract import DEFAULT_EXTRACTOR, FeatureExtractor, create_extractor
from cbir.extract.base import canonical_extractor_name
from cbir.index import VectorIndex, choose_index, create_index, load_index
from cbir.paths import default_collection_dir  # noqa: F401  (re-exported: cbir.collection.default_collection_dir)
from cbir.store import Catalog, Manifest, WriterLock, matchscale, read_manifest, write_manifest
from cbir.store.catalog import CATALOG_NAME
from cbir.store.manifest import MANIFEST_NAME, write_json_atomic

AUTO = "auto"
#: backends the collection builds with ``dtype="float16"`` vectors (see ``_index_params``)
FLOAT16_INDEXES = frozenset({"exact", "ivf"})
#: how a new HNSW index keeps its vectors: 8-bit codes whose candidates are re-scored exactly
#: from the catalog's float16 features (docs/storage.md "An 8-bit HNSW index")
HNSW_DTYPE = "int8"

#: catalog meta key naming the trained model whose classes partition the index (`cbir models use`);
#: written and read by :mod:`cbir.train.apply`, which is also the partition provider (below)
PARTITION_MODEL_KEY = "partition_model"
#: catalog meta keys of the milvus index: the server (``--milvus-uri``) and the collection's name there
MILVUS_URI_KEY = "milvus_uri"
MILVUS_COLLECTION_KEY = "milvus_collection"


@dataclass(frozen=True)
class PartitionProvider:
    """How a trained model partitions the class-partitioned index.

    The collection sits below the training code, so it cannot import it: :mod:`cbir.train.apply`
    registers itself here with :func:`set_partition_provider` when it is imported, and the top
    layers (``cbir.cli``/``cbir.commands``, ``cbir.api``, ``cbir.service``) import it before they
    open a collection.
    """

    #: ``load_model(col)``: the collection's partitioning model, or None if none is in use
    load_model: Callable[[Collection], Any]
    #: ``partition_kwargs(col, model, ids)``: the ``index.add`` keyword arguments for ``ids``
    partition_kwargs: Callable[[Collection, Any, np.ndarray], dict[str, Any]]


_partition_provider: PartitionProvider | None = None


def set_partition_provider(provider: PartitionProvider | None) -> PartitionProvider | None:
    """Install the trained-model partition provider (None removes it); returns the previous one."""
    global _partition_provider
    previous, _partition_provider = _partition_provider, provider
    return previous


def partition_provider() -> PartitionProvider | None:
    """The installed partition provider, or None."""
    return _partition_provider


def check_collection_path(directory: Path) -> None:
    """Refuse a collection path that is, or lies under, something other than a folder."""
    if not str(directory).strip():
        raise CollectionError("the collection path is empty; give a folder with --collection DIR")
    for p in (directory, *directory.parents):
        if p.exists():
            if not p.is_dir():
                raise CollectionError(f"cannot use {directory} as a collection: "
                                      f"{p} is a file, not a folder")
            return


def is_writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


@dataclass
class IndexState:
    kind: str
    generation: int
    requested: str = AUTO


class Collection:
    """Open with :meth:`open` (existing) or :meth:`create_or_open` (for indexing)."""

    def __init__(self, directory: Path, manifest: Manifest, catalog: Catalog):
        self.directory = Path(directory)
        self.manifest = manifest
        self.catalog = catalog
        self._extractor: FeatureExtractor | None = None
        self._index: VectorIndex | None = None
        self._index_generation: int | None = None
        self._lock: WriterLock | None = None

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path | None = None) -> Collection:
        directory = Path(directory) if directory else default_collection_dir()
        check_collection_path(directory)
        if not (directory / MANIFEST_NAME).exists():
            raise CollectionError(
                f"no collection at {directory}; build one with `cbir index FOLDER`"
                + ("" if directory == default_collection_dir() else f" --collection {directory}")
            )
        manifest = read_manifest(directory)
        catalog_path = directory / CATALOG_NAME
        readonly = not is_writable(directory) or (catalog_path.exists()
                                                  and not is_writable(catalog_path))
        return cls(directory, manifest, Catalog(catalog_path, manifest.dim, readonly=readonly))

    @classmethod
    def create_or_open(cls, directory: Path | None = None, extractor: str | None = None,
                       extractor_kwargs: dict[str, Any] | None = None) -> Collection:
        """Open the collection, creating it for ``extractor`` if it does not exist yet."""
        directory = Path(directory) if directory else default_collection_dir()
        if (directory / MANIFEST_NAME).exists():
            col = cls.open(directory)
            if extractor and canonical_extractor_name(extractor) != col.manifest.extractor:
                raise InvalidRequest(
                    f"collection {directory} uses extractor {col.manifest.extractor!r}, "
                    f"not {extractor!r}; choose another --collection"
                )
            return col
        check_collection_path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CollectionError(f"cannot create the collection folder {directory}: "
                                  f"{e.strerror or e}") from None
        ext = create_extractor(extractor or DEFAULT_EXTRACTOR, **(extractor_kwargs or {}))
        manifest = Manifest(extractor=ext.name, dim=ext.dim, preprocessing=ext.preprocessing)
        # the catalog first, the manifest last: a collection is only "there" once both are
        catalog = Catalog(directory / CATALOG_NAME, manifest.dim)
        write_manifest(directory, manifest)
        col = cls(directory, manifest, catalog)
        col._extractor = ext
        return col

    @property
    def readonly(self) -> bool:
        """Opened from a folder we may not write to: search and inspect only."""
        return bool(getattr(self.catalog, "readonly", False))

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def writer_lock(self, wait: bool = False) -> WriterLock:
        """``with col.writer_lock():`` — this process becomes the collection's one writer."""
        if self.readonly:
            raise CollectionError(f"collection {self.directory} is read-only (no write "
                                  "permission); searching it works, changing it does not")
        lock = WriterLock(self.directory, wait=wait)
        lock.on_release = self._forget_lock
        self._lock = lock
        return lock

    def _forget_lock(self) -> None:
        self._lock = None

    # -- the extractor ----------------------------------------------------------------
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            ext = create_extractor(self.manifest.extractor)
            self.manifest.check_extractor(ext.name, ext.dim, ext.preprocessing)
            self._extractor = ext
        return self._extractor

    def indexing_extractor(self) -> FeatureExtractor:
        """The extractor tuned for throughput: one inference thread per batch, a batch per core.

        (A single query is fastest with all cores in one session, which ``extractor`` keeps.)
        """
        if self.manifest.extractor not in ("efficientnet-lite0", "efficientnet-lite0-int8"):
            return self.extractor
        ext = create_extractor(self.manifest.extractor, intra_op_num_threads=1)
        self.manifest.check_extractor(ext.name, ext.dim, ext.preprocessing)
        return ext

    # -- the index --------------------------------------------------------------------
    @property
    def index_dir(self) -> Path:
        return self.directory / "index"

    def index_state(self) -> IndexState | None:
        try:
            raw = json.loads((self.index_dir / "state.json").read_text())
            return IndexState(kind=raw["kind"], generation=int(raw["generation"]),
                              requested=raw.get("requested", AUTO))
        except (OSError, ValueError, KeyError):
            return None

    def requested_index(self) -> str:
        return self.catalog.get_meta("index_kind", AUTO) or AUTO

    def set_requested_index(self, kind: str) -> None:
        from cbir.index import INDEXES

        if kind != AUTO and kind not in INDEXES:
            raise InvalidRequest(f"unknown index type {kind!r}; choose auto or one of: "
                                 + ", ".join(INDEXES.names()))
        if kind == "class-partitioned" and self.partition_model() is None \
                and not self.extractor.class_names:
            raise InvalidRequest(
                f"the class-partitioned index needs predicted classes, and extractor "
                f"{self.manifest.extractor!r} has no classifier; train one (`cbir train`) and "
                "`cbir models use NAME`, or choose another --index-type")
        with self.catalog.transaction():
            self.catalog.set_meta("index_kind", kind)

    def _target_kind(self, n: int, kind: str | None) -> str:
        kind = kind or self.requested_index()
        return choose_index(n) if kind == AUTO else kind

    def index(self, kind: str | None = None, *, persist: bool = True) -> VectorIndex:
        """The vector index, brought up to date with the catalog.

        Kind: the one named, else the collection's setting (``auto`` chooses by size).
        The synced index is saved (atomically) when no other writer holds the lock.
        """
        generation = self.catalog.generation()
        n = self.catalog.count("ok")
        target = self._target_kind(n, kind)
        if (self._index is not None and self._index.name == target
                and self._index_generation == generation):
            return self._index
        path = self.index_dir / f"{target}.faiss"
        state = self.index_state()
        idx: VectorIndex | None = None
        if path.exists():
            try:  # mapped: milliseconds at any size; a sync below re-reads it into memory
                idx = load_index(path, mmap=True)
            except Exception:  # noqa: BLE001 — a damaged cache is rebuilt from the catalog
                idx = None
        # (a saved index short of the catalog's count lacks rows whose feature is damaged:
        # syncing again skips them again, and says so)
        if idx is not None and idx.name == "milvus" and idx.params.get("uri") != (self.milvus_uri() or
                                                                            idx.params.get("uri")):
            idx = None  # another Milvus server now (--milvus-uri): fill a new collection there
        if idx is not None and state and state.kind == target and state.generation == generation \
                and len(idx) == n:
            self._attach_source(idx)
            self._index, self._index_generation = idx, generation
            return idx
        changed = False
        if idx is None or idx.dim != self.manifest.dim:
            idx = create_index(target, self.manifest.dim, **self._index_params(target, n))
            changed = True
        self._attach_source(idx)
        changed |= self._sync(idx)
        if persist and not self.readonly and (changed or not state or state.generation != generation
                        or state.kind != target):
            self._save_index(idx, target, generation)
        self._index, self._index_generation = idx, generation
        return idx

    def _index_params(self, kind: str, n: int) -> dict[str, Any]:
        # the catalog keeps float16 features, so a float16 index holds exactly the same
        # values in half the bytes (2,560 instead of 5,120 B per 1280-d image; less RAM for
        # `cbir serve`, fewer pages for a cold search); HNSW keeps 8-bit codes (1,280 B) and
        # re-scores its candidates from the catalog (``_attach_source``)
        if kind == "milvus":
            return {"uri": self.milvus_uri(), "collection": self._milvus_collection()}
        if kind == "hnsw":
            return {"dtype": HNSW_DTYPE}
        return {"dtype": "float16"} if kind in FLOAT16_INDEXES else {}

    def _attach_source(self, idx: VectorIndex) -> None:
        """Give an index that keeps approximate vectors the catalog's exact ones (by id)."""
        use = getattr(idx, "use_vector_source", None)
        if use is not None:
            use(self.vector_source)

    def vector_source(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found, float32 features) of these 'ok' images: what re-scoring reads."""
        return self.catalog.features(ids)

    # -- Milvus (--index-type milvus) ----------------------------------------------------------
    def milvus_uri(self) -> str | None:
        """The Milvus server: ``cbir index --milvus-uri`` (kept in the catalog), else $CBIR_MILVUS_URI."""
        return self.catalog.get_meta(MILVUS_URI_KEY) or os.environ.get("CBIR_MILVUS_URI") or None

    def set_milvus_uri(self, uri: str) -> None:
        from cbir.index.milvus import resolve_uri

        resolve_uri(uri)  # a well-formed URI with no credential in it: it is written to disk
        with self.catalog.transaction():
            self.catalog.set_meta(MILVUS_URI_KEY, uri)

    def _milvus_collection(self) -> str:
        """This collection's Milvus collection name: ``cbir_<random>``, made once, kept in the catalog."""
        name = self.catalog.get_meta(MILVUS_COLLECTION_KEY)
        if not name:
            name = f"cbir_{uuid.uuid4().hex}"
            if not self.readonly:
                with self.catalog.transaction():
                    self.catalog.set_meta(MILVUS_COLLECTION_KEY, name)
        return name

    def _sync(self, idx: VectorIndex) -> bool:
        """Make ``idx`` hold exactly the catalog's 'ok' ids. Returns whether anything changed."""
        want = self.catalog.ok_ids()
        have = idx.ids()
        stale = np.setdiff1d(have, want, assume_unique=True)
        new = np.setdiff1d(want, have, assume_unique=True)
        if len(stale):
            idx.remove(stale)
        for start in range(0, len(new), 20_000):
            chunk = new[start:start + 20_000]
            ids, feats = self.catalog.features(chunk)
            idx.add(ids, feats, **self._add_kwargs(idx, ids))
        return bool(len(stale) or len(new))

    def partition_model(self) -> Any:
        """The trained classifier chosen with `cbir models use` to partition the index, or None.

        Raises CollectionError when the catalog names a model but no partition provider is
        installed (never falls back to ImageNet classes behind the user's back).
        """
        if not self.catalog.get_meta(PARTITION_MODEL_KEY):
            return None
        provider = _partition_provider
        if provider is None:
            raise CollectionError(
                f"collection {self.directory} partitions its index by a trained model "
                "(`cbir models use`), but the training code is not loaded: import cbir.train.apply "
                "first (cbir.open, the CLI and the service do), or run `cbir models use --none`")
        return provider.load_model(self)

    def _add_kwargs(self, idx: VectorIndex, ids: np.ndarray) -> dict[str, Any]:
        if idx.name not in ("class-partitioned", "milvus"):  # milvus: its partition-key field
            return {}
        model = self.partition_model()
        if model is not None:  # the tables follow the trained model's classes
            assert _partition_provider is not None  # partition_model() checked it
            return _partition_provider.partition_kwargs(self, model, ids)
        recs = self.catalog.records(ids)
        classes = np.array([recs[int(i)].top_class if recs[int(i)].top_class is not None else -1
                            for i in ids], dtype=np.int64)
        return {"classes": classes}

    def _save_index(self, idx: VectorIndex, kind: str, generation: int) -> None:
        own = self._lock is not None and self._lock.held
        lock = WriterLock(self.directory)
        if not own and not lock.acquire():
            return  # another writer is busy; it will save, and we keep ours in memory
        try:
            self.index_dir.mkdir(exist_ok=True)
            idx.save(self.index_dir / f"{kind}.faiss")
            write_json_atomic(self.index_dir / "state.json",
                              {"kind": kind, "generation": generation,
                               "requested": self.requested_index()})
            if int(self.catalog.generation()) == generation:
                matchscale.store(self.catalog)  # what a cold search would measure (docs/storage.md)
            for other in self.index_dir.glob("*.faiss"):
                if other.name != f"{kind}.faiss":
                    other.unlink(missing_ok=True)
        finally:
            if not own:
                lock.release()

    def drop_index(self) -> None:
        """Delete the index cache; it is rebuilt from the catalog on the next search."""
        for p in self.index_dir.glob("*"):
            p.unlink(missing_ok=True)
        self._index = None

    # -- stats ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        state = self.index_state()
        index_bytes = sum(p.stat().st_size for p in self.index_dir.glob("*.faiss")) \
            if self.index_dir.exists() else 0
        ok = self.catalog.count("ok")
        milvus: dict[str, Any] = {}
        uri = self.catalog.get_meta(MILVUS_URI_KEY)
        if uri or self.requested_index() == "milvus" or (state and state.kind == "milvus"):
            from cbir.index.milvus import public_uri

            milvus = {"milvus_uri": public_uri(uri or os.environ.get("CBIR_MILVUS_URI")) or None,
                      "milvus_collection": self.catalog.get_meta(MILVUS_COLLECTION_KEY)}
        return {
            "collection": str(self.directory),
            "format_version": self.manifest.format_version,
            "extractor": self.manifest.extractor,
            "dim": self.manifest.dim,
            "images": ok,
            "errors": self.catalog.count("error"),
            "duplicates": self.catalog.duplicate_groups(),
            "index_type": state.kind if state else None,
            "index_requested": self.requested_index(),
            "index_up_to_date": bool(state and state.generation == self.catalog.generation()),
            "catalog_bytes": self.catalog.db_bytes(),
            "index_bytes": index_bytes,
            "bytes_per_image": round((self.catalog.db_bytes() + index_bytes) / ok, 1) if ok else None,
            "error_reasons": self.catalog.error_summary()[:10],
            **milvus,
        }
