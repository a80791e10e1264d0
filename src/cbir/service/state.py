"""What a running service holds: the collection's readers, a shared index, jobs, metrics.

Concurrency model. Each request thread gets its own ``Collection`` (its own SQLite
connection, see ``Readers``). The vector index is shared: ``IndexCache`` keeps one
immutable snapshot per index type, built from committed catalog rows only, and swaps in
a new snapshot when the catalog's generation moves on; a search keeps the snapshot it
started with, so readers never see a half-built index and never wait for the writer.
Writes (indexing, clear, rebuild, training) run one at a time in the job worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from cbir.collection import Collection
from cbir.errors import CollectionError, InvalidRequest
from cbir.extract import FeatureExtractor, create_extractor
from cbir.index import VectorIndex
from cbir.io.images import load_image
from cbir.service import workers
from cbir.service.config import ServiceConfig
from cbir.service.jobs import JOBS_NAME, JobContext, JobOutcome, JobRunner, JobStore
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

    pinned: VectorIndex | None = None

    def index(self, kind: str | None = None, *, persist: bool = True) -> VectorIndex:
        if self.pinned is not None:
            return self.pinned
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

    def open(self) -> ReaderCollection:
        """A new reader (own connection) the caller must register or close."""
        manifest = self.manifest()
        if manifest is None:
            raise CollectionError("no collection yet: index a folder first")
        col = ReaderCollection(self.directory, manifest,
                               Catalog(self.directory / CATALOG_NAME, manifest.dim))
        col._extractor = self.extractor()
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


@dataclass
class _Snapshot:
    index: VectorIndex
    generation: int
    built: float


class IndexCache:
    """Immutable index snapshots per index type, refreshed from the catalog."""

    def __init__(self, readers: Readers, refresh_seconds: float, writer_busy: Any):
        self.readers = readers
        self.refresh_seconds = refresh_seconds
        self.writer_busy = writer_busy
        self._snaps: dict[str, _Snapshot] = {}
        self._builders: dict[str, ReaderCollection] = {}
        self._build = threading.Lock()

    def get(self, reader: Collection, kind: str | None) -> VectorIndex:
        """The newest snapshot for ``kind`` (None: the collection's own index type).

        A stale snapshot is served while another thread builds the next one, and, while a
        job keeps committing, for up to ``refresh_seconds`` after the last build.
        """
        key = kind or ""
        generation = reader.catalog.generation()
        snap = self._snaps.get(key)
        if snap is not None and snap.generation >= generation:
            return snap.index
        if snap is not None:
            recent = time.monotonic() - snap.built < self.refresh_seconds
            if (recent and self.writer_busy()) or not self._build.acquire(blocking=False):
                return snap.index
        else:
            self._build.acquire()
        try:
            snap = self._snaps.get(key)
            if snap is not None and snap.generation >= generation:
                return snap.index
            builder = self._builders.get(key)
            if builder is None:
                builder = self._builders[key] = self.readers.open()
            gen = builder.catalog.generation()
            idx = builder.index(kind)
            self._snaps[key] = _Snapshot(idx, gen, time.monotonic())
            return idx
        finally:
            self._build.release()

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


def thumbnail_path(directory: Path, image_id: int) -> Path:
    return directory / THUMB_DIR / f"{image_id % 256:02x}" / f"{image_id}.jpg"


def make_thumbnail(source: Path, dest: Path, size: int, max_pixels: int) -> None:
    """Decode ``source`` safely (pixel cap, draft JPEG) and write a JPEG thumbnail atomically."""
    im = load_image(source, target_size=size, max_pixels=max_pixels)
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
        self.index_cache = IndexCache(self.readers, config.index_refresh_seconds,
                                      lambda: self.runner is not None and self.runner.busy)
        self._lock_fd: int | None = None

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

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
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
        if self.config.isolate_jobs:
            return workers.run_in_child(f"cbir.service.workers:{function}", kwargs, stop=ctx.stop,
                                        on_progress=ctx.progress)
        return getattr(workers, function)(progress=ctx.progress, stop=ctx.stop, **kwargs)

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
        finally:
            if uploaded:
                shutil.rmtree(upload, ignore_errors=True)
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
        acc = record.get("val_accuracy")
        return JobOutcome(result=record, message=f"trained model {record['name']} in {record['epochs']} "
                          f"epochs" + (f", validation accuracy {acc:.1%}" if acc is not None else ""))

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
        if self.store is not None:
            for status in ("queued", "running"):
                out.append(("cbir_jobs", "Jobs by status.", {"status": status},
                            self.store.count((status,))))
        return out
