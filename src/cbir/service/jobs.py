"""Background jobs: persisted in a small SQLite file, run one at a time off the request path.

One worker thread runs the jobs in order, so there is one writer at a time (it also
takes the collection's writer lock, which keeps out ``cbir index`` run from a shell).
Job rows live in ``<collection>/service-jobs.sqlite``, so a page reload or a new browser
finds them; a server that stops while a job runs marks it ``interrupted`` on its next
start, and starting the same indexing again resumes (the indexer is incremental).
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbir.errors import CbirError

log = logging.getLogger("cbir.service.jobs")

JOBS_NAME = "service-jobs.sqlite"
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled", "interrupted")
MAX_ERRORS = 200
#: finished jobs kept in the table (older ones are pruned when new jobs are made)
KEEP_FINISHED = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    errors TEXT NOT NULL DEFAULT '[]',
    error_count INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created);
"""

_COLUMNS = ("id", "kind", "status", "params", "done", "total", "message", "errors", "error_count",
            "result", "created", "started", "finished")


class JobStore:
    """The jobs table; every method is thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def mark_interrupted(self) -> int:
        """Jobs left queued or running by a previous server process become 'interrupted'."""
        with self._lock:
            cur = self.db.execute(
                "UPDATE jobs SET status='interrupted', finished=?, message=? WHERE status IN (?, ?)",
                (time.time(), "the server stopped before this job finished; start it again to resume "
                 "(work already committed is kept)", *ACTIVE))
            return cur.rowcount

    def create(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:16]
        with self._lock:
            self.db.execute(
                "DELETE FROM jobs WHERE status NOT IN (?, ?) AND id NOT IN (SELECT id FROM jobs WHERE "
                "status NOT IN (?, ?) ORDER BY created DESC LIMIT ?)", (*ACTIVE, *ACTIVE, KEEP_FINISHED))
            self.db.execute("INSERT INTO jobs (id, kind, status, params, message, created) "
                            "VALUES (?, ?, 'queued', ?, 'waiting for the previous job to finish', ?)",
                            (job_id, kind, json.dumps(params), time.time()))
        job = self.get(job_id)
        assert job is not None
        return job

    def update(self, job_id: str, **fields: Any) -> None:
        for k in ("params", "errors", "result"):
            if k in fields and not isinstance(fields[k], str | None):
                fields[k] = json.dumps(fields[k])
        bad = set(fields) - set(_COLUMNS)
        if bad:
            raise ValueError(f"unknown job fields {bad}")
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self.db.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job_id))

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id=?",
                                  (job_id,)).fetchone()
        return None if row is None else _row(row)

    def list(self, limit: int = 50, status: str | None = None, kind: str | None = None
             ) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
        where, args = [], []
        if status:
            where.append("status=?")
            args.append(status)
        if kind:
            where.append("kind=?")
            args.append(kind)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self.db.execute(sql + " ORDER BY created DESC, rowid DESC LIMIT ?",
                                   (*args, int(limit))).fetchall()
        return [_row(r) for r in rows]

    def count(self, statuses: tuple[str, ...]) -> int:
        q = ",".join("?" * len(statuses))
        with self._lock:
            return int(self.db.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN ({q})",
                                       statuses).fetchone()[0])


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["params"] = json.loads(d["params"])
    d["errors"] = json.loads(d["errors"] or "[]")
    d["result"] = json.loads(d["result"]) if d["result"] else None
    if d["status"] == "succeeded":
        d["percent"] = 100.0
    elif d["total"]:
        d["percent"] = round(min(100.0, 100.0 * d["done"] / d["total"]), 1)
    else:
        d["percent"] = 0.0
    return d


@dataclass
class JobOutcome:
    """What a job handler returns: a result summary and the files that failed."""

    result: dict[str, Any] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)
    message: str = "done"


class JobCancelled(Exception):
    """Raised inside a handler that noticed its stop event."""


class JobContext:
    """Handed to a job handler: its parameters, a stop event and progress reporting."""

    def __init__(self, store: JobStore, job: dict[str, Any], min_interval: float = 0.2):
        self.store = store
        self.id: str = job["id"]
        self.params: dict[str, Any] = job["params"]
        self.stop = threading.Event()
        self._min_interval = min_interval
        self._last = 0.0

    def progress(self, done: int, total: int, message: str | None = None) -> None:
        """Record progress; writes at most every 0.2 s except the final step."""
        now = time.monotonic()
        if done < total and now - self._last < self._min_interval:
            return
        self._last = now
        fields: dict[str, Any] = {"done": int(done), "total": int(total)}
        if message is not None:
            fields["message"] = message
        self.store.update(self.id, **fields)

    def message(self, text: str) -> None:
        self.store.update(self.id, message=text)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise JobCancelled()


Handler = Callable[[JobContext], JobOutcome]


class JobRunner:
    """One worker thread that runs queued jobs in order."""

    def __init__(self, store: JobStore, handlers: dict[str, Handler]):
        self.store = store
        self.handlers = handlers
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: JobContext | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="cbir-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the running job to stop after its current batch, and end the worker."""
        with self._lock:
            if self._current is not None:
                self._current.stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        return self._current is not None

    def submit(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        if kind not in self.handlers:
            raise ValueError(f"no handler for job kind {kind!r}")
        job = self.store.create(kind, params)
        self._queue.put(job["id"])
        return job

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job at once, or ask a running one to stop after its current image
        (a job process that does not stop within seconds is killed: see workers.run_in_child)."""
        with self._lock:
            job = self.store.get(job_id)
            if job is None:
                return None
            if job["status"] == "queued":
                self.store.update(job_id, status="cancelled", finished=time.time(),
                                  message="cancelled before it started")
            elif job["status"] == "running" and self._current is not None and self._current.id == job_id:
                self._current.stop.set()
                self.store.update(job_id, message="stopping")
        return self.store.get(job_id)

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                job = self.store.get(job_id)
                if job is None or job["status"] != "queued":
                    continue
                ctx = JobContext(self.store, job)
                self._current = ctx
                self.store.update(job_id, status="running", started=time.time(), message="starting")
            try:
                self._run(ctx, job["kind"])
            finally:
                with self._lock:
                    self._current = None

    def _run(self, ctx: JobContext, kind: str) -> None:
        try:
            out = self.handlers[kind](ctx)
        except JobCancelled:
            self.store.update(ctx.id, status="cancelled", finished=time.time(),
                              message="cancelled; work already committed is kept, start again to resume")
            return
        except CbirError as e:
            self.store.update(ctx.id, status="failed", finished=time.time(), message=str(e))
            return
        except Exception as e:  # noqa: BLE001 - a job's crash must not kill the worker
            log.exception("job %s (%s) crashed", ctx.id, kind)
            self.store.update(ctx.id, status="failed", finished=time.time(),
                              message=f"internal error: {type(e).__name__}: {e} (see the server log)")
            return
        errors = [{"path": p, "reason": r} for p, r in out.problems[:MAX_ERRORS]]
        status = "cancelled" if ctx.stop.is_set() else "succeeded"
        message = ("cancelled; work already committed is kept, start again to resume"
                   if status == "cancelled" else out.message)
        self.store.update(ctx.id, status=status, finished=time.time(), message=message,
                          result=out.result, errors=errors, error_count=len(out.problems))
