"""Heavy job work (indexing, rebuilding, training) in a child process.

The server process keeps its interpreter (and GIL) for requests, so searches stay fast
while a job decodes and embeds images on the other core; a crash in a decoder ends the
child, not the server. The child reports progress and its result through a pipe and
stops after its current batch when the parent sets the stop event (or dies).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbir import errors as cbir_errors
from cbir.errors import CbirError, CollectionError

Progress = Callable[..., None]
#: seconds a cancelled job's process has to stop by itself before it is killed
CANCEL_GRACE = 5.0
#: default scheduling niceness of the job process (0..19; higher = yields the CPU to the server)
NICE = 19
#: environment variables that size the thread pools of OpenMP and the BLAS libraries
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


class _ParentWatch:
    """A stop flag that also trips when the parent process is gone."""

    def __init__(self, event: Any, parent: int):
        self.event = event
        self.parent = parent

    def is_set(self) -> bool:
        if os.getppid() != self.parent:
            self.event.set()
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout) or self.is_set()


def _send(conn: Any, msg: list[Any]) -> None:
    """Messages travel as JSON (never pickle)."""
    conn.send_bytes(json.dumps(msg).encode())


def limit_cpus(cpus: int) -> list[int]:
    """Confine this (job) process to ``cpus`` CPUs and size its thread pools to match.

    The CPU affinity is the hard limit: whatever threads the libraries start, the job never
    occupies more than ``cpus`` cores, so with ``cpus`` below the core count a core always
    stays free for the server's searches. The thread pools (OpenMP, BLAS, FAISS, the
    decode/inference pipeline) are sized to it so they do not fight over the cores they have.
    Returns the CPUs now allowed (empty where affinity is not supported).
    """
    allowed: list[int] = []
    with contextlib.suppress(AttributeError, OSError):
        allowed = sorted(os.sched_getaffinity(0))
        if 0 < cpus < len(allowed):
            allowed = allowed[-cpus:]  # the last ones: the server's threads tend to start on CPU 0
            os.sched_setaffinity(0, allowed)
    n = cpus or len(allowed) or os.cpu_count() or 1
    for var in THREAD_VARS:  # read by libraries loaded from now on (torch, onnxruntime's OpenMP)
        os.environ[var] = str(n)
    with contextlib.suppress(Exception):  # already loaded ones (numpy's BLAS); optional
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
    with contextlib.suppress(Exception):
        import faiss

        faiss.omp_set_num_threads(n)
    # the indexing pipeline sizes its decode and inference threads by os.cpu_count()
    from cbir.extract import pipeline

    pipeline.default_decode_workers = lambda: n  # type: ignore[assignment]
    pipeline.default_infer_workers = lambda extractor: max(  # type: ignore[assignment]
        1, n // max(1, int(getattr(extractor, "intra_op_num_threads", 1) or 1)))
    return allowed


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the server dies (PR_SET_PDEATHSIG), so a
    killed server never leaves an orphaned job holding the collection's writer lock."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _child_main(target: str, kwargs: dict[str, Any], conn: Any, stop: Any, parent: int,
                nice: int = NICE, cpus: int = 0) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the server, which sets stop
    with contextlib.suppress(OSError):
        os.nice(nice)  # searches first: the job gets the CPU time the requests leave idle
    if cpus:
        limit_cpus(cpus)
    watch = _ParentWatch(stop, parent)
    last = [0.0]

    def progress(done: int, total: int, message: str | None = None) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.2 and message is None:
            return
        last[0] = now
        _send(conn, ["progress", int(done), int(total), message])
        watch.is_set()

    try:
        module, name = target.split(":")
        fn = getattr(importlib.import_module(module), name)
        _send(conn, ["result", fn(progress=progress, stop=watch, **kwargs)])
    except CbirError as e:
        _send(conn, ["error", type(e).__name__, str(e)])
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the job
        _send(conn, ["crash", f"{type(e).__name__}: {e}"])
    finally:
        conn.close()


def run_in_child(target: str, kwargs: dict[str, Any], *, stop: Any,
                 on_progress: Callable[[int, int, str | None], None], nice: int = NICE,
                 cpus: int = 0, cancel_grace: float = CANCEL_GRACE) -> Any:
    """Run ``module:function(progress=..., stop=..., **kwargs)`` in a spawned process.

    The process runs at niceness ``nice`` and, with ``cpus`` > 0, on at most that many CPUs
    (see ``limit_cpus``). Returns its result; a CbirError in the child is raised here with
    the same class. Once ``stop`` is set the child has ``cancel_grace`` seconds to stop by
    itself; then it is killed (its committed work is kept, its writer lock dies with it)
    and JobCancelled is raised. The child also dies with this process.
    """
    mp = multiprocessing.get_context("spawn")
    recv, send = mp.Pipe(duplex=False)
    child_stop = mp.Event()
    proc = mp.Process(target=_child_main,
                      args=(target, kwargs, send, child_stop, os.getpid(), int(nice), int(cpus)),
                      name="cbir-job", daemon=True)
    proc.start()
    send.close()
    outcome: list[Any] | None = None
    stop_at: float | None = None
    killed = False
    try:
        while True:
            if stop.is_set():
                child_stop.set()
                now = time.monotonic()
                stop_at = stop_at or now
                if now - stop_at > cancel_grace and proc.is_alive():
                    proc.kill()  # stuck mid-batch: commits are atomic, so this loses nothing kept
                    killed = True
                    break
            # (is_alive is read before poll: a child that sent its result and exited between
            # an empty poll and the liveness check would otherwise lose that result)
            alive = proc.is_alive()
            if recv.poll(0.2):
                try:
                    msg = json.loads(recv.recv_bytes())
                except EOFError:
                    break
                if msg[0] == "progress":
                    on_progress(msg[1], msg[2], msg[3])
                else:
                    outcome = msg
            elif not alive:
                break
    finally:
        proc.join(cancel_grace if stop.is_set() else 60)
        if proc.is_alive():
            proc.kill()
            killed = killed or stop.is_set()
            proc.join()
        recv.close()
    if outcome is None and (killed or stop.is_set()):
        from cbir.service.jobs import JobCancelled

        raise JobCancelled()
    if outcome is None:
        raise CollectionError(f"the job's worker process ended unexpectedly (exit code {proc.exitcode}); "
                              "work already committed is kept, start the job again to resume")
    if outcome[0] == "result":
        return outcome[1]
    if outcome[0] == "error":
        cls = getattr(cbir_errors, outcome[1], None)
        if isinstance(cls, type) and issubclass(cls, CbirError) and cls is not cbir_errors.InvalidImage:
            raise cls(outcome[2])
        raise CbirError(outcome[2])
    raise RuntimeError(outcome[1])


# -- the work itself (these run in the child) -----------------------------------------------
def _writer_lock(col: Any, progress: Progress, stop: Any) -> Any:
    lock = col.writer_lock()
    while not lock.acquire():
        progress(0, 0, "waiting for another cbir process that is writing to this collection")
        if stop.wait(1.0):
            return None
    return lock


def _open(collection: str, extractor: str | None) -> Any:
    import cbir.train.apply  # noqa: F401  (installs the trained-model partition provider)
    from cbir.collection import Collection
    from cbir.store.manifest import MANIFEST_NAME

    if (Path(collection) / MANIFEST_NAME).exists():
        return Collection.open(Path(collection))
    return Collection.create_or_open(Path(collection), extractor)


def index_folders(*, collection: str, folders: list[str], extractor: str | None = None,
                  commit_every: int = 64, retry_errors: bool = False, index_type: str | None = None,
                  rebuild: bool = False, progress: Progress, stop: Any) -> dict[str, Any]:
    """Index ``folders`` (incrementally); with ``rebuild`` also rebuild the vector index."""
    from cbir.indexing import index_paths

    totals: dict[str, Any] = {"added": 0, "updated": 0, "removed": 0, "unchanged": 0, "duplicates": 0,
                              "skipped": 0, "processed": 0, "seconds": 0.0}
    reasons: dict[str, int] = {}
    problems: list[tuple[str, str]] = []
    with _open(collection, extractor) as col:
        lock = _writer_lock(col, progress, stop)
        if lock is None:
            return {"cancelled": True, "result": totals, "problems": problems}
        try:
            if index_type:
                col.set_requested_index(index_type)
            for folder in folders:
                if stop.is_set():
                    break
                progress(0, 0, f"scanning {folder}")

                def on_progress(done: int, total: int, folder: str = folder) -> None:
                    progress(done, total, f"indexed {done} of {total} new or changed images in {folder}")

                rep = index_paths(col, [Path(folder)], commit_every=commit_every, retry_errors=retry_errors,
                                  progress=False, on_progress=on_progress, stop=stop,
                                  follow_symlinks=False)
                d = rep.as_dict()
                for k in totals:
                    totals[k] += rep.processed if k == "processed" else d.get(k, 0)
                for r, n in d["skipped_reasons"].items():
                    reasons[r] = reasons.get(r, 0) + n
                problems += rep.problems
                totals["index_type"] = rep.index_type
            if rebuild:
                progress(0, 0, "rebuilding the vector index from the catalog")
                col.drop_index()
                idx = col.index()
                totals["index_type"], totals["images"] = idx.name, len(idx)
        finally:
            lock.release()
    totals["seconds"] = round(totals["seconds"], 3)
    secs = totals["seconds"]
    totals["images_per_second"] = round(totals["processed"] / secs, 1) if secs else 0.0
    totals["skipped_reasons"] = reasons
    return {"result": totals, "problems": problems}


def train_model(*, collection: str, folder: str, name: str, extractor: str | None,
                options: dict[str, Any], trained_by: str | None, cache_dir: str | None,
                progress: Progress, stop: Any) -> dict[str, Any]:
    """Train a classifier head (see cbir.service.training.train)."""
    from cbir.service import training

    return training.train(Path(collection), Path(folder), name=name, extractor=extractor, options=options,
                          trained_by=trained_by, cache_dir=Path(cache_dir) if cache_dir else None,
                          stop=stop, on_progress=progress)
