"""One writer at a time per collection, via an advisory ``flock`` on a lock file.

The lock dies with its process, so a ``kill -9`` never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from cbir.errors import CollectionError


class WriterLock:
    def __init__(self, directory: Path, *, wait: bool = False):
        self.path = Path(directory) / "writer.lock"
        self.wait = wait
        self._fd: int | None = None
        self.on_release: Callable[[], None] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock; with wait=False return False if another writer holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            if self.on_release is not None:
                self.on_release()

    def __enter__(self) -> WriterLock:
        if not self.acquire():
            raise CollectionError(
                f"another cbir process is writing to {self.path.parent}; wait for it to finish"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
