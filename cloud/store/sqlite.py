"""SQLite store: the embedded default. WAL mode, synchronous=FULL, one writer at a time.

synchronous=FULL makes a commit durable against power loss, not only against a
crashed process, which is what an acknowledgement promises. Writers take the
write lock up front (BEGIN IMMEDIATE) so the duplicate check and the insert
see the same state.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from .base import (
    ItemConflict,
    NewItem,
    Store,
    StoredRecord,
    StoreError,
    StoreFull,
    StoreUnavailable,
    Summary,
    chunk_rows,
    conflict_message,
    same_content,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ingested_items (
  device_id      TEXT    NOT NULL,
  item_id        TEXT    NOT NULL,
  bundle_id      TEXT    NOT NULL,
  payload        BLOB    NOT NULL,
  captured_at_ms INTEGER NOT NULL,
  stored_at_ms   INTEGER NOT NULL,
  name           TEXT    NOT NULL DEFAULT '',
  PRIMARY KEY (device_id, item_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ingested_items_by_time ON ingested_items (device_id, captured_at_ms, item_id);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# After the added columns exist: the search scan reads (device_id, item_id, binary_code) of one bundle from this
# index alone, in key order, without touching the payloads.
SEARCH_INDEX = """
CREATE INDEX IF NOT EXISTS ingested_items_by_code ON ingested_items (bundle_id, device_id, item_id, binary_code)
  WHERE binary_code IS NOT NULL;
CREATE TABLE IF NOT EXISTS code_chunks (
  bundle_id TEXT NOT NULL, chunk INTEGER NOT NULL, value INTEGER NOT NULL,
  device_id TEXT NOT NULL, item_id TEXT NOT NULL, binary_code BLOB NOT NULL,
  PRIMARY KEY (bundle_id, chunk, value, device_id, item_id)
) WITHOUT ROWID;
"""
COLUMNS = "device_id, item_id, bundle_id, payload, captured_at_ms, stored_at_ms, audit_mse, name"
CHUNK = 400  # ids per IN (...) query, well under SQLite's variable limit


def _record(row) -> StoredRecord:
    return StoredRecord(row[0], row[1], row[2], bytes(row[3]), int(row[4]), int(row[5]), row[6], row[7])


class SqliteStore(Store):
    def __init__(self, path: str | Path, busy_timeout_s: float = 10.0):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise StoreError(f"store {self.path}: directory {self.path.parent} does not exist")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"store {self.path}: cannot switch to WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(ingested_items)")}
            for name, sqlite_type, _ in self.ADDED_COLUMNS:  # a database from before these columns: migrate
                if name not in have:
                    self._db.execute(f"ALTER TABLE ingested_items ADD COLUMN {name} {sqlite_type}")
            self._db.executescript(SEARCH_INDEX)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"store {self.path}: {exc}") from None

    def _fail(self, exc: sqlite3.Error) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "full" in str(exc):
            return StoreFull(f"store {self.path} is out of space ({exc})")
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return StoreUnavailable(f"store {self.path} is busy ({exc})")
        if code is not None and code & 0xFF in (
            sqlite3.SQLITE_IOERR,
            sqlite3.SQLITE_CANTOPEN,
            sqlite3.SQLITE_READONLY,
        ):
            return StoreUnavailable(f"store {self.path} cannot be written ({exc})")
        return StoreError(f"store {self.path}: {exc}")

    def put_many(self, items: Sequence[NewItem], stored_at_ms: int) -> int:
        if not items:
            return 0
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    existing = self._existing(items)
                    dup = 0
                    fresh = []
                    for it in items:
                        old = existing.get((it.device_id, it.item_id))
                        if old is None:
                            fresh.append(
                                (
                                    it.device_id,
                                    it.item_id,
                                    it.bundle_id,
                                    it.payload,
                                    it.captured_at_ms,
                                    stored_at_ms,
                                    it.binary_code,
                                    it.audit_mse,
                                    it.name,
                                )
                            )
                        elif same_content(old[0], old[1], it.bundle_id, it.payload):
                            dup += 1
                        else:
                            raise ItemConflict(conflict_message(it), it.item_id)
                    db.executemany(
                        "INSERT INTO ingested_items (device_id, item_id, bundle_id, payload, captured_at_ms, "
                        "stored_at_ms, binary_code, audit_mse, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        fresh,
                    )
                    new = {(f[0], f[1]) for f in fresh}
                    db.executemany(  # the multi-index entries of the new items (cloud/store/base.py, search)
                        "INSERT INTO code_chunks VALUES (?, ?, ?, ?, ?, ?)",
                        [r for it in items if (it.device_id, it.item_id) in new for r in chunk_rows(it)],
                    )
                    db.execute("COMMIT")
                    return dup
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    def _existing(self, items: Sequence[NewItem]) -> dict[tuple[str, str], tuple[str, bytes]]:
        by_device: dict[str, list[str]] = {}
        for it in items:
            by_device.setdefault(it.device_id, []).append(it.item_id)
        found = {}
        for device, ids in by_device.items():
            for i in range(0, len(ids), CHUNK):
                part = ids[i : i + CHUNK]
                q = (
                    f"SELECT item_id, bundle_id, payload FROM ingested_items WHERE device_id = ? "
                    f"AND item_id IN ({','.join('?' * len(part))})"
                )
                for item_id, bundle_id, payload in self._db.execute(q, [device, *part]):
                    found[(device, item_id)] = (bundle_id, bytes(payload))
        return found

    def get(self, item_ids: Sequence[str], device_id: str = "") -> list[StoredRecord]:
        out: list[StoredRecord] = []
        ids = list(dict.fromkeys(item_ids))
        with self._lock:
            try:
                for i in range(0, len(ids), CHUNK):
                    part = ids[i : i + CHUNK]
                    q = f"SELECT {COLUMNS} FROM ingested_items WHERE item_id IN ({','.join('?' * len(part))})"
                    args: list = list(part)
                    if device_id:
                        q += " AND device_id = ?"
                        args.append(device_id)
                    out.extend(_record(r) for r in self._db.execute(q, args))
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
        order = {k: n for n, k in enumerate(ids)}
        out.sort(key=lambda r: (order[r.item_id], r.device_id))
        return out

    def query(self, device_id: str, since_ms: int, until_ms: int, limit: int) -> list[StoredRecord]:
        q = f"SELECT {COLUMNS} FROM ingested_items WHERE device_id = ? AND captured_at_ms >= ?"
        args: list = [device_id, since_ms]
        if until_ms:
            q += " AND captured_at_ms < ?"
            args.append(until_ms)
        q += " ORDER BY captured_at_ms, item_id LIMIT ?"
        args.append(limit)
        with self._lock:
            try:
                return [_record(r) for r in self._db.execute(q, args)]
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    def summaries(self, device_id: str = "") -> list[Summary]:
        q = "SELECT device_id, bundle_id, COUNT(*), SUM(LENGTH(payload)) FROM ingested_items"
        args: list = []
        if device_id:
            q += " WHERE device_id = ?"
            args.append(device_id)
        q += " GROUP BY device_id, bundle_id ORDER BY device_id, bundle_id"
        with self._lock:
            try:
                return [Summary(d, b, int(n), int(s or 0)) for d, b, n, s in self._db.execute(q, args)]
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    def binary_codes(
        self, bundle_id: str, device_ids: Sequence[str] | None
    ) -> tuple[list[tuple[str, str]], list[bytes]]:
        q = "SELECT device_id, item_id, binary_code FROM ingested_items WHERE bundle_id = ? AND binary_code IS NOT NULL"
        args: list = [bundle_id]
        if device_ids is not None:
            if not device_ids:
                return [], []
            q += f" AND device_id IN ({','.join('?' * len(device_ids))})"
            args.extend(device_ids)
        with self._lock:
            try:
                rows = self._db.execute(q, args).fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
        return [(d, i) for d, i, _ in rows], [c for _, _, c in rows]

    def code_count(self, bundle_id: str, device_ids: Sequence[str] | None) -> int:
        q = "SELECT count(*) FROM ingested_items WHERE bundle_id = ? AND binary_code IS NOT NULL"
        args: list = [bundle_id]
        if device_ids is not None:
            q += f" AND device_id IN ({','.join('?' * len(device_ids))})"
            args.extend(device_ids)
        with self._lock:
            try:
                return int(self._db.execute(q, args).fetchone()[0])
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    def code_candidates(
        self, bundle_id: str, device_ids: Sequence[str] | None, probes: Sequence[tuple[int, Sequence[int]]]
    ) -> tuple[list[tuple[str, str]], list[bytes]]:
        if device_ids is not None and not device_ids:
            return [], []
        scope = "" if device_ids is None else f" AND device_id IN ({','.join('?' * len(device_ids))})"
        # One SELECT per chunk, so each seeks the primary key (bundle_id, chunk, value); UNION drops the repeats.
        parts, args = [], []
        for j, vs in probes:
            parts.append(
                "SELECT device_id, item_id, binary_code FROM code_chunks WHERE bundle_id = ? AND chunk = ? "
                f"AND value IN ({','.join(str(int(v)) for v in vs)}){scope}"
            )
            args += [bundle_id, int(j), *(device_ids or [])]
        with self._lock:
            try:
                rows = self._db.execute(" UNION ".join(parts), args).fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
        return [(d, i) for d, i, _ in rows], [c for _, _, c in rows]

    def check_writable(self) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO store_meta (key, value) VALUES ('write_check', datetime('now')) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                )
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
