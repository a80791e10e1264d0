"""A bounded decode -> infer pipeline that keeps every core busy.

Files are read once, hashed, decoded (JPEG draft mode down to the extractor's input size)
and preprocessed, then embedded in batches. Pillow's decoders and resizers, hashlib, numpy
and onnxruntime release the GIL, so threads are enough. At most ``max_pending`` items are
in flight, so memory stays flat whatever the number of files.

Two layouts (``embed_files(fused=...)``), measured on the 2-core reference machine
(bench/bench_pipeline.py, docs/pipeline.md):

* fused, the default when there is one single-threaded inference worker per core (how
  ``Collection.indexing_extractor`` runs the model for indexing): each worker decodes a
  chunk of ``batch_size`` files, then embeds it. A core never switches between decoding
  and a half-done batch, so inference costs what it costs alone (cache), and nothing
  waits on a queue.
* decode threads feeding inference threads, otherwise (e.g. one session on all cores):
  ``decode_workers`` threads decode, the calling thread stacks ready items into batches,
  ``infer_workers`` threads embed them.

One intra-op thread per batch with a batch per core beats one session on every core
(bench/bench_extract.py --sweep): a session using every core waits in its parallel-for
barriers whenever another thread preempts one of its threads. The extractor's own default
(one session on all cores, one batch at a time) is the best for the latency of a single query.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

from cbir.errors import CbirError, InvalidImage
from cbir.extract.base import Embedding, FeatureExtractor, top_labels
from cbir.io.images import (
    MAX_FILE_BYTES,
    decode_opened,
    displayed_size,
    image_size,
    load_image,
    opened,
    os_error_reason,
)
from cbir.io.saferead import read_file

K = TypeVar("K")

#: read_hook(key, sha256_hex) -> False to skip decoding (e.g. that content is already indexed).
ReadHook = Callable[[K, str], bool]
#: reader(key, path) -> the file's bytes; raises InvalidImage with the reason it cannot.
Reader = Callable[[K, Path], bytes]
#: inspect(key, path, data, image) -> anything the caller wants from the bytes (e.g. embedded
#: tags, EXIF), kept in ItemResult.extra; ``image`` is the file opened lazily by Pillow (header
#: parsed, pixels not decoded yet; None for a camera RAW or a header Pillow cannot read), the
#: same object that is decoded next. It runs in the decode thread and must not raise.
Inspect = Callable[[K, Path, bytes, "Image.Image | None"], object]

@dataclass
class ItemResult(Generic[K]):
    """The outcome for one input file; exactly one per input.

    sha256: hex digest of the file's bytes (None if it could not be read).
    size: file size in bytes. width, height: the original image size as displayed (EXIF
        orientation applied, read from the header); 0 when unknown (unreadable or bad header).
    features: (dim,) float32 L2-normalised; probs: (n_classes,) float32 or None;
    regions: (h*w, c) float32 when requested. All None on error or skip.
    labels: the 5 most probable (class name, probability), best first, and top_class the
        most probable class index, computed per batch in the inference thread (None when
        the extractor has no classifier).
    error: a one-line reason when the file could not be read or decoded.
    skipped: True when ``read_hook`` returned False (features are to be reused).
    extra: what ``inspect`` returned for the file's bytes (None without inspect).
    """

    key: K
    path: Path
    sha256: str | None = None
    size: int = 0
    width: int = 0
    height: int = 0
    features: np.ndarray | None = None
    probs: np.ndarray | None = None
    regions: np.ndarray | None = None
    labels: list[tuple[str, float]] | None = None
    top_class: int | None = None
    error: str | None = None
    skipped: bool = False
    extra: object = None

    @property
    def ok(self) -> bool:
        """True when features were computed."""
        return self.features is not None


#: top labels kept per image (the catalog's ``labels`` column)
LABELS_K = 5


def default_decode_workers() -> int:
    """Decode threads when none are given: one per core (see the module docstring)."""
    return max(1, os.cpu_count() or 1)


def default_infer_workers(extractor: FeatureExtractor) -> int:
    """Concurrent batches: cores // the extractor's ``intra_op_num_threads`` (at least 1)."""
    cores = os.cpu_count() or 1
    threads = int(getattr(extractor, "intra_op_num_threads", cores) or cores)
    return max(1, cores // max(1, threads))


def default_reader(_key: object, path: Path) -> bytes:
    """Read a file given by the caller (links followed; FIFOs, devices, > 512 MB refused)."""
    return read_file(path, max_bytes=MAX_FILE_BYTES, follow_symlinks=True)


def _decode(key: K, path: Path, extractor: FeatureExtractor, read_hook: ReadHook | None,
            reader: Reader = default_reader, inspect: Inspect | None = None,
            ) -> tuple[ItemResult[K], np.ndarray | None]:
    """Worker: read, hash, maybe skip, decode, preprocess. Never raises for a bad file.

    Pillow opens the bytes once: the displayed size, ``inspect`` (EXIF, embedded tags) and
    the decode all use that one lazily opened image.
    """
    res: ItemResult[K] = ItemResult(key, path)
    try:
        data = reader(key, path)
    except InvalidImage as e:
        res.error = e.reason or "cannot read the file"
        return res, None
    except OSError as e:
        res.error = os_error_reason(e, path)
        return res, None
    res.size = len(data)
    res.sha256 = hashlib.sha256(data).hexdigest()
    label = str(path)
    with contextlib.ExitStack() as stack:
        header: InvalidImage | None = None
        im = None
        try:
            im = stack.enter_context(opened(data, name=label))
        except InvalidImage as e:  # reported below unless the content is known (then skipped)
            header = e
        if im is not None:
            res.width, res.height = displayed_size(im)
        elif header is None:  # camera RAW
            with contextlib.suppress(InvalidImage):
                res.width, res.height = image_size(data, oriented=True, name=label)
        if inspect is not None:
            try:
                res.extra = inspect(key, path, data, im)
            except Exception:  # noqa: BLE001 - metadata is optional, the image still counts
                res.extra = None
        if read_hook is not None and not read_hook(key, res.sha256):
            res.skipped = True
            return res, None
        try:
            if header is not None:
                raise header
            image = decode_opened(im, label, target_size=extractor.input_size) if im is not None \
                else load_image(data, target_size=extractor.input_size, name=label)
            if not res.width:
                res.width, res.height = image.size
            arr = extractor.preprocess(image)
        except InvalidImage as e:
            res.error = e.reason or "cannot decode image"
            return res, None
        except (CbirError, OSError, ValueError, MemoryError) as e:
            res.error = f"{type(e).__name__}: {e}"
            return res, None
    return res, arr


def _infer(ready: list[tuple[ItemResult[K], np.ndarray]], extractor: FeatureExtractor,
           regions: bool) -> list[ItemResult[K]]:
    """Stack preprocessed arrays, embed them in one call and fill the results in."""
    emb = extractor.embed(np.stack([a for _, a in ready]), regions=regions)
    names = getattr(extractor, "class_names", None)
    labels = top_labels(emb.probs, names, LABELS_K) if emb.probs is not None and names else None
    top = np.argmax(emb.probs, axis=1) if emb.probs is not None else None
    out = []
    for i, (res, _) in enumerate(ready):
        res.features = emb.features[i]
        res.probs = None if emb.probs is None else emb.probs[i]
        res.labels = None if labels is None else labels[i]
        res.top_class = None if top is None else int(top[i])
        res.regions = None if emb.regions is None else emb.regions[i]
        out.append(res)
    return out


def _decode_and_infer(chunk: list[tuple[K, Path]], extractor: FeatureExtractor,
                      read_hook: ReadHook | None, reader: Reader, inspect: Inspect | None,
                      regions: bool) -> list[ItemResult[K]]:
    """Worker of the fused layout: decode a chunk of files, then embed them as one batch."""
    out: list[ItemResult[K]] = []
    ready: list[tuple[ItemResult[K], np.ndarray]] = []
    for key, path in chunk:
        res, arr = _decode(key, Path(path), extractor, read_hook, reader, inspect)
        if arr is None:
            out.append(res)
        else:
            ready.append((res, arr))
    if ready:
        out.extend(_infer(ready, extractor, regions))
    return out


def embed_files(items: Iterable[tuple[K, Path]], extractor: FeatureExtractor, *,
                batch_size: int = 32, decode_workers: int | None = None,
                regions: bool = False, read_hook: ReadHook | None = None,
                infer_workers: int | None = None, max_pending: int | None = None,
                reader: Reader | None = None, inspect: Inspect | None = None,
                fused: bool | None = None,
                ) -> Iterator[ItemResult[K]]:
    """Embed files; yields exactly one ItemResult per (key, path), possibly out of order.

    items is consumed lazily. A file that cannot be read or decoded yields a result with
    ``error`` set; ``read_hook(key, sha256)`` returning False yields ``skipped=True`` without
    decoding. Batches run on ``infer_workers`` threads (so inference also overlaps with the
    consumer's work); default ``default_infer_workers(extractor)``: enough single batches
    to fill the cores given the extractor's intra-op threads. At most ``max_pending``
    (default (infer_workers + 1) * batch_size + decode_workers) items are decoding, decoded
    or being embedded at a time. Closing the iterator early stops the workers.
    ``reader(key, path)`` reads each file (default: :func:`default_reader`); the indexer
    passes one that refuses a file swapped since the walk. ``inspect(key, path, data)``
    sees each file's bytes once (the indexer reads embedded tags with it).

    fused: each of the ``infer_workers`` threads decodes a chunk of ``batch_size`` files and
    then embeds it (``decode_workers`` unused), instead of separate decode threads feeding the
    inference threads. Default: fused when there is an inference thread per core (one
    intra-op thread per batch, the indexing layout): a core then never switches between
    decoding and a half-done batch, which measured 1.04-1.07x faster end to end and brings
    the inference cost per image back to the model-only figure (docs/pipeline.md).
    """
    infer_workers = infer_workers or default_infer_workers(extractor)
    if batch_size < 1 or infer_workers < 1:
        raise ValueError(f"batch_size and infer_workers must be >= 1, "
                         f"got {batch_size} and {infer_workers}")
    if fused is None:
        fused = infer_workers >= (os.cpu_count() or 1)
    if fused:
        yield from _embed_fused(items, extractor, batch_size=batch_size, regions=regions,
                                read_hook=read_hook, workers=infer_workers,
                                max_pending=max_pending, reader=reader or default_reader,
                                inspect=inspect)
        return
    workers = decode_workers or default_decode_workers()
    limit = max(max_pending or (infer_workers + 1) * batch_size + workers, batch_size)
    it = iter(items)
    exhausted = False
    decoding: set[Future[tuple[ItemResult[K], np.ndarray | None]]] = set()
    inferring: dict[Future[list[ItemResult[K]]], int] = {}  # future -> number of items
    ready: list[tuple[ItemResult[K], np.ndarray]] = []
    # finished futures arrive here (add_done_callback): cheaper than concurrent.futures.wait,
    # which installs a waiter on every one of the ~100 futures in flight at each call
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
    decode_pool = ThreadPoolExecutor(workers, thread_name_prefix="cbir-decode")
    infer_pool = ThreadPoolExecutor(infer_workers, thread_name_prefix="cbir-infer")

    def start_batch() -> None:
        nonlocal ready
        take, ready = ready[:batch_size], ready[batch_size:]
        fut = infer_pool.submit(_infer, take, extractor, regions)
        inferring[fut] = len(take)
        fut.add_done_callback(finished.put)

    try:
        while True:
            in_flight = len(decoding) + len(ready) + sum(inferring.values())
            while not exhausted and in_flight < limit:
                try:
                    key, path = next(it)
                except StopIteration:
                    exhausted = True
                    break
                fut = decode_pool.submit(_decode, key, Path(path), extractor, read_hook,
                                         reader or default_reader, inspect)
                decoding.add(fut)
                fut.add_done_callback(finished.put)
                in_flight += 1
            while len(inferring) < infer_workers and (
                    len(ready) >= batch_size or (ready and exhausted and not decoding)):
                start_batch()
            if not decoding and not inferring:
                if not ready:
                    break
                start_batch()  # defensive; unreachable
            done = [finished.get()]
            while True:
                try:
                    done.append(finished.get_nowait())
                except queue.Empty:
                    break
            for fut in done:
                if fut in inferring:
                    del inferring[fut]
                    yield from fut.result()
                else:
                    decoding.discard(fut)
                    res, arr = fut.result()
                    if arr is None:
                        yield res
                    else:
                        ready.append((res, arr))
    finally:
        decode_pool.shutdown(wait=True, cancel_futures=True)
        infer_pool.shutdown(wait=True, cancel_futures=True)


def _embed_fused(items: Iterable[tuple[K, Path]], extractor: FeatureExtractor, *, batch_size: int,
                 regions: bool, read_hook: ReadHook | None, workers: int, max_pending: int | None,
                 reader: Reader, inspect: Inspect | None) -> Iterator[ItemResult[K]]:
    """embed_files' fused layout: chunks of ``batch_size`` files, each decoded and embedded by
    one worker; one chunk more than workers is queued so no worker waits for the next."""
    chunks = max(1, (max_pending or (workers + 1) * batch_size) // batch_size)
    it = iter(items)
    exhausted = False
    running: set[Future[list[ItemResult[K]]]] = set()
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="cbir-embed")
    try:
        while True:
            while not exhausted and len(running) < chunks:
                chunk = list(itertools.islice(it, batch_size))
                if not chunk:
                    exhausted = True
                    break
                fut = pool.submit(_decode_and_infer, chunk, extractor, read_hook, reader, inspect,
                                  regions)
                running.add(fut)
                fut.add_done_callback(finished.put)
            if not running:
                break
            fut = finished.get()
            running.discard(fut)
            yield from fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def embed_images(images: list[Image.Image], extractor: FeatureExtractor, *,
                 batch_size: int = 32, regions: bool = False) -> Embedding:
    """Embed in-memory images (e.g. queries), in order -> one Embedding with n rows."""
    if not images:
        raise ValueError("embed_images needs at least one image")
    parts: list[Embedding] = []
    for i in range(0, len(images), batch_size):
        batch = np.stack([extractor.preprocess(im) for im in images[i:i + batch_size]])
        parts.append(extractor.embed(batch, regions=regions))

    def cat(xs: list[np.ndarray | None]) -> np.ndarray | None:
        return None if any(x is None for x in xs) else np.concatenate(xs)  # type: ignore[arg-type]

    return Embedding(features=np.concatenate([p.features for p in parts]),
                     probs=cat([p.probs for p in parts]), regions=cat([p.regions for p in parts]))
