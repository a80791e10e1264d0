"""The SQLite catalog: one row per image file, with its float16 feature vector.

SQLite in WAL mode gives what indexing needs: a batch of rows is committed in one
transaction, so after a crash or ``kill -9`` the catalog holds every committed batch
and nothing of a half-written one. Row ids are never reused (AUTOINCREMENT), which lets
the vector index be brought up to date by set difference on ids. The schema carries a
version with step-by-step migrations (as rclip's DB.VERSION does).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbir.errors import CollectionError

CATALOG_NAME = "catalog.sqlite"
SCHEMA_VERSION = 5
#: class probabilities kept per image (the top ones; what built-in word search scores)
CLASS_PROBS_K = 16
#: SQLite page size of new catalogs. An image row is ~2.9 KB (2,560 B of float16 feature):
#: SQLite's default 4 KB page holds one such row and wastes the rest (4.3 KB per image on
#: disk); 32 KB pages hold 11 (~3.0 KB per image). Existing catalogs keep their page size.
#: Measured in bench/bench_cold.py (docs/storage.md).
PAGE_SIZE = 32768

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        sha256 TEXT,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        width INTEGER,
        height INTEGER,
        status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
        error TEXT,
        labels TEXT,
        top_class INTEGER,
        tags TEXT,
        feature BLOB,
        indexed_at REAL NOT NULL
    );
    CREATE INDEX images_sha256 ON images(sha256);
    CREATE INDEX images_status ON images(status);
    CREATE TABLE regions (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        shape TEXT NOT NULL,
        data BLOB NOT NULL
    );
    INSERT INTO meta VALUES ('generation', '0');
    """,
    # learned binary codes, one row per (hasher, image); dropped with the image
    2: """
    CREATE TABLE codes (
        hasher TEXT NOT NULL,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        code BLOB NOT NULL,
        PRIMARY KEY (hasher, image_id)
    );
    """,
    # which generation of a hasher is current (its file is hashers/<name>/g<generation>.safetensors)
    # and which generation made each code: re-training swaps both in one transaction
    3: """
    ALTER TABLE codes ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE hashers (
        name TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,
        bits INTEGER NOT NULL,
        sha256 TEXT NOT NULL
    );
    """,
    # the image's top CLASS_PROBS_K class probabilities: K uint16 class indices, K float16 probs
    4: """
    ALTER TABLE images ADD COLUMN class_probs BLOB;
    """,
    # running counts (`cbir info` and every index sync read them instead of scanning 1M rows),
    # kept by triggers in the same transaction as the change: 'ok' and 'error' rows, and
    # 'dup', the rows whose content (sha256) an earlier 'ok' row already has. `+status` keeps
    # SQLite on the sha256 index: through images_status each insert scanned every ok row
    5: """
    CREATE TABLE stats (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO stats VALUES
        ('ok', (SELECT COUNT(*) FROM images WHERE status = 'ok')),
        ('error', (SELECT COUNT(*) FROM images WHERE status = 'error')),
        ('dup', (SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) c FROM images
                 WHERE status = 'ok' AND sha256 IS NOT NULL GROUP BY sha256 HAVING c > 1)));
    CREATE TRIGGER images_stats_insert AFTER INSERT ON images BEGIN
        UPDATE stats SET value = value + 1 WHERE key = NEW.status;
        UPDATE stats SET value = value + 1 WHERE key = 'dup' AND NEW.status = 'ok'
            AND NEW.sha256 IS NOT NULL AND EXISTS (SELECT 1 FROM images
                WHERE sha256 = NEW.sha256 AND +status = 'ok' AND id != NEW.id);
    END;
    CREATE TRIGGER images_stats_delete AFTER DELETE ON images BEGIN
        UPDATE stats SET value = value - 1 WHERE key = OLD.status;
        UPDATE stats SET value = value - 1 WHERE key = 'dup' AND OLD.status = 'ok'
            AND OLD.sha256 IS NOT NULL AND EXISTS (SELECT 1 FROM images
                WHERE sha256 = OLD.sha256 AND +status = 'ok');
    END;
    CREATE TRIGGER images_stats_update AFTER UPDATE OF status, sha256 ON images BEGIN
        UPDATE stats SET value = value - 1 WHERE key = OLD.status;
        UPDATE stats SET value = value - 1 WHERE key = 'dup' AND OLD.status = 'ok'
            AND OLD.sha256 IS NOT NULL AND EXISTS (SELECT 1 FROM images
                WHERE sha256 = OLD.sha256 AND +status = 'ok' AND id != OLD.id);
        UPDATE stats SET value = value + 1 WHERE key = NEW.status;
        UPDATE stats SET value = value + 1 WHERE key = 'dup' AND NEW.status = 'ok'
            AND NEW.sha256 IS NOT NULL AND EXISTS (SELECT 1 FROM images
                WHERE sha256 = NEW.sha256 AND +status = 'ok' AND id != NEW.id);
    END;
    """,
}

#: what the running counts of the ``stats`` table must equal (``cbir verify`` compares them)
_STATS_SQL = {
    "ok": "SELECT COUNT(*) FROM images WHERE status = 'ok'",
    "error": "SELECT COUNT(*) FROM images WHERE status = 'error'",
    "dup": "SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) c FROM images"
           " WHERE status = 'ok' AND sha256 IS NOT NULL GROUP BY sha256 HAVING c > 1)",
}


def pack_class_probs(probs: np.ndarray, k: int = CLASS_PROBS_K) -> bytes:
    """The ``k`` largest of (n_classes,) probabilities as bytes: k uint16 indices, k float16."""
    p = np.asarray(probs, dtype=np.float32).reshape(-1)
    k = min(k, p.shape[0])
    top = np.argpartition(-p, k - 1)[:k]
    top = top[np.argsort(-p[top], kind="stable")]
    return top.astype("<u2").tobytes() + p[top].astype("<f2").tobytes()


def unpack_class_probs(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(indices int32, probabilities float32) of a pack_class_probs blob."""
    k = len(blob) // 4
    idx = np.frombuffer(blob, dtype="<u2", count=k).astype(np.int32)
    return idx, np.frombuffer(blob, dtype="<f2", offset=2 * k, count=k).astype(np.float32)


#: ``regions.shape`` marker of rows stored as 8-bit codes with a per-row range (pack_regions)
REGIONS_U8_ROW = "u8-row"


def _region_steps(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The code step of each row, float32, computed the same way when packing and unpacking."""
    return (hi.astype(np.float32) - lo.astype(np.float32)) / np.float32(255)


def pack_regions(regions: np.ndarray) -> tuple[str, bytes]:
    """(shape column, blob) of a region-feature array, e.g. (49, 1280).

    Each row (spatial position, last axis = channels) is stored as uint8 codes over its own
    range: ``value = lo + code * (hi - lo) / 255``. ``lo``/``hi`` are the row's min/max
    rounded outwards to float16, so they are kept exactly in 2 bytes each and the step is
    derived in float32 when reading: the error is at most half a step (plus the float16
    rounding that ``Catalog.regions`` always applied). Blob: lo (rows <f2), hi (rows <f2),
    codes (rows x channels u8); 62,916 bytes for 49 x 1280 instead of 125,440 as float16.
    Re-packing an unpacked array gives the same float16 values (a duplicate's regions are
    copied this way). Arrays with NaN/infinity or beyond the float16 range, or without a
    channel axis, are stored as before: a JSON shape list and float16 values.
    """
    x = np.asarray(regions, dtype=np.float32)
    if x.ndim >= 2 and x.size and np.isfinite(x).all():
        rows = x.reshape(-1, x.shape[-1])
        lo32, hi32 = rows.min(axis=1), rows.max(axis=1)
        with np.errstate(over="ignore"):
            lo, hi = lo32.astype("<f2"), hi32.astype("<f2")
            down, up = lo.astype(np.float32) > lo32, hi.astype(np.float32) < hi32
            lo[down] = np.nextafter(lo[down], np.float16(-np.inf))
            hi[up] = np.nextafter(hi[up], np.float16(np.inf))
        if np.isfinite(lo).all() and np.isfinite(hi).all():
            step = _region_steps(lo, hi)
            safe = np.where(step > 0, step, np.float32(1))
            codes = np.rint((rows - lo.astype(np.float32)[:, None]) / safe[:, None])
            codes = np.clip(codes, 0, 255).astype(np.uint8)
            shape = json.dumps({"shape": list(x.shape), "q": REGIONS_U8_ROW})
            return shape, lo.tobytes() + hi.tobytes() + codes.tobytes()
    reg = np.asarray(regions, dtype="<f2")
    return json.dumps(list(reg.shape)), reg.tobytes()


def unpack_regions(shape_text: str, blob: bytes, image_id: int | None = None) -> np.ndarray:
    """The float16 array of a (shape column, blob) pair: either format of pack_regions.

    A blob of the wrong size for its shape, or an unknown format, raises CollectionError
    (it used to raise numpy's ValueError): damaged rows are never returned as garbage.
    """
    spec = json.loads(shape_text)
    what = f"the stored region features of image {image_id}"
    if isinstance(spec, list):  # float16 values, as written before the 8-bit format
        shape = [int(s) for s in spec]
        if len(blob) != 2 * int(np.prod(shape)):
            raise CollectionError(f"{what} are damaged ({len(blob)} bytes for shape {shape}); "
                                  "`cbir remove` the image and index it again with --regions")
        return np.frombuffer(blob, dtype="<f2").reshape(shape)
    if not isinstance(spec, dict) or spec.get("q") != REGIONS_U8_ROW:
        raise CollectionError(f"{what} have an unknown format {shape_text[:80]!r}; "
                              "they were written by a newer version of cbir")
    shape = [int(s) for s in spec["shape"]]
    c = shape[-1]
    n_rows = int(np.prod(shape[:-1]))
    if len(blob) != 4 * n_rows + n_rows * c:
        raise CollectionError(f"{what} are damaged ({len(blob)} bytes for shape {shape}); "
                              "`cbir remove` the image and index it again with --regions")
    lo = np.frombuffer(blob, dtype="<f2", count=n_rows)
    hi = np.frombuffer(blob, dtype="<f2", count=n_rows, offset=2 * n_rows)
    codes = np.frombuffer(blob, dtype=np.uint8, offset=4 * n_rows).reshape(n_rows, c)
    out = lo.astype(np.float32)[:, None] + codes * _region_steps(lo, hi)[:, None]
    return out.astype("<f2").reshape(shape)


@dataclass
class ImageRecord:
    """One catalog row. ``feature`` is float16 (dim,) for status 'ok', else None."""

    path: str
    size: int
    mtime_ns: int
    status: str = "ok"
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    labels: list[tuple[str, float]] = field(default_factory=list)
    top_class: int | None = None
    tags: list[str] = field(default_factory=list)
    feature: np.ndarray | None = None
    regions: np.ndarray | None = None
    id: int | None = None
    indexed_at: float = 0.0
    #: (n_classes,) class probabilities to keep (their top CLASS_PROBS_K are stored); write only
    class_probs: np.ndarray | None = None


_COLUMNS = (
    "id, path, sha256, size, mtime_ns, width, height, status, error, labels, top_class, tags, "
    "indexed_at"
)


def _row_to_record(row: sqlite3.Row, feature: np.ndarray | None = None) -> ImageRecord:
    return ImageRecord(
        id=row["id"],
        path=row["path"],
        sha256=row["sha256"],
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        width=row["width"],
        height=row["height"],
        status=row["status"],
        error=row["error"],
        labels=[tuple(x) for x in json.loads(row["labels"] or "[]")],
        top_class=row["top_class"],
        tags=json.loads(row["tags"] or "[]"),
        indexed_at=row["indexed_at"],
        feature=feature,
    )


class Catalog:
    """The catalog of one collection. Use as a context manager or call ``close()``."""

    def __init__(self, path: Path, dim: int, *, readonly: bool = False):
        self.path = Path(path)
        self.dim = dim
        #: opened read-only (the collection folder or the file is not writable): no writes
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise CollectionError(f"no catalog at {self.path}; run `cbir index FOLDER` first")
        try:
            self.db = self._connect_readonly() if readonly else sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise CollectionError(f"cannot open catalog {self.path}: {e}") from None
        self.db.row_factory = sqlite3.Row
        try:
            if not readonly:
                if self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                    # a new file: pages that hold many ~2.9 KB rows (see PAGE_SIZE); settable
                    # only before the first table and before WAL mode
                    self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:  # e.g. "file is not a database": random bytes
            self.db.close()
            raise CollectionError(f"cannot read catalog {self.path}: {e} (restore it from a "
                                  "backup, or delete it and index the folders again)") from None
        except BaseException:
            self.db.close()
            raise

    def _connect_readonly(self) -> sqlite3.Connection:
        """Open without writing anything, not even WAL side files.

        Without a (non-empty) -wal file every committed row is in the main file, so
        ``immutable=1`` (no locks, no side files) reads it exactly. Otherwise ``mode=ro``
        reads the -wal too, which in a folder we cannot write to needs its -shm file.
        """
        uri = self.path.resolve().as_uri()
        wal = self.path.with_name(self.path.name + "-wal")
        if not (wal.exists() and wal.stat().st_size > 0):
            return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as e:
            db.close()
            raise CollectionError(
                f"catalog {self.path} has changes in {wal.name} that cannot be read without "
                f"write access ({e}); open the collection once with write access") from None
        return db

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CollectionError(
                f"catalog {self.path} has schema version {version}, newer than this cbir "
                f"understands ({SCHEMA_VERSION}); upgrade cbir"
            )
        if version < SCHEMA_VERSION and self.readonly:
            raise CollectionError(
                f"catalog {self.path} has schema version {version}, older than this cbir's "
                f"({SCHEMA_VERSION}), and its folder is read-only; open it once with write "
                "access to upgrade it")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            # one script = one transaction: a crash mid-migration leaves the old version
            self.db.executescript(f"BEGIN; {_MIGRATIONS[v]} PRAGMA user_version={v}; COMMIT;")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------
    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def transaction(self) -> Catalog._Tx:
        """``with catalog.transaction():`` — all or nothing, and bumps nothing by itself."""
        return Catalog._Tx(self.db)

    def generation(self) -> int:
        """A counter bumped by every committed change; the index remembers the one it saw."""
        return int(self.db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def _bump(self) -> None:
        self.db.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key='generation'"
        )

    def bump_generation(self) -> None:
        """Inside a transaction: a committed change that is not a row (a setting that changes
        what the index holds, e.g. the partitioning model), seen by every generation check."""
        self._bump()

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- writes ---------------------------------------------------------------------------
    def commit_batch(self, records: Sequence[ImageRecord], remove_paths: Iterable[str] = ()) -> list[int]:
        """Atomically replace the rows of ``records`` (by path) and delete ``remove_paths``.

        A replaced row gets a new id, so the vector index sees it as removed + added.
        Returns the new ids in the order of ``records``.
        """
        now = time.time()
        ids: list[int] = []
        with self.transaction() as db:
            for p in remove_paths:
                db.execute("DELETE FROM images WHERE path=?", (p,))
            for r in records:
                db.execute("DELETE FROM images WHERE path=?", (r.path,))
                blob = None
                if r.feature is not None:
                    f = np.asarray(r.feature, dtype="<f2").reshape(-1)
                    if f.shape[0] != self.dim:
                        raise CollectionError(
                            f"feature of {r.path} has {f.shape[0]} values, expected {self.dim}"
                        )
                    blob = f.tobytes()
                cur = db.execute(
                    "INSERT INTO images (path, sha256, size, mtime_ns, width, height, status, error,"
                    " labels, top_class, tags, feature, indexed_at, class_probs)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.path, r.sha256, r.size, r.mtime_ns, r.width, r.height, r.status, r.error,
                        json.dumps([list(x) for x in r.labels]), r.top_class,
                        json.dumps(r.tags, ensure_ascii=False), blob, now,
                        None if r.class_probs is None else (
                            r.class_probs if isinstance(r.class_probs, bytes) else
                            pack_class_probs(r.class_probs)),
                    ),
                )
                rid = int(cur.lastrowid)
                ids.append(rid)
                if r.regions is not None:
                    db.execute("INSERT INTO regions VALUES (?, ?, ?)", (rid, *pack_regions(r.regions)))
            self._bump()
        return ids

    def remove_paths(self, paths: Iterable[str]) -> int:
        """Delete rows by exact path; returns how many existed."""
        n = 0
        with self.transaction() as db:
            for p in paths:
                n += db.execute("DELETE FROM images WHERE path=?", (p,)).rowcount
            if n:
                self._bump()
        return n

    def clear(self) -> int:
        with self.transaction() as db:
            n = db.execute("DELETE FROM images").rowcount
            self._bump()
        return n

    # -- reads ----------------------------------------------------------------------------
    def _stat(self, key: str) -> int:
        """A running count of the ``stats`` table (O(1), kept by triggers)."""
        row = self.db.execute("SELECT value FROM stats WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row is not None else int(self.db.execute(_STATS_SQL[key]).fetchone()[0])

    def count(self, status: str | None = None) -> int:
        """Rows with ``status`` ('ok' or 'error'), or all rows; O(1) from the running counts."""
        if status is None:
            return self._stat("ok") + self._stat("error")
        if status not in _STATS_SQL or status == "dup":
            return int(
                self.db.execute("SELECT COUNT(*) FROM images WHERE status=?", (status,)).fetchone()[0]
            )
        return self._stat(status)

    def stats_problems(self, *, duplicates: bool = True) -> list[str]:
        """Running counts that differ from a recount of the rows ([] if all agree).

        ``duplicates=False`` skips the duplicate count (a GROUP BY over every sha256, ~2 s
        at 1M rows); the status counts come from the status index (~0.1 s at 1M).
        """
        out = []
        for key, sql in _STATS_SQL.items():
            if key == "dup" and not duplicates:
                continue
            kept, real = self._stat(key), int(self.db.execute(sql).fetchone()[0])
            if kept != real:
                out.append(f"catalog: running count {key!r} is {kept} but the rows say {real}; "
                           "`cbir verify --recount` rewrites the counts")
        return out

    def recount(self) -> None:
        """Rewrite the running counts from the rows (repairs what ``stats_problems`` finds)."""
        with self.transaction() as db:
            for key, sql in _STATS_SQL.items():
                db.execute("INSERT OR REPLACE INTO stats VALUES (?, (" + sql + "))", (key,))

    def file_states(self, under: str | None = None) -> dict[str, tuple[int, int, str]]:
        """path -> (size, mtime_ns, status) for rows whose path is ``under`` (a folder or a file)."""
        if under is None:
            rows = self.db.execute("SELECT path, size, mtime_ns, status FROM images")
        else:
            under = under.rstrip("/") or "/"
            prefix = under if under == "/" else under + "/"
            rows = self.db.execute(
                "SELECT path, size, mtime_ns, status FROM images"
                " WHERE path = ? OR substr(path, 1, ?) = ?",
                (under, len(prefix), prefix),
            )
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def ok_hashes(self) -> dict[str, int]:
        """sha256 -> one row id with that content (for recognising duplicate files)."""
        rows = self.db.execute(
            "SELECT sha256, MIN(id) FROM images WHERE status='ok' AND sha256 IS NOT NULL GROUP BY sha256"
        )
        return {r[0]: r[1] for r in rows}

    def get(self, *, id: int | None = None, path: str | None = None,
            with_feature: bool = False) -> ImageRecord | None:
        cols = _COLUMNS + (", feature" if with_feature else "")
        if id is not None:
            row = self.db.execute(f"SELECT {cols} FROM images WHERE id=?", (int(id),)).fetchone()
        else:
            row = self.db.execute(f"SELECT {cols} FROM images WHERE path=?", (path,)).fetchone()
        if row is None:
            return None
        feat = self._decode(row["feature"]) if with_feature else None
        return _row_to_record(row, feat)

    def records(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        """Rows by id (without features); missing ids are absent from the result."""
        out: dict[int, ImageRecord] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            q = ",".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT {_COLUMNS} FROM images WHERE id IN ({q})", chunk):
                out[row["id"]] = _row_to_record(row)
        return out

    def iter_records(self, status: str | None = None) -> Iterator[ImageRecord]:
        sql = f"SELECT {_COLUMNS} FROM images"
        args: tuple = ()
        if status:
            sql += " WHERE status=?"
            args = (status,)
        for row in self.db.execute(sql + " ORDER BY id", args):
            yield _row_to_record(row)

    def ok_ids(self) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM images WHERE status='ok' ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def features(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), features float32 (n, dim)) for 'ok' rows (all, or the given ids)."""
        if ids is None:
            rows = self.db.execute(
                "SELECT id, feature FROM images WHERE status='ok' ORDER BY id"
            ).fetchall()
        else:
            rows = []
            ids = [int(i) for i in ids]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                q = ",".join("?" * len(chunk))
                rows += self.db.execute(
                    f"SELECT id, feature FROM images WHERE status='ok' AND id IN ({q})", chunk
                ).fetchall()
        size = 2 * self.dim
        damaged = [int(r[0]) for r in rows if r[1] is None or len(r[1]) != size]
        if damaged:  # skipped, never broadcast into a vector; `cbir verify` names them
            self._warn_damaged(damaged)
            rows = [r for r in rows if r[1] is not None and len(r[1]) == size]
        out_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        # one join + one conversion (not one small array per row): re-scoring reads ~20 rows
        # per query, `hash train` and index builds read them all
        feats = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f2").reshape(
            len(rows), self.dim).astype(np.float32)
        return out_ids, feats

    def _warn_damaged(self, ids: list[int]) -> None:
        import warnings

        from cbir.errors import DamagedFeatureWarning

        q = ",".join("?" * min(len(ids), 3))
        named = self.db.execute(f"SELECT id, path FROM images WHERE id IN ({q}) ORDER BY id",
                                ids[:3]).fetchall()
        more = f" and {len(ids) - len(named)} more" if len(ids) > len(named) else ""
        warnings.warn(DamagedFeatureWarning(
            f"skipped {len(ids)} image(s) whose stored feature is damaged (not {self.dim} "
            "values): " + ", ".join(f"id {r[0]} {r[1]}" for r in named) + more
            + "; `cbir verify` lists them (`cbir remove` them and index again to repair)"),
            stacklevel=3)

    def class_probs(self) -> tuple[np.ndarray, list[bytes | None], list[str]]:
        """Every ok image's stored class probabilities: (ids int64, blobs (None where the
        image was indexed before they were stored), labels JSON for those)."""
        rows = self.db.execute(
            "SELECT id, class_probs, CASE WHEN class_probs IS NULL THEN labels END FROM images"
            " WHERE status='ok' ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, [r[1] for r in rows], [r[2] for r in rows]

    def class_probs_blobs(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The stored class-probability blobs of ``ids`` (to copy onto a duplicate's row)."""
        out: dict[int, bytes] = {}
        for lo in range(0, len(ids), 900):
            chunk = [int(i) for i in ids[lo:lo + 900]]
            q = ",".join("?" * len(chunk))
            for r in self.db.execute(f"SELECT id, class_probs FROM images WHERE id IN ({q})", chunk):
                if r[1] is not None:
                    out[int(r[0])] = r[1]
        return out

    def regions(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored region features, float16 arrays by image id (only images indexed with regions;
        8-bit rows are dequantised, see pack_regions). A damaged blob raises CollectionError."""
        out: dict[int, np.ndarray] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 200):
            chunk = ids[start:start + 200]
            q = ",".join("?" * len(chunk))
            for r in self.db.execute(
                f"SELECT image_id, shape, data FROM regions WHERE image_id IN ({q})", chunk
            ):
                out[r[0]] = unpack_regions(r[1], r[2], r[0])
        return out

    def _decode(self, blob: bytes | None) -> np.ndarray | None:
        if blob is None:
            return None
        return np.frombuffer(blob, dtype="<f2").astype(np.float32)

    # -- binary codes -------------------------------------------------------------------
    def put_codes(self, hasher: str, ids: Sequence[int], codes: np.ndarray,
                  generation: int | None = None) -> bool:
        """Store packed uint8 codes (n, B) of ``hasher`` for image ids, in one transaction.

        With ``generation`` (the hasher generation that made the codes) they are stored only
        while it is still the current one, so a re-training committed meanwhile is never
        mixed with codes of the hasher it replaced; returns whether they were stored.
        """
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        with self.transaction() as db:
            if generation is not None:
                row = db.execute("SELECT generation FROM hashers WHERE name=?", (hasher,)).fetchone()
                if (0 if row is None else int(row[0])) != generation:
                    return False
            db.executemany(
                "INSERT OR REPLACE INTO codes (hasher, image_id, code, generation) VALUES (?, ?, ?, ?)",
                ((hasher, int(i), c.tobytes(), int(generation or 0))
                 for i, c in zip(ids, codes, strict=True)),
            )
        return True

    def replace_codes(self, hasher: str, ids: Sequence[int], codes: np.ndarray, *,
                      generation: int, bits: int, sha256: str) -> None:
        """Swap in all codes of a (re-)trained hasher and make ``generation`` its current one.

        ONE transaction: readers see the old codes and generation or the new ones, never a
        mix, whenever the process dies. Ids removed from the catalog meanwhile are skipped.
        """
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        with self.transaction() as db:
            db.execute("DELETE FROM codes WHERE hasher=?", (hasher,))
            db.executemany(
                "INSERT INTO codes (hasher, image_id, code, generation)"
                " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id=?)",
                ((hasher, int(i), c.tobytes(), int(generation), int(i))
                 for i, c in zip(ids, codes, strict=True)),
            )
            db.execute("INSERT OR REPLACE INTO hashers (name, generation, bits, sha256)"
                       " VALUES (?, ?, ?, ?)", (hasher, int(generation), int(bits), sha256))

    def hasher_record(self, hasher: str) -> dict | None:
        """{name, generation, bits, sha256} of ``hasher``'s current generation (None: none)."""
        row = self.db.execute("SELECT name, generation, bits, sha256 FROM hashers WHERE name=?",
                              (hasher,)).fetchone()
        return None if row is None else dict(row)

    def hasher_names(self) -> list[str]:
        """Hashers with a record or with stored codes."""
        rows = self.db.execute("SELECT name FROM hashers UNION SELECT DISTINCT hasher FROM codes")
        return sorted(r[0] for r in rows)

    def codes_summary(self, hasher: str) -> list[tuple[int, int, int]]:
        """(generation, code length in bytes, count) of ``hasher``'s codes of 'ok' images."""
        rows = self.db.execute(
            "SELECT c.generation, length(c.code), COUNT(*) FROM codes c JOIN images i"
            " ON i.id = c.image_id WHERE c.hasher=? AND i.status='ok' GROUP BY 1, 2 ORDER BY 1, 2",
            (hasher,))
        return [(int(r[0]), int(r[1]), int(r[2])) for r in rows]

    def codes(self, hasher: str, generation: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), codes uint8 (n, B)) of ``hasher`` for images still 'ok', by id.

        With ``generation``: only the codes that generation of the hasher made.
        """
        sql = ("SELECT c.image_id, c.code FROM codes c JOIN images i ON i.id = c.image_id"
               " WHERE c.hasher=? AND i.status='ok'")
        args: tuple = (hasher,)
        if generation is not None:
            sql += " AND c.generation=?"
            args += (int(generation),)
        rows = self.db.execute(sql + " ORDER BY c.image_id", args).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, 0), dtype=np.uint8)
        return ids, np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint8).reshape(len(rows), -1)

    def ids_without_codes(self, hasher: str) -> np.ndarray:
        rows = self.db.execute(
            "SELECT id FROM images WHERE status='ok' AND id NOT IN"
            " (SELECT image_id FROM codes WHERE hasher=?) ORDER BY id", (hasher,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def drop_codes(self, hasher: str) -> int:
        """Delete ``hasher``'s codes and its record, in one transaction; returns how many codes."""
        with self.transaction() as db:
            n = db.execute("DELETE FROM codes WHERE hasher=?", (hasher,)).rowcount
            db.execute("DELETE FROM hashers WHERE name=?", (hasher,))
        return n

    def error_summary(self) -> list[tuple[str, int]]:
        rows = self.db.execute(
            "SELECT error, COUNT(*) FROM images WHERE status='error' GROUP BY error ORDER BY 2 DESC"
        )
        return [(r[0], r[1]) for r in rows]

    def duplicate_groups(self) -> int:
        """How many extra copies exist of content that is already indexed under another path
        (O(1): a running count)."""
        return self._stat("dup")

    def damaged_among(self, ids: Sequence[int], *, warn: bool = True) -> list[int]:
        """Those of ``ids`` whose stored feature is missing or of the wrong size, said once as
        a DamagedFeatureWarning (an index saved before the damage still holds their vectors)."""
        ids = [int(i) for i in ids]
        bad: list[int] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            q = ",".join("?" * len(chunk))
            bad += [r[0] for r in self.db.execute(
                f"SELECT id FROM images WHERE id IN ({q}) AND status='ok'"
                " AND (feature IS NULL OR length(feature) != ?)", (*chunk, 2 * self.dim))]
        if bad and warn:
            self._warn_damaged(sorted(bad))
        return bad

    def damaged_feature_ids(self) -> np.ndarray:
        """Ids of 'ok' rows whose feature is missing or of the wrong size (searches skip them)."""
        rows = self.db.execute(
            "SELECT id FROM images WHERE status='ok' AND (feature IS NULL OR length(feature) != ?)"
            " ORDER BY id", (2 * self.dim,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def integrity_problems(self, *, quick: bool = False) -> list[str]:
        """SQLite's own integrity check plus row-level checks of the stored features.

        ``quick=True`` checks only the running counts of 'ok' and 'error' rows (from the
        status index: ~0.1 s at 1M rows); the full check reads every page (SQLite's
        integrity_check, then one pass over the rows: ~1 min at 1M, 10 GB).
        """
        if quick:
            return self.stats_problems(duplicates=False)
        problems: list[str] = []
        res = [r[0] for r in self.db.execute("PRAGMA integrity_check")]
        if res != ["ok"]:
            problems += [f"sqlite: {r}" for r in res]
        problems += self.stats_problems()
        expected = self.dim * 2
        rows = self.db.execute(
            "SELECT id, path, status, error IS NULL, feature FROM images ORDER BY id")
        while batch := rows.fetchmany(10_000):
            good: list[tuple[str, bytes]] = []
            for rid, path, status, no_error, feat in batch:
                if status == "error":
                    if no_error or feat is not None:
                        problems.append(f"{path}: error row without a reason or with a feature")
                elif feat is None or len(feat) != expected:
                    problems.append(
                        f"image id {rid} ({path}): "
                        + ("missing feature" if feat is None else
                           f"wrong-size feature ({len(feat)} bytes, expected {expected}: "
                           f"{self.dim} float16 values)") + "; searches skip it")
                else:
                    good.append((path, feat))
            if not good:
                continue
            f = np.frombuffer(b"".join(g[1] for g in good), dtype="<f2").reshape(len(good), self.dim)
            f = f.astype(np.float32)
            with np.errstate(over="ignore", invalid="ignore"):
                norms = np.linalg.norm(f, axis=1)
            for k in np.flatnonzero(~np.isfinite(f).all(axis=1) | ~(np.abs(norms - 1.0) <= 0.01)):
                problems.append(f"{good[k][0]}: feature is not finite and unit-length "
                                f"(norm {float(norms[k]):.3f})")
        return problems

    def db_bytes(self) -> int:
        return sum(
            p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file()
        )
