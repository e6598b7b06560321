"""The device's spool: a SQLite file holding every item from before it is sent until the cloud acknowledges it.

An item enters the spool in the same transaction that advances the source
cursor, so after a crash the client neither loses an item nor takes one twice;
it leaves the spool only when an IngestAck names it. The spool is bounded
(payload + id bytes); `add_many` raises SpoolFullError instead of dropping.
One process at a time owns a spool (an flock on a side file).

An item the cloud refuses for good (its payload does not fit the bundle, its
id was used for other content) is moved to the `quarantine` table with the
cloud's reason, in one transaction: it no longer blocks the items behind it,
and it is still on the device (`edge.cli quarantine` lists it, `--requeue`
sends it again after the cause is fixed). Quarantined bytes count towards
the bound.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from latent_codec.errors import CodecError

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
  seq            INTEGER PRIMARY KEY AUTOINCREMENT,
  item_id        TEXT    NOT NULL UNIQUE,
  bundle_id      TEXT    NOT NULL,
  payload        BLOB    NOT NULL,
  captured_at_ms INTEGER NOT NULL,
  original       BLOB,
  name           TEXT    NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
  item_id           TEXT    PRIMARY KEY,
  bundle_id         TEXT    NOT NULL,
  payload           BLOB    NOT NULL,
  captured_at_ms    INTEGER NOT NULL,
  reason            TEXT    NOT NULL,
  quarantined_at_ms INTEGER NOT NULL,
  original          BLOB,
  name              TEXT    NOT NULL DEFAULT ''
);
"""
# Spools written before field audit had no `original` column, before source names no `name`: added on open.
MIGRATIONS = [
    ("items", "original", "BLOB"),
    ("quarantine", "original", "BLOB"),
    ("items", "name", "TEXT NOT NULL DEFAULT ''"),
    ("quarantine", "name", "TEXT NOT NULL DEFAULT ''"),
]
ITEM_OVERHEAD = 32  # bytes counted per item besides payload and id (row, index entries), roughly


class SpoolError(CodecError):
    """The spool file cannot be opened or used."""


class SpoolFullError(SpoolError):
    """Taking more items would exceed the spool's size bound."""


@dataclass(frozen=True)
class SpooledItem:
    seq: int
    item_id: str
    bundle_id: str
    payload: bytes
    captured_at_ms: int
    original: bytes | None = None  # a serialised Tensor of the original item, for field audit (a sampled few)
    name: str = ""  # the item's source name (a photo's file name), stored with it in the cloud


@dataclass(frozen=True)
class QuarantinedItem:
    item_id: str
    bundle_id: str
    payload_bytes: int
    captured_at_ms: int
    reason: str
    quarantined_at_ms: int


def item_cost(item_id: str, payload: bytes, original: bytes | None = None, name: str = "") -> int:
    return len(payload) + len(item_id.encode()) + len(original or b"") + len(name.encode()) + ITEM_OVERHEAD


class Spool:
    def __init__(self, path: str | Path, max_bytes: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        if max_bytes <= 0:
            raise SpoolError(f"spool size bound must be positive, got {max_bytes}")
        if not self.path.parent.is_dir():
            raise SpoolError(f"spool {self.path}: directory {self.path.parent} does not exist")
        self._lockfile = open(str(self.path) + ".lock", "a")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise SpoolError(f"spool {self.path} is in use by another process") from None
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=10
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            for table, column, kind in MIGRATIONS:
                if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self._count, self._bytes = self._usage()
        except sqlite3.DatabaseError as exc:
            self._lockfile.close()
            raise SpoolError(f"spool {self.path}: {exc}") from None

    # ---- metadata -----------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def device_id(self, wanted: str | None = None) -> str:
        """The device id this spool sends as: stored on first use so restarts keep it."""
        stored = self.get_meta("device_id")
        if wanted and stored and wanted != stored and self._count:
            raise SpoolError(
                f"spool {self.path} holds {self._count} items of device {stored!r}; "
                f"refusing to send them as {wanted!r} (use another --spool)"
            )
        if wanted:
            if wanted != stored:
                self.set_meta("device_id", wanted)
            return wanted
        if stored:
            return stored
        new = f"dev-{uuid.uuid4().hex[:16]}"
        self.set_meta("device_id", new)
        return new

    def cursor(self, source: str) -> int:
        """How many items of this source were taken into the spool so far."""
        value = self.get_meta(f"cursor:{source}")
        return int(value) if value else 0

    # ---- items --------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._count

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def add_many(
        self,
        items: Sequence[tuple],
        source: str | None = None,
        cursor: int | None = None,
    ) -> None:
        """Spool (item_id, bundle_id, payload, captured_at_ms[, original[, name]]) items and advance the source
        cursor, atomically. Raises SpoolFullError (taking nothing) when they do not fit.
        """
        rows = [(*it, None, "")[:6] if len(it) == 4 else (*it, "")[:6] for it in items]
        cost = sum(item_cost(r[0], r[2], r[4], r[5]) for r in rows)
        with self._lock:
            if self._bytes + cost > self.max_bytes:
                raise SpoolFullError(
                    f"spool {self.path} is full: {self._count} items use {self._bytes:,} of {self.max_bytes:,} "
                    f"bytes and {len(items)} more need {cost:,}"
                )
            with self._transaction() as db:
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO items (item_id, bundle_id, payload, captured_at_ms, original, name) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                added = db.total_changes - before
                if source is not None and cursor is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (f"cursor:{source}", str(cursor)),
                    )
            if added == len(items):
                self._count += len(items)
                self._bytes += cost
            else:  # some ids were spooled already (kept once): recount
                self._count, self._bytes = self._usage()

    def _usage(self) -> tuple[int, int]:
        """(items waiting to be sent, bytes of the spool file's items, quarantined ones included)."""
        usage = []
        for table in ("items", "quarantine"):
            n, size = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload) + LENGTH(CAST(item_id AS BLOB)) "
                f"+ COALESCE(LENGTH(original), 0) + LENGTH(CAST(name AS BLOB))), 0) FROM {table}"
            ).fetchone()
            usage.append((int(n), int(size) + ITEM_OVERHEAD * int(n)))
        return usage[0][0], usage[0][1] + usage[1][1]

    def peek(self, after_seq: int, limit: int) -> list[SpooledItem]:
        """Up to limit spooled items with seq > after_seq, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, item_id, bundle_id, payload, captured_at_ms, original, name FROM items WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            SpooledItem(int(s), i, b, bytes(p), int(c), None if o is None else bytes(o), n)
            for s, i, b, p, c, o, n in rows
        ]

    def remove(self, items: Sequence[SpooledItem]) -> None:
        """Forget acknowledged items (one transaction)."""
        if not items:
            return
        with self._lock:
            with self._transaction() as db:
                db.executemany("DELETE FROM items WHERE seq = ?", [(it.seq,) for it in items])
            self._count -= len(items)
            self._bytes -= sum(item_cost(it.item_id, it.payload, it.original, it.name) for it in items)

    @contextmanager
    def _transaction(self):
        """One write transaction (caller holds self._lock); any SQLite error rolls back and is a SpoolError."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise SpoolError(f"spool {self.path}: {exc}") from None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # ---- quarantine -----------------------------------------------------------
    def quarantine(self, item: SpooledItem, reason: str, now_ms: int) -> None:
        """Move an item the cloud refused for good out of the send queue, keeping it and the reason."""
        with self._lock:
            with self._transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO quarantine (item_id, bundle_id, payload, captured_at_ms, reason, "
                    "quarantined_at_ms, original, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.item_id,
                        item.bundle_id,
                        item.payload,
                        item.captured_at_ms,
                        reason,
                        now_ms,
                        item.original,
                        item.name,
                    ),
                )
                db.execute("DELETE FROM items WHERE seq = ?", (item.seq,))
            self._count, self._bytes = self._usage()

    def quarantined(self) -> list[QuarantinedItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT item_id, bundle_id, LENGTH(payload), captured_at_ms, reason, quarantined_at_ms "
                "FROM quarantine ORDER BY quarantined_at_ms, item_id"
            ).fetchall()
        return [QuarantinedItem(i, b, int(n), int(c), r, int(q)) for i, b, n, c, r, q in rows]

    def requeue(self) -> int:
        """Put every quarantined item back in the send queue (after the cause was fixed); returns how many."""
        with self._lock:
            n = self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
            with self._transaction() as db:
                db.execute(
                    "INSERT OR IGNORE INTO items (item_id, bundle_id, payload, captured_at_ms, original, name) "
                    "SELECT item_id, bundle_id, payload, captured_at_ms, original, name FROM quarantine "
                    "ORDER BY quarantined_at_ms"
                )
                db.execute("DELETE FROM quarantine")
            self._count, self._bytes = self._usage()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
        finally:
            self._lockfile.close()


def parse_size(text: str) -> int:
    """'64M', '512k', '1G' or a plain byte count -> bytes."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMG" and t else t
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise SpoolError(f"spool size {text!r} is not a size (e.g. 64M, 512k, 1G, 1000000)") from None
    if value <= 0:
        raise SpoolError(f"spool size {text!r} must be positive")
    return value


__all__ = ["Spool", "SpoolError", "SpoolFullError", "SpooledItem", "QuarantinedItem", "parse_size"]
