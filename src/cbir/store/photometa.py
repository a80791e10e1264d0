"""Photo metadata rows next to the catalog's images, and the filter query over them.

A table of its own (``photo_meta``, created on first write; no catalog schema change, so
older cbir versions still open the collection): one row per image id with the EXIF date
taken, camera make/model and GPS presence (:mod:`cbir.io.metadata`). Width and height are
the images table's own columns. Rows are written right after the images they describe are
committed; a run killed in between leaves images without metadata, which the next
``cbir index`` reads again (metadata is derived data: losing it loses no image). Rows of
removed images are ignored by the join and pruned on the next write.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cbir.errors import InvalidRequest

DDL = """CREATE TABLE IF NOT EXISTS photo_meta (
    id INTEGER PRIMARY KEY,
    taken_at TEXT,
    make TEXT,
    model TEXT,
    gps INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS photo_meta_taken ON photo_meta(taken_at);"""


def has_table(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='photo_meta'").fetchone() \
        is not None


def put(catalog: Any, rows: Iterable[tuple[int, Any]]) -> int:
    """Write ``(image id, PhotoMeta)`` rows in one transaction; returns how many."""
    rows = list(rows)
    if not rows:
        return 0
    with catalog.transaction() as db:
        for stmt in DDL.split(";"):  # one statement at a time: executescript would COMMIT first
            if stmt.strip():
                db.execute(stmt)
        db.executemany(
            "INSERT OR REPLACE INTO photo_meta (id, taken_at, make, model, gps) VALUES (?, ?, ?, ?, ?)",
            [(int(i), m.taken_at, m.make, m.model, int(bool(m.gps))) for i, m in rows])
        db.execute("DELETE FROM photo_meta WHERE id NOT IN (SELECT id FROM images)")
    return len(rows)


def missing(catalog: Any) -> list[tuple[int, str, int]]:
    """``(id, path, size)`` of ok images without a metadata row (indexed before it was kept)."""
    if not has_table(catalog.db):
        q = "SELECT id, path, size FROM images WHERE status='ok' ORDER BY id"
    else:
        q = ("SELECT i.id, i.path, i.size FROM images i LEFT JOIN photo_meta m ON m.id = i.id "
             "WHERE i.status='ok' AND m.id IS NULL ORDER BY i.id")
    return [(int(a), str(b), int(c)) for a, b, c in catalog.db.execute(q).fetchall()]


def get(catalog: Any, image_id: int) -> dict[str, Any] | None:
    if not has_table(catalog.db):
        return None
    row = catalog.db.execute("SELECT taken_at, make, model, gps FROM photo_meta WHERE id=?",
                             (int(image_id),)).fetchone()
    if row is None:
        return None
    return {"taken_at": row[0], "make": row[1], "model": row[2], "gps": bool(row[3])}


def _date_bound(text: str, what: str) -> str:
    """``2021``, ``2021-07`` or ``2021-07-04`` (also with ``/`` or ``:``) -> ISO prefix."""
    t = str(text).strip().replace("/", "-").replace(":", "-")
    parts = t.split("-")
    ok = (1 <= len(parts) <= 3 and len(parts[0]) == 4 and all(p.isdigit() for p in parts)
          and all(len(p) == 2 for p in parts[1:]))
    if not ok:
        raise InvalidRequest(f"{what} takes a date like 2021, 2021-07 or 2021-07-04, got {text!r}")
    return "-".join(parts)


@dataclass
class Filters:
    """What a search may return. Every field narrows; empty = no condition.

    folder: images under one of these folders (real paths); after / before: EXIF date taken
    on or after / strictly before (year, month or day); camera: a case-insensitive part of
    the make or model; min_width / min_height: pixels; tags: every one must be among the
    image's tags; gps: True = only geotagged photos.
    """

    folder: Sequence[str] = field(default_factory=list)
    after: str | None = None
    before: str | None = None
    camera: str | None = None
    min_width: int | None = None
    min_height: int | None = None
    tags: Sequence[str] = field(default_factory=list)
    gps: bool | None = None

    def __post_init__(self) -> None:
        for v in [*([self.folder] if isinstance(self.folder, str) else self.folder),
                  *([self.tags] if isinstance(self.tags, str) else self.tags), self.camera or "",
                  self.after or "", self.before or ""]:
            if "\x00" in str(v):
                raise InvalidRequest("a filter value contains a NUL byte")
        if isinstance(self.folder, str):
            self.folder = [self.folder]
        if isinstance(self.tags, str):
            self.tags = [self.tags]
        self.folder = [os.path.realpath(os.path.expanduser(f)) for f in self.folder if str(f).strip()]
        self.tags = [t.strip().lower() for t in self.tags if str(t).strip()]
        self.after = _date_bound(self.after, "--after") if self.after else None
        self.before = _date_bound(self.before, "--before") if self.before else None
        self.camera = (self.camera or "").strip() or None
        for name in ("min_width", "min_height"):
            v = getattr(self, name)
            if v is not None and int(v) < 0:
                raise InvalidRequest(f"{name.replace('_', '-')} must be >= 0, got {v}")

    @property
    def active(self) -> bool:
        return bool(self.folder or self.after or self.before or self.camera or self.min_width
                    or self.min_height or self.tags or self.gps is not None)

    @property
    def needs_metadata(self) -> bool:
        return bool(self.after or self.before or self.camera or self.gps is not None)

    def describe(self) -> str:
        parts = [f"folder {' or '.join(self.folder)}" if self.folder else "",
                 f"taken on/after {self.after}" if self.after else "",
                 f"taken before {self.before}" if self.before else "",
                 f"camera ~ {self.camera!r}" if self.camera else "",
                 f"width >= {self.min_width}" if self.min_width else "",
                 f"height >= {self.min_height}" if self.min_height else "",
                 f"tags {', '.join(self.tags)}" if self.tags else "",
                 ("geotagged" if self.gps else "not geotagged") if self.gps is not None else ""]
        return "; ".join(p for p in parts if p)


def matching_ids(catalog: Any, f: Filters) -> np.ndarray:
    """Sorted int64 ids of the ok images that pass ``f`` (one SQL query)."""
    where = ["i.status = 'ok'"]
    args: list[Any] = []
    if f.folder:
        ors = []
        for d in f.folder:
            prefix = d.rstrip(os.sep) + os.sep
            ors.append("(i.path = ? OR substr(i.path, 1, ?) = ?)")
            args += [d, len(prefix), prefix]
        where.append("(" + " OR ".join(ors) + ")")
    if f.min_width:
        where.append("i.width >= ?")
        args.append(int(f.min_width))
    if f.min_height:
        where.append("i.height >= ?")
        args.append(int(f.min_height))
    for t in f.tags:
        where.append("EXISTS (SELECT 1 FROM json_each(i.tags) WHERE lower(json_each.value) = ?)")
        args.append(t)
    join = ""
    if f.needs_metadata:
        if not has_table(catalog.db):
            return np.zeros(0, dtype=np.int64)
        join = " JOIN photo_meta m ON m.id = i.id"
        if f.after:
            where.append("m.taken_at >= ?")
            args.append(f.after)
        if f.before:
            where.append("m.taken_at < ?")
            args.append(f.before)
        if f.camera:
            where.append("(instr(lower(coalesce(m.make, '') || ' ' || coalesce(m.model, '')), ?) > 0)")
            args.append(f.camera.lower())
        if f.gps is not None:
            where.append("m.gps = ?")
            args.append(int(bool(f.gps)))
    q = f"SELECT i.id FROM images i{join} WHERE " + " AND ".join(where) + " ORDER BY i.id"
    rows = catalog.db.execute(q, args).fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


def without_metadata(catalog: Any) -> int:
    """How many ok images have no metadata row (a date/camera filter cannot see them)."""
    return len(missing(catalog))
