"""Job functions for the worker tests: they ignore their stop flag, as a job stuck in a read would."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cbir.store.lock import WriterLock


def hang_holding_lock(*, collection: str, progress: Any, stop: Any) -> None:
    """Take the collection's writer lock, say so, then never return on its own."""
    lock = WriterLock(Path(collection))
    assert lock.acquire()
    progress(0, 0, "locked")
    while True:
        time.sleep(0.1)


def answer_at_once(*, value: int, progress: Any, stop: Any) -> int:
    """Return straight away: the child sends its result and exits within milliseconds."""
    return value
