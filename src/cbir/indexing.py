"""Incremental, resumable, crash-safe indexing of folders into a collection.

Only new or changed files (by size and mtime) are decoded and embedded; files gone
from disk are dropped. Results are committed in batches, each one SQLite transaction,
so ``kill -9`` at any moment loses at most the batch in flight, and the next run picks
up exactly the files that are not yet committed. A file whose content is already in
the collection (same sha256) reuses the stored vector instead of being embedded again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.collection import Collection
from cbir.errors import InvalidImage
from cbir.extract.base import top_labels
from cbir.extract.pipeline import embed_files
from cbir.io.files import DEFAULT_MAX_BYTES, FoundFile, SkippedFile, iter_files
from cbir.io.metadata import PhotoMeta, meta_of, read_meta
from cbir.io.saferead import read_file
from cbir.io.tags import SidecarNames, read_tags
from cbir.store import ImageRecord, photometa

ProgressFn = Callable[[int, int], None]


@dataclass
class IndexReport:
    """What one indexing run did. ``skipped`` pairs are (path, reason)."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    processed: int = 0
    index_type: str | None = None
    #: images indexed earlier whose photo metadata (EXIF date, camera) was read in this run
    metadata_read: int = 0

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def problems(self) -> list[tuple[str, str]]:
        return self.failed + self.skipped

    def as_dict(self) -> dict:
        reasons = Counter(r for _, r in self.problems)
        return {
            "added": self.added, "updated": self.updated, "removed": self.removed,
            "unchanged": self.unchanged, "duplicates": self.duplicates,
            "skipped": len(self.problems), "skipped_reasons": dict(reasons.most_common()),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.problems],
            "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 1),
            "index_type": self.index_type, "metadata_read": self.metadata_read,
        }

    def to_dict(self) -> dict:
        """The report as plain JSON-ready data (the same as ``cbir index --json`` prints)."""
        return self.as_dict()


ROOTS_META = "indexed_roots"


def indexed_roots(catalog: Any) -> list[str]:
    """The folders (or files) ever indexed into a catalog, as real paths at indexing time."""
    try:
        roots = json.loads(catalog.get_meta(ROOTS_META) or "[]")
    except ValueError:
        return []
    return [r for r in roots if isinstance(r, str)] if isinstance(roots, list) else []


def record_roots(collection: Collection, roots: Iterable[Path]) -> None:
    """Remember the real paths of ``roots`` (resolved now, so a later swap leads nowhere)."""
    known = indexed_roots(collection.catalog)
    new = [r for r in (os.path.realpath(p) for p in roots) if r not in known]
    if new:
        collection.catalog.set_meta(ROOTS_META, json.dumps(sorted(known + new)))


def _abspath(p: Path | str) -> str:
    return os.path.abspath(os.fspath(p))


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def remove_paths(collection: Collection, paths: Iterable[Path | str]) -> tuple[int, list[str]]:
    """Drop files, or everything indexed under folders, from the catalog and the index.

    Returns (images removed, the given paths that matched nothing in the collection).
    The caller must hold the collection's writer lock.
    """
    found: list[str] = []
    missing: list[str] = []
    for p in paths:
        states = collection.catalog.file_states(under=_abspath(p))
        if not states:
            missing.append(os.fspath(p))
        found += list(states)
    n = collection.catalog.remove_paths(found)
    collection.index()
    return n, missing


def plan(collection: Collection, roots: Iterable[Path], *, retry_errors: bool = False,
         follow_symlinks: bool = True, max_bytes: int = DEFAULT_MAX_BYTES,
         ) -> tuple[list[FoundFile], list[str], list[tuple[str, str]], int]:
    """Walk ``roots`` and compare with the catalog.

    Returns (files to process, catalog paths to remove, walker skips, unchanged count).
    """
    todo: list[FoundFile] = []
    remove: list[str] = []
    skipped: list[tuple[str, str]] = []
    unchanged = 0
    for root in roots:
        root_abs = _abspath(root)
        known = collection.catalog.file_states(under=root_abs)
        seen: set[str] = set()
        for item in iter_files(Path(root_abs), follow_symlinks=follow_symlinks, max_bytes=max_bytes):
            if isinstance(item, SkippedFile):
                skipped.append((item.path, item.reason))
                continue
            path = _abspath(item.path)
            if not _is_utf8(path):
                skipped.append((repr(path), "file name is not valid UTF-8"))
                continue
            seen.add(path)
            state = known.get(path)
            if state and state[0] == item.size and state[1] == item.mtime_ns and (
                state[2] == "ok" or not retry_errors
            ):
                unchanged += 1
            else:
                todo.append(dataclasses.replace(item, path=Path(path)))
        remove += [p for p in known if p not in seen]
    return todo, remove, skipped, unchanged


def index_paths(
    collection: Collection,
    roots: Iterable[Path],
    *,
    batch_size: int = 32,
    commit_every: int = 256,
    commit_seconds: float = 10.0,
    regions: bool = False,
    retry_errors: bool = False,
    progress: bool = True,
    on_progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    follow_symlinks: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    engine: str = "local",
    ray_options: Any = None,
) -> IndexReport:
    """Bring the collection up to date with ``roots`` (folders or single files).

    The caller must hold the collection's writer lock. ``on_progress(done, total)`` is
    called after each result (for services); ``stop`` ends the run cleanly after the
    current batch is committed. ``follow_symlinks=False`` ignores symbolic links (the
    service uses it so that a link cannot reach files outside an allowed root).
    Files are read once each, through cbir.io.saferead: a file that became a link, FIFO,
    device or another file since the walk, or grew past ``max_bytes``, is skipped with the
    reason. The roots are recorded in the catalog (the service serves files under them only).
    ``engine="ray"`` reads, decodes and embeds on Ray (cbir.extract.ray_engine, ``ray_options``
    a RayOptions); planning, committing and the index stay here.
    """
    t0 = time.perf_counter()
    roots = [Path(r) for r in roots]
    report = IndexReport()
    todo, remove, report.skipped, report.unchanged = plan(
        collection, roots, retry_errors=retry_errors, follow_symlinks=follow_symlinks,
        max_bytes=max_bytes)
    catalog = collection.catalog
    record_roots(collection, roots)
    known_states = {}
    for root in roots:
        known_states.update(catalog.file_states(under=_abspath(root)))
    if remove:
        report.removed = catalog.remove_paths(remove)

    if todo:
        extractor = collection.indexing_extractor()
        hashes = catalog.ok_hashes()
        pending: list[ImageRecord] = []
        last_commit = time.monotonic()

        pending_meta: list[Any] = []  # aligned with pending: PhotoMeta or None

        def flush() -> None:
            nonlocal last_commit
            if pending:
                ids = catalog.commit_batch(pending)
                for rec, rid in zip(pending, ids, strict=True):
                    if rec.status == "ok" and rec.sha256 and rec.sha256 not in hashes:
                        hashes[rec.sha256] = rid
                # after the images: a kill in between only leaves them without metadata
                photometa.put(catalog, [(rid, m) for rid, m in zip(ids, pending_meta, strict=True)
                                        if m is not None])
                pending.clear()
                pending_meta.clear()
            last_commit = time.monotonic()

        def known_content(_key: int, sha256: str) -> bool:
            return sha256 not in hashes

        def read(key: int, _path: Path) -> bytes:
            f = todo[key]
            return read_file(f.read_path, max_bytes=max_bytes, identity=f.ident, label=str(f.path))

        sidecars = SidecarNames()

        def tags_and_meta(key: int, _path: Path, data: bytes, image: Any) -> tuple[list[str], PhotoMeta]:
            # (tags, photo metadata) from the bytes already in memory; the Ray engine's workers
            # return the same pair in their result rows (cbir.extract.ray_engine)
            path = todo[key].path
            return (read_tags(path, image=image, data=data, siblings=sidecars(path.parent)),
                    meta_of(data, image))

        run_hashes: set[str] = set()  # contents embedded in this run, not yet committed

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="img", file=sys.stderr, dynamic_ncols=True,
                       desc="indexing", smoothing=0.1)
        items = ((i, f.path) for i, f in enumerate(todo))
        done = 0
        if engine == "ray":
            from cbir.extract.ray_engine import ray_embed_files

            results = ray_embed_files(todo, extractor, batch_size=batch_size, regions=regions,
                                      known_hashes=hashes, max_bytes=max_bytes, options=ray_options)
        else:
            results = embed_files(items, extractor, batch_size=batch_size, regions=regions,
                                  read_hook=known_content, reader=read, inspect=tags_and_meta)
        try:
            for res in _in_key_order(results):
                f = todo[res.key]
                path = str(f.path)
                rec = ImageRecord(path=path, size=f.size, mtime_ns=f.mtime_ns, sha256=res.sha256,
                                  width=res.width or None, height=res.height or None)
                if res.error:
                    rec.status, rec.error = "error", res.error
                    report.failed.append((path, res.error))
                elif res.skipped:
                    twin = catalog.get(id=hashes[res.sha256], with_feature=True) \
                        if res.sha256 in hashes else None
                    if twin is None:  # the twin vanished meanwhile: treat as an error, retry later
                        rec.status, rec.error = "error", "duplicate of a file that was removed"
                        report.failed.append((path, rec.error))
                    else:
                        rec.feature, rec.labels, rec.top_class = twin.feature, twin.labels, \
                            twin.top_class
                        rec.class_probs = catalog.class_probs_blobs([twin.id]).get(twin.id)
                        rec.width, rec.height = twin.width, twin.height
                        if regions:
                            rec.regions = catalog.regions([twin.id]).get(twin.id)
                        report.duplicates += 1
                else:
                    if res.sha256 in hashes or res.sha256 in run_hashes:
                        report.duplicates += 1  # same content twice in flight: both embedded
                    run_hashes.add(res.sha256)
                    rec.feature = res.features
                    if res.probs is not None:
                        rec.labels = res.labels if res.labels is not None else \
                            top_labels(res.probs[None, :], extractor.class_names, 5)[0]
                        rec.top_class = res.top_class if res.top_class is not None else \
                            int(np.argmax(res.probs))
                        rec.class_probs = res.probs
                    rec.regions = res.regions if regions else None
                tags, meta = res.extra if isinstance(res.extra, tuple) else ([], None)
                if rec.status == "ok":
                    rec.tags = tags
                    if path in known_states:
                        report.updated += 1
                    else:
                        report.added += 1
                pending.append(rec)
                pending_meta.append(meta if rec.status == "ok" else None)
                done += 1
                report.processed += 1
                if bar is not None:
                    bar.update(1)
                if on_progress is not None:
                    on_progress(done, len(todo))
                if stop is not None and stop.is_set():
                    break  # the finally below commits what is pending: cancel is prompt
                if len(pending) >= commit_every or time.monotonic() - last_commit > commit_seconds:
                    flush()
        finally:
            # every pending record is complete on its own, so even on Ctrl-C we keep them
            flush()
            results.close()  # stop the workers now (a Ray pipeline, a local Ray) on a break
            if bar is not None:
                bar.close()

    if stop is None or not stop.is_set():
        report.metadata_read = read_missing_metadata(collection, roots, max_bytes=max_bytes,
                                                     progress=progress, stop=stop)
    idx = collection.index()
    report.index_type = idx.name
    report.seconds = time.perf_counter() - t0
    return report


#: results held back to commit in walk order before they are let through out of order
REORDER_WINDOW = 2048


def _in_key_order(results: Iterable[Any], window: int = REORDER_WINDOW) -> Iterable[Any]:
    """Results (keys 0, 1, 2, ... in any order) in key order, so that catalog ids follow the
    walk whatever the threads' timing (the same folder indexes to the same ids, and what is
    trained on them is reproducible). A file that takes long holds back at most ``window``
    results; past that they pass out of order rather than wait."""
    want = 0
    held: dict[int, Any] = {}
    for res in results:
        if res.key < want:  # its turn was given away (the window overflowed): no more waiting
            yield res
            continue
        held[res.key] = res
        while want in held:
            yield held.pop(want)
            want += 1
        while len(held) > window:
            first = min(held)
            yield held.pop(first)
            want = max(want, first + 1)
            while want in held:
                yield held.pop(want)
                want += 1
    for key in sorted(held):
        yield held[key]


def read_missing_metadata(collection: Collection, roots: Iterable[Path], *, max_bytes: int,
                          progress: bool = False, stop: threading.Event | None = None) -> int:
    """Read the photo metadata (EXIF date, camera, GPS) of indexed images under ``roots`` that
    have none (indexed before cbir kept it, or a run killed between the two commits): only
    the files' headers, safely; a file that cannot be read keeps no metadata. Returns how
    many were read. The caller holds the writer lock."""
    catalog = collection.catalog
    prefixes = [_abspath(r) for r in roots]
    todo = [(i, p) for i, p, _ in photometa.missing(catalog)
            if any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for r in prefixes)]
    if not todo:
        return 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", file=sys.stderr, dynamic_ncols=True,
                   desc="photo metadata")
    rows: list[tuple[int, Any]] = []
    done = 0
    try:
        for i, p in todo:
            if stop is not None and stop.is_set():
                break
            try:
                rows.append((i, read_meta(p, max_bytes=max_bytes)))
            except (InvalidImage, OSError):
                rows.append((i, PhotoMeta()))  # unreadable now: an empty row, not asked again
            done += 1
            if bar is not None:
                bar.update(1)
            if len(rows) >= 1000:
                photometa.put(catalog, rows)
                rows.clear()
    finally:
        photometa.put(catalog, rows)
        if bar is not None:
            bar.close()
    return done
