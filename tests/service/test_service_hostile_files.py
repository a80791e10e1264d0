"""The image endpoints and the job worker under hostile files (see cbir.io.saferead).

An indexed file replaced by a link to /etc/passwd, or by a FIFO, must never be served nor
hang a request; a job stuck mid-batch must end within seconds of a cancel, and a killed
server must not leave its worker holding the collection's writer lock.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cbir.collection import Collection
from cbir.store.lock import WriterLock
from service.conftest import needs_service

needs_service()
pytestmark = pytest.mark.timeout(120)


def _first(coll: Path) -> tuple[int, Path]:
    with Collection.open(coll) as col:
        rec = next(col.catalog.iter_records("ok"))
    return rec.id, Path(rec.path)


def test_image_swapped_for_a_link_is_not_served(client, coll: Path) -> None:
    image_id, path = _first(coll)
    assert client.get(f"/api/images/{image_id}").status_code == 200
    path.unlink()
    path.symlink_to("/etc/passwd")
    for url in (f"/api/images/{image_id}", f"/api/images/{image_id}/thumbnail"):
        r = client.get(url)
        assert r.status_code == 403, (url, r.status_code)
        assert r.json()["error"] == "file_refused" and "root:" not in r.text


def test_image_swapped_for_a_fifo_does_not_hang(client, coll: Path) -> None:
    image_id, path = _first(coll)
    path.unlink()
    os.mkfifo(path)
    t0 = time.monotonic()
    for url in (f"/api/images/{image_id}", f"/api/images/{image_id}/thumbnail"):
        assert client.get(url).status_code == 403
    assert time.monotonic() - t0 < 10


def test_image_in_a_folder_swapped_for_a_link_outside_is_not_served(client, coll: Path, tmp_path: Path
                                                                    ) -> None:
    image_id, path = _first(coll)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / path.name).write_bytes(path.read_bytes())
    os.rename(path.parent, path.parent.with_name("moved"))
    path.parent.symlink_to(outside)  # the folder is now a link leading out of every root
    assert client.get(f"/api/images/{image_id}").status_code == 403


def test_cancel_kills_a_job_stuck_mid_batch(tmp_path: Path) -> None:
    from cbir.service.jobs import JobCancelled
    from cbir.service.workers import run_in_child

    stop = threading.Event()
    messages: list[str | None] = []

    def on_progress(done: int, total: int, msg: str | None) -> None:
        messages.append(msg)
        stop.set()  # cancel as soon as the child holds the lock

    t0 = time.monotonic()
    with pytest.raises(JobCancelled):
        run_in_child("stuck_jobs:hang_holding_lock", {"collection": str(tmp_path)}, stop=stop,
                     on_progress=on_progress, nice=0, cancel_grace=1.0)
    assert messages == ["locked"]
    assert time.monotonic() - t0 < 30  # spawn + 1 s grace, not forever
    lock = WriterLock(tmp_path)
    assert lock.acquire(), "the killed worker's writer lock was released"
    lock.release()


def test_a_result_sent_just_before_the_worker_exits_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child sends its result and exits between the parent's empty poll and its liveness check.

    (Seen in CI: a rebuild job failed with "the job's worker process ended unexpectedly" although
    the worker had finished.) The first poll waits for the child to have sent and exited, then
    reports the pipe empty, which is the losing order; the result must still be read.
    """
    from multiprocessing.connection import Connection

    from cbir.service.workers import run_in_child

    real_poll = Connection.poll
    calls = [0]

    def late_poll(self: Connection, timeout: float = 0.0) -> bool:
        calls[0] += 1
        if calls[0] == 1:
            assert real_poll(self, 60)  # the result is in the pipe now
            deadline = time.monotonic() + 30
            while multiprocessing.active_children() and time.monotonic() < deadline:
                time.sleep(0.02)  # and the child has exited
            return False
        return real_poll(self, timeout)

    monkeypatch.setattr(Connection, "poll", late_poll)
    assert run_in_child("stuck_jobs:answer_at_once", {"value": 42}, stop=threading.Event(),
                        on_progress=lambda *a: None, nice=0) == 42


def test_killed_server_does_not_orphan_its_worker(tmp_path: Path) -> None:
    """SIGKILL the process that runs a job: its worker dies too and frees the writer lock."""
    tests_dir = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(tests_dir)!r})
        from cbir.service.workers import run_in_child
        def progress(done, total, msg):
            print("locked", flush=True)
        run_in_child("stuck_jobs:hang_holding_lock", {{"collection": {str(tmp_path)!r}}},
                     stop=threading.Event(), on_progress=progress, nice=0)
    """)
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "locked"
        lock = WriterLock(tmp_path)
        assert not lock.acquire()  # the worker holds it
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        deadline = time.monotonic() + 10
        while not lock.acquire():
            assert time.monotonic() < deadline, "the orphaned worker still holds the writer lock"
            time.sleep(0.1)
        lock.release()
    finally:
        server.kill()
        server.wait()
