"""What a running service holds: the collection's readers, a shared index, jobs, metrics.

Concurrency model. Each request thread gets its own ``Collection`` (its own SQLite
connection, see ``Readers``). The vector index is shared: ``IndexCache`` keeps one
immutable snapshot per index type, built from committed catalog rows only, and swaps in
a new snapshot when the catalog's generation moves on; a search keeps the snapshot it
started with, so readers never see a half-built index and never wait for the writer.
A new snapshot costs only the rows committed since the last one (``LayeredIndex``); while
a job writes it is made in the background, so no search waits for it either.
Writes (indexing, clear, rebuild, training) run one at a time in the job worker, whose
process runs niced and on all but one core (``ServiceConfig.job_nice``, ``job_cpus``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import cbir.train.apply  # noqa: F401  (installs the trained-model partition provider)
from cbir.collection import AUTO, PARTITION_MODEL_KEY, Collection
from cbir.errors import CollectionError, InvalidRequest
from cbir.extract import FeatureExtractor, create_extractor
from cbir.index import VectorIndex, choose_index
from cbir.index.base import as_vectors, check_k, isin_sorted, top_k
from cbir.io.images import load_image
from cbir.service import workers
from cbir.service.config import ServiceConfig
from cbir.service.jobs import JOBS_NAME, JobCancelled, JobContext, JobOutcome, JobRunner, JobStore
from cbir.service.metrics import Metrics
from cbir.service.security import resolve_under_roots
from cbir.store import Catalog, Manifest, WriterLock, read_manifest
from cbir.store.catalog import CATALOG_NAME
from cbir.store.manifest import MANIFEST_NAME

log = logging.getLogger("cbir.service")

THUMB_DIR = "thumbnails"
UPLOAD_DIR = "uploads"
SERVICE_LOCK = "service.lock"


class ReaderCollection(Collection):
    """A request's view of the collection: its index is the pinned shared snapshot."""

    pinned: VectorIndex | LayeredIndex | None = None

    def index(self, kind: str | None = None, *, persist: bool = True) -> VectorIndex:
        if self.pinned is not None:
            return self.pinned  # type: ignore[return-value]  # a LayeredIndex searches like one
        return super().index(kind, persist=False)


class Readers:
    """One ``ReaderCollection`` per thread, sharing the manifest and the extractor."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Collection] = []
        self._manifest: Manifest | None = None
        self._extractor: FeatureExtractor | None = None

    def exists(self) -> bool:
        return (self.directory / MANIFEST_NAME).exists()

    def manifest(self) -> Manifest | None:
        if self._manifest is None and self.exists():
            with self._lock:
                if self._manifest is None:
                    self._manifest = read_manifest(self.directory)
        return self._manifest

    def extractor(self) -> FeatureExtractor:
        manifest = self.manifest()
        if manifest is None:
            raise CollectionError("no collection yet: index a folder first")
        if self._extractor is None:
            with self._lock:
                if self._extractor is None:
                    ext = create_extractor(manifest.extractor)
                    manifest.check_extractor(ext.name, ext.dim, ext.preprocessing)
                    self._extractor = ext
        return self._extractor

    def open(self, register: bool = True) -> ReaderCollection:
        """A new reader (own connection). Registered readers are closed by ``close()``; an
        unregistered one belongs to the caller alone, which must close it."""
        manifest = self.manifest()
        if manifest is None:
            raise CollectionError("no collection yet: index a folder first")
        col = ReaderCollection(self.directory, manifest,
                               Catalog(self.directory / CATALOG_NAME, manifest.dim))
        col._extractor = self.extractor()
        if register:
            with self._lock:
                self._opened.append(col)
        return col

    def get(self) -> ReaderCollection | None:
        """This thread's reader, or None while there is no collection."""
        col = getattr(self._local, "col", None)
        if col is None:
            if not self.exists():
                return None
            col = self.open()
            self._local.col = col
        return col

    def close(self) -> None:
        with self._lock:
            for col in self._opened:
                with contextlib.suppress(Exception):  # closing at shutdown
                    col.close()
            self._opened.clear()
        self._local = threading.local()


#: vectors committed since a snapshot's base index was built are searched by brute force (a
#: "tail"); past this many bytes of them, or GONE_MAX removed ids, the next refresh builds a new base
TAIL_MAX_BYTES = 16 * 1024 * 1024
GONE_MAX = 256


class LayeredIndex:
    """An immutable search view: a base index, plus the vectors committed since it was built
    (searched exactly), minus the ids removed since. Quacks like the VectorIndex searches use."""

    def __init__(self, base: VectorIndex, tail_ids: np.ndarray, tail: np.ndarray, gone: np.ndarray):
        self.base = base
        self.name, self.dim, self.params = base.name, base.dim, base.params
        self._tail_ids, self._tail, self._gone = tail_ids, tail, gone
        self._n = len(base) + len(tail_ids) - len(gone)

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"LayeredIndex({self.base!r}, tail={len(self._tail_ids)}, gone={len(self._gone)})"

    def ids(self) -> np.ndarray:
        both = np.union1d(self.base.ids(), self._tail_ids)
        return np.setdiff1d(both, self._gone, assume_unique=True)

    def search(self, queries: np.ndarray, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        q = as_vectors(queries, self.dim, what="queries")
        k = check_k(k)
        scores, ids = self.base.search(q, k + len(self._gone), **kw)
        if len(self._tail_ids):
            tail_scores = q @ self._tail.T  # BLAS, without the GIL
            scores = np.concatenate([scores, tail_scores], axis=1)
            ids = np.concatenate([ids, np.broadcast_to(self._tail_ids, tail_scores.shape)], axis=1)
        if len(self._gone):
            ids = np.where(isin_sorted(self._gone, ids), -1, ids)
        return top_k(scores, ids, k)


class _TailBuffer:
    """Append-only vectors: snapshots keep views of a prefix, which later appends never touch."""

    def __init__(self, dim: int):
        self.ids = np.empty(0, dtype=np.int64)
        self.vecs = np.empty((0, dim), dtype=np.float32)
        self.n = 0

    def append(self, ids: np.ndarray, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        need = self.n + len(ids)
        if need > len(self.ids):  # a new, larger buffer; older snapshots keep the old one
            cap = max(need, 2 * len(self.ids), 256)
            new_ids = np.empty(cap, dtype=np.int64)
            new_vecs = np.empty((cap, self.vecs.shape[1]), dtype=np.float32)
            new_ids[:self.n], new_vecs[:self.n] = self.ids[:self.n], self.vecs[:self.n]
            self.ids, self.vecs = new_ids, new_vecs
        self.ids[self.n:need], self.vecs[self.n:need] = ids, vecs
        self.n = need
        return self.ids[:need], self.vecs[:need]


@dataclass
class _Snapshot:
    index: VectorIndex | LayeredIndex
    generation: int
    built: float
    base: VectorIndex
    #: the largest catalog id the snapshot holds (ids only grow: newer rows have larger ids)
    max_id: int = 0
    tail: _TailBuffer | None = None
    gone: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    #: the catalog's partition-model setting it was built with ("" for none): a class-partitioned
    #: snapshot holds that model's classes and is never served once another model is in use
    partition: str = ""


class IndexCache:
    """Immutable index snapshots per index type, refreshed from the catalog.

    A refresh is incremental: the rows committed since the last one are appended to the
    snapshot's tail (read once, searched exactly), rows removed since are filtered out; only
    a large tail, many removals or a change of index type build a new base index. While a
    job writes, searches never wait for a refresh: it runs in a background thread at most
    every ``refresh_seconds`` and searches keep the previous snapshot meanwhile.
    """

    def __init__(self, readers: Readers, refresh_seconds: float, writer_busy: Any):
        self.readers = readers
        self.refresh_seconds = refresh_seconds
        self.writer_busy = writer_busy
        self._snaps: dict[str, _Snapshot] = {}
        self._builders: dict[str, ReaderCollection] = {}
        self._build = threading.Lock()
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        #: full (base) builds and incremental refreshes so far, for tests and metrics
        self.full_builds = 0
        self.refreshes = 0

    def get(self, reader: Collection, kind: str | None) -> VectorIndex | LayeredIndex:
        """The newest snapshot for ``kind`` (None: the collection's own index type).

        While a job keeps committing, a stale snapshot is served (refreshed in the background
        at most every ``refresh_seconds``); otherwise a stale one is refreshed first.
        """
        key = kind or ""
        generation = reader.catalog.generation()
        snap = self._snaps.get(key)
        if snap is not None and snap.partition != _wanted_partition(reader, snap):
            snap = None  # another model's classes: not even while a job writes (refreshed below)
        if snap is not None and snap.generation >= generation:
            return snap.index
        if snap is not None and self.writer_busy():
            if time.monotonic() - snap.built >= self.refresh_seconds:
                self._refresh_later(key, kind)
            return snap.index
        with self._build:
            return self._refresh(key, kind).index

    def _refresh_later(self, key: str, kind: str | None) -> None:
        with self._pending_lock:
            if key in self._pending:
                return
            self._pending.add(key)

        def run() -> None:
            try:
                with self._build:
                    self._refresh(key, kind)
            except Exception:  # noqa: BLE001 - the next search tries again (or builds in its thread)
                log.exception("refreshing the %s index snapshot failed", kind or "default")
            finally:
                with self._pending_lock:
                    self._pending.discard(key)

        threading.Thread(target=run, name="cbir-index-refresh", daemon=True).start()

    def _refresh(self, key: str, kind: str | None) -> _Snapshot:
        """Bring the snapshot of ``key`` up to date; the caller holds ``_build``."""
        builder = self._builders.get(key)
        if builder is None:
            builder = self._builders[key] = self.readers.open()
        generation = builder.catalog.generation()
        snap = self._snaps.get(key)
        if snap is not None and snap.partition != _wanted_partition(builder, snap):
            # `cbir models use` switched models: the builder's own index has the old classes too
            builder.close()
            builder = self._builders[key] = self.readers.open()
            snap = None
        if snap is not None and snap.generation >= generation:
            return snap
        self.refreshes += 1
        snap = self._incremental(builder, snap, kind) if snap is not None else None
        if snap is None:
            self.full_builds += 1
            partition = builder.catalog.get_meta(PARTITION_MODEL_KEY) or ""  # read before the classes
            base = builder.index(kind)
            use = getattr(base, "use_vector_source", None)
            if use is not None:  # re-scoring reads features in the searching thread's connection
                use(self._thread_features)
            ids = base.ids()
            snap = _Snapshot(base, generation, time.monotonic(), base, int(ids[-1]) if len(ids) else 0,
                             partition=partition)
        snap.generation = generation
        self._snaps[key] = snap
        return snap

    def _thread_features(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reader = self.readers.get()
        if reader is None:
            raise CollectionError("the collection is gone")
        return reader.vector_source(ids)

    def _incremental(self, builder: ReaderCollection, snap: _Snapshot, kind: str | None) -> _Snapshot | None:
        """``snap`` plus the rows committed since; None when a new base index is needed."""
        cat = builder.catalog
        n_ok = cat.count("ok")
        wanted = kind or builder.requested_index()
        target = choose_index(n_ok) if wanted == AUTO else wanted
        if target != snap.base.name or target == "class-partitioned":
            return None  # another backend now, or one whose searches need the classes of every row
        dim = snap.base.dim
        rows = cat.db.execute("SELECT id, feature FROM images WHERE status='ok' AND id > ? ORDER BY id",
                              (snap.max_id,)).fetchall()
        if any(r[1] is None or len(r[1]) != 2 * dim for r in rows):
            return None
        new_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        new = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f2").reshape(-1, dim).astype(np.float32)
        gone = snap.gone
        if n_ok != len(snap.index) + len(new_ids):  # rows were removed (or replaced) meanwhile
            have = np.union1d(snap.index.ids(), new_ids)
            want = cat.ok_ids()
            if len(np.setdiff1d(want, have, assume_unique=True)):
                return None  # rows we did not see as new (a commit between the two reads): rebuild
            gone = np.union1d(gone, np.setdiff1d(have, want, assume_unique=True))
        tail = snap.tail or _TailBuffer(dim)
        if (tail.n + len(new_ids)) * dim * 4 > TAIL_MAX_BYTES or len(gone) > GONE_MAX:
            return None
        if not len(new_ids) and len(gone) == len(snap.gone):
            return _Snapshot(snap.index, snap.generation, time.monotonic(), snap.base, snap.max_id,
                             snap.tail, snap.gone, snap.partition)
        tail_ids, tail_vecs = tail.append(new_ids, new) if len(new_ids) else (
            tail.ids[:tail.n], tail.vecs[:tail.n])
        index = LayeredIndex(snap.base, tail_ids, tail_vecs, gone)
        max_id = int(new_ids[-1]) if len(new_ids) else snap.max_id
        return _Snapshot(index, snap.generation, time.monotonic(), snap.base, max_id, tail, gone,
                         snap.partition)

    def invalidate(self) -> None:
        """Forget every snapshot (after a rebuild or a change of index type)."""
        with self._build:
            self._snaps.clear()
            for b in self._builders.values():
                b.close()
            self._builders.clear()

    def size(self) -> int:
        snap = self._snaps.get("")
        return len(snap.index) if snap else 0


def _wanted_partition(col: Collection, snap: _Snapshot) -> str:
    """What ``snap.partition`` must be for ``snap`` to be served: the catalog's partition-model
    setting if it is class-partitioned (one meta row read), else its own (no classes in it)."""
    if snap.base.name != "class-partitioned":
        return snap.partition
    return col.catalog.get_meta(PARTITION_MODEL_KEY) or ""


def thumbnail_path(directory: Path, image_id: int) -> Path:
    return directory / THUMB_DIR / f"{image_id % 256:02x}" / f"{image_id}.jpg"


def make_thumbnail(source: bytes, dest: Path, size: int, max_pixels: int, name: str | None = None) -> None:
    """Decode the image's bytes (read by the caller through cbir.io.saferead) safely (pixel
    cap, draft JPEG) and write a JPEG thumbnail atomically."""
    im = load_image(source, target_size=size, max_pixels=max_pixels, name=name)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        im.save(tmp, "JPEG", quality=85)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class ServiceState:
    """Everything the routes share; ``start``/``stop`` run in the app's lifespan."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.directory = config.collection
        self.metrics = Metrics()
        self.readers = Readers(self.directory)
        self.store: JobStore | None = None
        self.runner: JobRunner | None = None
        #: job steps writing to the catalog right now (searches then never wait for a refresh)
        self._writing = 0
        self.index_cache = IndexCache(self.readers, config.index_refresh_seconds, lambda: self._writing > 0)
        self._lock_fd: int | None = None
        self._warm: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise CollectionError(f"{self.directory} exists and is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / SERVICE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CollectionError(f"another `cbir serve` is already serving {self.directory}; "
                                  "stop it or choose another --collection") from None
        self._lock_fd = fd
        self.store = JobStore(self.directory / JOBS_NAME)
        n = self.store.mark_interrupted()
        if n:
            log.warning("%d job(s) were interrupted by the last shutdown; start them again to resume", n)
        self.runner = JobRunner(self.store, {"index": self._run_index, "clear": self._run_clear,
                                             "rebuild": self._run_rebuild, "train": self._run_train})
        self.runner.start()
        if self.readers.exists():  # the first search should not pay for loading the index
            self._warm = threading.Thread(target=self._warm_index, name="cbir-index-warm", daemon=True)
            self._warm.start()

    def _warm_index(self) -> None:
        """Load (memory-map) the collection's index and sync it, before any search asks."""
        try:
            # its own connection: stop() closes the registered readers, and closing one while
            # this thread runs a query on it crashed the process (SIGSEGV in sqlite3)
            reader = self.readers.open(register=False)
            try:
                self.index_cache.get(reader, None)
            finally:
                reader.close()
        except Exception:  # noqa: BLE001 - the first search builds it then, and says why
            log.exception("warming the index snapshot failed")

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        if self._warm is not None:
            self._warm.join(timeout=10.0)  # mapping an index takes milliseconds; a big sync may not
        self.index_cache.invalidate()
        self.readers.close()
        if self.store is not None:
            self.store.close()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- job handlers (run in the worker thread) -------------------------------------------
    def _writer(self, ctx: JobContext, col: Collection) -> WriterLock:
        """Take the collection's writer lock, waiting (cancellably) for another process."""
        lock = col.writer_lock()
        while not lock.acquire():
            ctx.message("waiting for another cbir process that is writing to this collection")
            if ctx.stop.wait(1.0):
                ctx.check_stop()
        return lock

    def _work(self, ctx: JobContext, function: str, **kwargs: Any) -> Any:
        """Run ``cbir.service.workers.<function>`` in a child process (or this thread)."""
        self._writing += 1  # only the one job thread changes it
        try:
            if self.config.isolate_jobs:
                return workers.run_in_child(f"cbir.service.workers:{function}", kwargs, stop=ctx.stop,
                                            on_progress=ctx.progress, nice=self.config.job_nice,
                                            cpus=self.config.job_cpus)
            return getattr(workers, function)(progress=ctx.progress, stop=ctx.stop, **kwargs)
        finally:
            self._writing -= 1

    def _run_index(self, ctx: JobContext) -> JobOutcome:
        # the folder was checked when the job was made; check again (it may have moved)
        folder = resolve_under_roots(ctx.params["path"], self.config.allow_roots)
        if not folder.exists():
            raise InvalidRequest(f"{folder} no longer exists")
        out = self._work(ctx, "index_folders", collection=str(self.directory), folders=[str(folder)],
                         extractor=self.config.extractor, commit_every=self.config.commit_every,
                         retry_errors=bool(ctx.params.get("retry_errors")),
                         index_type=ctx.params.get("index_type"))
        if ctx.params.get("index_type"):
            self.index_cache.invalidate()
        d = out["result"]
        ctx.progress(d["processed"], d["processed"])
        msg = (f"added {d['added']}, updated {d['updated']}, removed {d['removed']}, unchanged "
               f"{d['unchanged']}, skipped {d['skipped']} in {d['seconds']:.1f} s")
        return JobOutcome(result=d, problems=[tuple(p) for p in out["problems"]], message=msg)

    def _run_clear(self, ctx: JobContext) -> JobOutcome:
        if not self.readers.exists():
            return JobOutcome(result={"removed": 0}, message="the collection is already empty")
        with Collection.open(self.directory) as col:
            lock = self._writer(ctx, col)
            try:
                n = col.catalog.clear()
                col.drop_index()
                shutil.rmtree(self.directory / THUMB_DIR, ignore_errors=True)
                col.index()
            finally:
                lock.release()
        self.index_cache.invalidate()
        return JobOutcome(result={"removed": n}, message=f"removed {n} images from the collection")

    def _run_rebuild(self, ctx: JobContext) -> JobOutcome:
        if not self.readers.exists():
            raise InvalidRequest("there is no collection to rebuild yet: index a folder first")
        folders = [str(f) for f in self._indexed_folders()] if ctx.params.get("rescan") else []
        out = self._work(ctx, "index_folders", collection=str(self.directory), folders=folders,
                         commit_every=self.config.commit_every, index_type=ctx.params.get("index_type"),
                         rebuild=True)
        self.index_cache.invalidate()
        d = out["result"]
        result = {"index_type": d.get("index_type"), "images": d.get("images"), "rescanned": folders,
                  "added": d["added"], "updated": d["updated"], "removed": d["removed"]}
        return JobOutcome(result=result, problems=[tuple(p) for p in out["problems"]],
                          message=f"rebuilt the {d.get('index_type')} index of {d.get('images')} images")

    def _indexed_folders(self) -> list[Path]:
        """Folders of earlier successful indexing jobs that are still allowed and present."""
        assert self.store is not None
        out: list[Path] = []
        for job in self.store.list(limit=1000, status="succeeded", kind="index"):
            try:
                p = resolve_under_roots(job["params"]["path"], self.config.allow_roots)
            except InvalidRequest:
                continue
            if p.is_dir() and p not in out:
                out.append(p)
        return out

    def _run_train(self, ctx: JobContext) -> JobOutcome:
        folder = Path(ctx.params["folder"])
        uploaded = bool(ctx.params.get("uploaded"))
        manifest = self.readers.manifest()
        extractor = manifest.extractor if manifest else self.config.extractor
        upload = Path(ctx.params.get("upload") or folder)
        cache = upload.with_name(upload.name + "-features") if uploaded else None
        ctx.message(f"reading the training images in {folder.name if uploaded else folder}")
        try:
            record = self._work(ctx, "train_model", collection=str(self.directory), folder=str(folder),
                                name=ctx.params["name"], extractor=extractor,
                                options=ctx.params.get("options") or {},
                                trained_by=ctx.params.get("trained_by"),
                                cache_dir=str(cache) if cache else None)
            if ctx.stop.is_set():  # the loop stopped on the cancel and saved what it had
                raise JobCancelled()
        except JobCancelled:
            self._drop_model(ctx.params["name"])  # cancelled means no model, not a half-trained one
            raise
        finally:
            if uploaded:
                shutil.rmtree(upload, ignore_errors=True)
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
        acc = record.get("val_accuracy")
        epochs = int(record.get("epochs") or 0)
        if epochs and not ctx.stop.is_set():  # early stopping ends before the maximum: end the bar there
            ctx.progress(epochs, epochs, f"trained {epochs} epochs")
        return JobOutcome(result=record, message=f"trained model {record['name']} in {record['epochs']} "
                          f"epochs" + (f", validation accuracy {acc:.1%}" if acc is not None else ""))

    def _drop_model(self, name: str) -> None:
        """Delete the model a cancelled training job may have saved (the name was new when the
        job was made: an existing name is refused before anything runs)."""
        from cbir.service import training

        try:
            training.registry(self.directory).delete(name)
        except Exception:  # noqa: BLE001 - nothing saved, or already gone
            log.debug("no model %s to drop after a cancel", name, exc_info=True)

    # -- helpers for routes -----------------------------------------------------------------
    def gauges(self) -> list[tuple[str, str, dict[str, object], float]]:
        out: list[tuple[str, str, dict[str, object], float]] = []
        reader = self.readers.get()
        if reader is not None:
            out.append(("cbir_collection_images", "Images in the collection (status ok).", {},
                        reader.catalog.count("ok")))
            out.append(("cbir_collection_errors", "Files that could not be indexed.", {},
                        reader.catalog.count("error")))
            out.append(("cbir_catalog_generation", "Catalog generation (bumped by every commit).", {},
                        reader.catalog.generation()))
        out.append(("cbir_index_snapshot_vectors", "Vectors in the in-memory index used by searches.",
                    {}, self.index_cache.size()))
        out.append(("cbir_index_snapshot_refreshes", "Index snapshot refreshes, by how they were made "
                    "(full: a new base index; incremental: committed rows appended).",
                    {"how": "full"}, self.index_cache.full_builds))
        out.append(("cbir_index_snapshot_refreshes", "", {"how": "incremental"},
                    self.index_cache.refreshes - self.index_cache.full_builds))
        if self.store is not None:
            for status in ("queued", "running"):
                out.append(("cbir_jobs", "Jobs by status.", {"status": status},
                            self.store.count((status,))))
        return out
