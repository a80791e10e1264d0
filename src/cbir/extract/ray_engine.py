"""Distributed extraction on Ray Data: the ``--engine ray`` of ``cbir index``.

A drop-in for :func:`cbir.extract.pipeline.embed_files` in the indexer: the driver plans the
files and commits the results to the SQLite catalog exactly as with the local pipeline; only
"read, decode and embed a batch of planned files" runs on the Ray cluster::

    planned files (driver) -> read tasks        (num_cpus=read_cpus; every worker sees the files)
                           -> decode + embed    (actor pool, num_cpus=actor_cpus, one model each)
                           -> iter_batches      (streamed back to the driver) -> ItemResult

Read tasks open each file through :mod:`cbir.io.saferead` (no link followed, no FIFO or device
opened, size limit, the walk's identity checked), as the local reader does. Actors run the
local pipeline's own per-file code (:func:`embed_files` over their batch: hash, skip content
already indexed, embedded tags, photo metadata, decode, preprocess, embed), so features are the
local ones, and each result row carries the tags and photo metadata (EXIF date, camera, GPS,
displayed size) the driver stores with its batch: the driver never opens the photos.

The actors are placed ``SPREAD`` over the nodes; each result row says which node read and which
embedded its file, and the driver logs the tally (an INFO record of this module, with a
``ray_nodes`` attribute).

Fractional CPUs: an actor holds its CPU reservation for its whole life, so actors at
``num_cpus=1`` filling a node leave the read tasks no CPU to be scheduled on and the pipeline
hangs without a word. Actors reserve ``actor_cpus`` (0.5) and read tasks ``read_cpus`` (0.25):
a 2-CPU node fits two actors and four read tasks. Each actor runs onnxruntime with
``intra_op_threads`` (1) threads, the local pipeline's best setting on a small machine.

The SQLite catalog stays on the driver: one writer, batches committed in one transaction each
(crash-safe, resumable), and no worker needs to see the collection's directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir.errors import BackendUnavailable, CbirError, IndexMismatch, InvalidImage
from cbir.extract.base import FeatureExtractor
from cbir.extract.pipeline import ItemResult, embed_files
from cbir.io.files import FoundFile
from cbir.io.saferead import FileRefused, open_file, os_reason, read_fd

#: rows per block of the planned-file dataset at most this many blocks (read tasks)
MAX_BLOCKS = 10_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray.

    address: None starts a local Ray for the run (and stops it after); ``"auto"`` or
        ``"ray://HOST:10001"`` joins a running cluster (left running).
    actors: size of the decode + embed actor pool; default the cluster's CPUs divided by
        ``intra_op_threads`` (one model per core).
    actor_cpus, read_cpus: the CPUs Ray reserves per actor and per read task (fractional, so
        the actors never starve the readers).
    intra_op_threads: onnxruntime threads per actor.
    object_store_mb: object store size of a local Ray started here (ignored when joining).
    """

    address: str | None = None
    actors: int | None = None
    actor_cpus: float = 0.5
    read_cpus: float = 0.25
    intra_op_threads: int = 1
    object_store_mb: int = 512


# -- workers ------------------------------------------------------------------------------
def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def read_planned(path: str, label: str, ident: tuple[int, int] | None, *, max_bytes: int,
                 same_node: bool) -> bytes:
    """Read one planned file through saferead, as the local indexer's reader does.

    On the driver's node the walk's ``(st_dev, st_ino)`` must match; on another node the
    device number of a shared file system differs, so only the inode is compared (NFS,
    CephFS, Lustre... give every client the server's inode numbers).
    """
    try:
        with open_file(path, max_bytes=max_bytes, identity=ident if same_node else None,
                       label=label) as (fd, st):
            if ident is not None and not same_node and st.st_ino != ident[1]:
                raise FileRefused(label, "the file was replaced by another one while being "
                                         "read; index again")
            return read_fd(fd, max_bytes, label)
    except OSError as e:
        raise InvalidImage(label, os_reason(e, path)) from None


def _read_batch(batch: dict[str, np.ndarray], *, max_bytes: int, driver_node: str
                ) -> dict[str, np.ndarray]:
    """Ray task: the bytes of each planned file, or the reason it cannot be read."""
    node = _node_id()
    same_node = node == driver_node
    data: list[bytes] = []
    errors: list[str] = []
    for path, label, dev, ino in zip(batch["read_path"], batch["path"], batch["dev"],
                                     batch["ino"], strict=True):
        ident = (int(dev), int(ino)) if int(ino) >= 0 else None
        try:
            data.append(read_planned(str(path), str(label), ident, max_bytes=max_bytes,
                                     same_node=same_node))
            errors.append("")
        except InvalidImage as e:
            data.append(b"")
            errors.append(e.reason or "cannot read the file")
    return {"key": batch["key"], "path": batch["path"],
            "data": np.array(data, dtype=object), "error": np.array(errors, dtype=object),
            "node": np.array([node] * len(data), dtype=object)}


class _Embedder:
    """Ray actor: one extractor; decodes and embeds batches with the local pipeline's code."""

    def __init__(self, name: str, kwargs: dict[str, Any], expected: str, regions: bool,
                 known: Any) -> None:
        import ray

        from cbir.extract import create_extractor

        self.ext = create_extractor(name, **kwargs)
        got = json.dumps([self.ext.name, self.ext.dim, self.ext.preprocessing], sort_keys=True)
        if got != expected:  # another cbir version on this node: its vectors would not compare
            raise IndexMismatch(f"the extractor on Ray node {_node_id()} differs from the "
                                f"driver's ({got} != {expected}); install the same cbir there")
        self.regions = regions
        self.known = ray.get(known) if isinstance(known, ray.ObjectRef) else known

    def _new_content(self, _key: int, sha256: str) -> bool:
        k = self.known
        if len(k) == 0:
            return True
        digest = bytes.fromhex(sha256)
        i = int(np.searchsorted(k, digest))
        # numpy's S32 items drop trailing NUL bytes when read back: compare likewise
        return not (i < len(k) and k[i] == digest.rstrip(b"\0"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cbir.io.metadata import meta_of
        from cbir.io.tags import read_tags

        keys = [int(k) for k in batch["key"]]
        got = {k: (d, e) for k, d, e in zip(keys, batch["data"], batch["error"], strict=True)}

        def reader(key: int, path: Path) -> bytes:
            data, error = got[key]
            if error:
                raise InvalidImage(str(path), str(error))
            return bytes(data)

        def tags_and_meta(_key: int, path: Path, data: bytes, image: Any) -> tuple[list[str], Any]:
            # the local indexer's pair: (tags, photo metadata) from the bytes read here, so
            # the driver stores both with the batch and never reads the file again
            return read_tags(path, image=image, data=data), meta_of(data, image)

        items = [(k, Path(str(p))) for k, p in zip(keys, batch["path"], strict=True)]
        results = {r.key: r for r in embed_files(
            items, self.ext, batch_size=max(1, len(items)), decode_workers=1, infer_workers=1,
            regions=self.regions, read_hook=self._new_content, reader=reader, inspect=tags_and_meta)}
        out = _to_columns([results[k] for k in keys], self.ext, self.regions)
        # where each file was read and embedded: the driver tallies it (log record at the end)
        out["read_node"] = np.asarray(batch["node"], dtype=object)
        out["node"] = np.array([_node_id()] * len(keys), dtype=object)
        return out


def _to_columns(results: list[ItemResult[int]], ext: FeatureExtractor, regions: bool
                ) -> dict[str, np.ndarray]:
    """ItemResults -> one columnar batch (fixed-shape arrays, zeros where there is no value)."""
    n = len(results)
    feats = np.zeros((n, ext.dim), np.float32)
    probs = np.zeros((n, len(ext.class_names)), np.float32) if ext.class_names else None
    regs: np.ndarray | None = None
    for i, r in enumerate(results):
        if r.features is not None:
            feats[i] = r.features
            if probs is not None and r.probs is not None:
                probs[i] = r.probs
            if regions and r.regions is not None:
                if regs is None:
                    regs = np.zeros((n, *r.regions.shape), np.float32)
                regs[i] = r.regions
    out = {
        "key": np.array([r.key for r in results], np.int64),
        "sha256": np.array([r.sha256 or "" for r in results], dtype=object),
        "size": np.array([r.size for r in results], np.int64),
        "width": np.array([r.width for r in results], np.int64),
        "height": np.array([r.height for r in results], np.int64),
        "error": np.array([r.error or "" for r in results], dtype=object),
        "skipped": np.array([r.skipped for r in results], bool),
        "ok": np.array([r.features is not None for r in results], bool),
        "has_probs": np.array([r.probs is not None for r in results], bool),
        "tags": np.array([json.dumps(_tags(r.extra)) for r in results], dtype=object),
        "meta": np.array([json.dumps(_meta(r.extra)) for r in results], dtype=object),
        "features": feats,
    }
    if probs is not None:
        out["probs"] = probs
    if regs is not None:
        out["regions"] = regs
    return out


def _tags(extra: Any) -> list[str] | None:
    return list(extra[0]) if isinstance(extra, tuple) else None


def _meta(extra: Any) -> dict[str, Any] | None:
    return extra[1].to_dict() if isinstance(extra, tuple) and extra[1] is not None else None


# -- driver -------------------------------------------------------------------------------
def _extra(tags_json: Any, meta_json: Any) -> tuple[list[str], Any] | None:
    """A row's tags and metadata -> the local indexer's ``(tags, PhotoMeta)`` (None: unread)."""
    from cbir.io.metadata import PhotoMeta

    try:
        tags, meta = json.loads(str(tags_json)), json.loads(str(meta_json))
    except ValueError:
        return None
    if tags is None:
        return None
    return list(tags), PhotoMeta.from_dict(meta) if isinstance(meta, dict) else None


def _results(batch: dict[str, np.ndarray], files: Sequence[FoundFile]) -> Iterator[ItemResult[int]]:
    """One columnar batch streamed back -> ItemResults (arrays copied out of Ray's buffers)."""
    probs = batch.get("probs")
    regs = batch.get("regions")
    for i, key in enumerate(batch["key"]):
        k = int(key)
        ok = bool(batch["ok"][i])
        extra = _extra(batch["tags"][i], batch["meta"][i])
        yield ItemResult(
            key=k, path=files[k].path, sha256=str(batch["sha256"][i]) or None,
            size=int(batch["size"][i]), width=int(batch["width"][i]),
            height=int(batch["height"][i]),
            features=np.array(batch["features"][i], np.float32) if ok else None,
            probs=np.array(probs[i], np.float32)
            if ok and probs is not None and bool(batch["has_probs"][i]) else None,
            regions=np.array(regs[i], np.float32) if ok and regs is not None else None,
            error=str(batch["error"][i]) or None, skipped=bool(batch["skipped"][i]), extra=extra)


def _known_array(hashes: Iterable[str]) -> np.ndarray:
    """sha256 hex digests -> a sorted ``S32`` array of raw digests (searchsorted on workers)."""
    return np.array(sorted(bytes.fromhex(h) for h in hashes), dtype="S32")


def init_ray(**kw: Any) -> None:
    """``ray.init``, tried once more when a local node misses Ray's fixed 30 s registration window
    (a busy machine: seen on a 2-core CI node running a Milvus server); a second miss raises."""
    import ray

    try:
        ray.init(**kw)
    except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this one
        if kw.get("address", "local") != "local" or "timed out during startup" not in str(e):
            raise
        ray.shutdown()
        ray.init(**kw)


def _start(options: RayOptions) -> bool:
    """Connect to (or start) Ray; True when this call connected (so it is ours to disconnect:
    ``ray.shutdown`` stops a local Ray started here, and only disconnects from a cluster)."""
    import ray

    if options.address is not None:
        _check_reachable(options.address)
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                          "log_to_driver": False}
    if options.address is None:
        # "local": a new Ray for this run even when $RAY_ADDRESS is set or a cluster started on
        # this machine (`ray start`) left its address in /tmp/ray (Ray would join that one, and
        # refuse num_cpus there)
        kw.update(address="local", num_cpus=os.cpu_count() or 1,
                  object_store_memory=options.object_store_mb * 1024 * 1024)
    else:
        kw["address"] = options.address
    try:
        init_ray(**kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = options.address or "a local Ray"
        raise BackendUnavailable(f"cannot start or reach {where}: {_first_line(e)}") from e
    return True


def _check_reachable(address: str) -> None:
    """Fail in seconds on a ``HOST:PORT`` or ``ray://HOST:PORT`` nobody answers at (Ray itself
    retries for minutes); ``auto`` is left to Ray (it fails at once when no cluster runs here)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise BackendUnavailable(f"cannot reach the Ray cluster at {address}: {e.strerror or e}; "
                                 "check --ray-address (e.g. auto on a cluster node, or "
                                 "ray://HEAD:10001)") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def ray_embed_files(files: Sequence[FoundFile], extractor: FeatureExtractor, *,
                    batch_size: int = 32, regions: bool = False,
                    known_hashes: Iterable[str] = (), max_bytes: int,
                    options: RayOptions | None = None) -> Iterator[ItemResult[int]]:
    """Embed planned files on Ray; yields one ItemResult per file (key = its index in files).

    Same results as ``embed_files`` with the indexer's reader: a file that cannot be read or
    decoded has ``error`` set; content whose sha256 is in ``known_hashes`` (the catalog's, at
    the start) comes back ``skipped`` without being decoded. Results stream back as batches
    finish, in no particular order. Closing the iterator early stops the pipeline (and a
    local Ray started for it).
    """
    import ray
    import ray.data

    options = options or RayOptions()
    if not files:
        return
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # fewer batches than actors (a small folder) is no problem worth a warning
    warnings.filterwarnings("ignore", "The minimum number of concurrent actors", UserWarning)
    started = _start(options)
    embedded: Counter[str] = Counter()  # node id -> results embedded there
    read: Counter[str] = Counter()  # node id -> files read there
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(logging.ERROR)  # "execution finished", "progress bars disabled"...
    try:
        threads = max(1, options.intra_op_threads)
        actors = options.actors or max(
            1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        kwargs = {"intra_op_num_threads": threads} \
            if hasattr(extractor, "intra_op_num_threads") else {}
        expected = json.dumps([extractor.name, extractor.dim, extractor.preprocessing],
                              sort_keys=True)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the indexer shows its own
        ctx.print_on_execution_start = False
        rows = [{"key": i, "path": str(f.path), "read_path": str(f.read_path),
                 "dev": f.ident[0] if f.ident else -1, "ino": f.ident[1] if f.ident else -1}
                for i, f in enumerate(files)]
        blocks = max(1, min(math.ceil(len(rows) / batch_size), MAX_BLOCKS))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        ds = ds.map_batches(_read_batch, batch_size=None, batch_format="numpy",
                            fn_kwargs={"max_bytes": max_bytes, "driver_node": _node_id()},
                            num_cpus=options.read_cpus)
        ds = ds.map_batches(
            _Embedder, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=options.actor_cpus,
            # one model per node before two on one comes from Ray Data's default placement
            # (SPREAD); not passed here: ``scheduling_strategy`` only goes through the deprecated
            # ``ray_remote_args`` (removed in Ray 2.64). tests/unit/test_ray_multinode.py checks it
            fn_constructor_kwargs={"name": extractor.name, "kwargs": kwargs,
                                   "expected": expected, "regions": regions,
                                   "known": ray.put(_known_array(known_hashes))})
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                embedded.update(str(n) for n in batch["node"])
                read.update(str(n) for n in batch["read_node"])
                yield from _results(batch, files)
        except ray.exceptions.RayError as e:  # one line for the CLI, not a remote traceback
            cause = getattr(e, "cause", None)
            if isinstance(cause, CbirError):
                raise cause from None
            raise BackendUnavailable(f"the Ray engine failed: {_first_line(e)}") from e
    finally:
        data_log.setLevel(level)
        _log_nodes(embedded, read)
        if started:  # ours: a local Ray is stopped, a joined cluster only disconnected from
            ray.shutdown()


def _log_nodes(embedded: Counter[str], read: Counter[str]) -> None:
    """One INFO record: how many results each Ray node embedded and read (node id -> count),
    also as the record's ``ray_nodes`` attribute ``{"embedded": {...}, "read": {...}}``."""
    if not embedded:
        return
    log.info("Ray: %d result(s) embedded on %d node(s), read on %d node(s): %s",
             sum(embedded.values()), len(embedded), len(read),
             ", ".join(f"{n[:8]} {c}" for n, c in embedded.most_common()),
             extra={"ray_nodes": {"embedded": dict(embedded), "read": dict(read)}})
