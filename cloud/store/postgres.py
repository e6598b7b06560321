"""PostgreSQL store (psycopg 3): for several stateless server replicas sharing one database.

One INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING per batch: one
round trip however many items, and concurrent replicas writing the same item
serialise on its primary key, so it is stored once and both acknowledge it.
Connections come from psycopg_pool, which checks a connection before handing
it out and reconnects in the background: during an outage every call fails
fast with StoreUnavailable (retryable, UNAVAILABLE to clients), and the first
call after the database is back succeeds, with no restart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

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
  device_id      text   NOT NULL,
  item_id        text   NOT NULL,
  bundle_id      text   NOT NULL,
  payload        bytea  NOT NULL,
  captured_at_ms bigint NOT NULL,
  stored_at_ms   bigint NOT NULL,
  name           text   NOT NULL DEFAULT '',
  PRIMARY KEY (device_id, item_id)
);
CREATE INDEX IF NOT EXISTS ingested_items_by_time ON ingested_items (device_id, captured_at_ms, item_id);
CREATE TABLE IF NOT EXISTS store_meta (key text PRIMARY KEY, value text NOT NULL);
ALTER TABLE ingested_items ADD COLUMN IF NOT EXISTS binary_code bytea;
ALTER TABLE ingested_items ADD COLUMN IF NOT EXISTS audit_mse double precision;
ALTER TABLE ingested_items ADD COLUMN IF NOT EXISTS name text NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS ingested_items_by_code ON ingested_items (bundle_id, device_id, item_id)
  INCLUDE (binary_code) WHERE binary_code IS NOT NULL;
CREATE TABLE IF NOT EXISTS code_chunks (
  bundle_id text NOT NULL, chunk smallint NOT NULL, value integer NOT NULL,
  device_id text NOT NULL, item_id text NOT NULL, binary_code bytea NOT NULL,
  PRIMARY KEY (bundle_id, chunk, value, device_id, item_id)
);
"""
INSERT_CHUNKS = (
    "INSERT INTO code_chunks SELECT * FROM unnest(%s::text[], %s::smallint[], %s::integer[], %s::text[], "
    "%s::text[], %s::bytea[]) ON CONFLICT DO NOTHING"
)
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # a warning per reconnect attempt; we log per call
SCHEMA_LOCK = 0x61656364  # pg_advisory_xact_lock key: replicas starting together create the schema once
COLUMNS = "device_id, item_id, bundle_id, payload, captured_at_ms, stored_at_ms, audit_mse, name"
INSERT = (
    "INSERT INTO ingested_items (device_id, item_id, bundle_id, payload, captured_at_ms, stored_at_ms, binary_code, "
    "audit_mse, name) SELECT d, i, b, p, c, %s::bigint, h, a, n FROM unnest(%s::text[], %s::text[], %s::text[], "
    "%s::bytea[], %s::bigint[], %s::bytea[], %s::float8[], %s::text[]) AS t(d, i, b, p, c, h, a, n) "
    "ON CONFLICT (device_id, item_id) DO NOTHING RETURNING device_id, item_id"
)


def _redact(url: str) -> str:
    """The URL without a password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return url


def _msg(exc: BaseException) -> str:
    """psycopg's message without its multi-line detail (SQL excerpts, hints): one line for logs and CLIs."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def _record(row) -> StoredRecord:
    return StoredRecord(row[0], row[1], row[2], bytes(row[3]), int(row[4]), int(row[5]), row[6], row[7])


class PostgresStore(Store):
    def __init__(self, url: str, pool_size: int = 8, connect_timeout_s: float = 5, wait_s: float = 3):
        self.url = url
        self.where = _redact(url)
        self._wait = wait_s  # how long a call waits for a connection before it is UNAVAILABLE
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": int(connect_timeout_s)},
            check=ConnectionPool.check_connection,  # a connection that died with the server is replaced
            # Give up a background reconnect attempt after 2 s: the next call starts a fresh one. psycopg_pool doubles
            # the delay between attempts without a cap, so a long timeout would delay recovery by minutes.
            reconnect_timeout=2.0,
            open=False,
            name="aecodec-store",
        )
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout:
            self.pool.close()
            raise StoreUnavailable(
                f"store {self.where} is unreachable (no connection within {connect_timeout_s:g} s)"
            ) from None
        try:
            with self._conn() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                for stmt in filter(str.strip, SCHEMA.split(";")):
                    conn.execute(stmt)
        except StoreError as exc:
            self.pool.close()
            raise StoreError(f"store {self.where}: cannot create the schema ({exc})") from None

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        try:
            with self.pool.connection(timeout=self._wait) as conn:
                yield conn
        except StoreError:  # our own refusal (e.g. ItemConflict) after a clean rollback
            raise
        except PoolTimeout:
            raise StoreUnavailable(
                f"store {self.where} is unreachable (no connection within {self._wait:g} s)"
            ) from None
        except PoolClosed:
            raise StoreError(f"store {self.where} is closed") from None
        except (
            psycopg.errors.DiskFull,
            psycopg.errors.OutOfMemory,
            psycopg.errors.InsufficientResources,
        ) as exc:
            raise StoreFull(f"store {self.where} is out of space ({_msg(exc)})") from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"store {self.where} failed ({_msg(exc)})") from None
        except psycopg.Error as exc:
            raise StoreError(f"store {self.where}: {_msg(exc)}") from None

    def check_writable(self) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO store_meta (key, value) VALUES ('write_check', now()::text) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            )

    def put_many(self, items: Sequence[NewItem], stored_at_ms: int) -> int:
        if not items:
            return 0
        with self._conn() as conn, conn.transaction():
            cols = (
                [it.device_id for it in items],
                [it.item_id for it in items],
                [it.bundle_id for it in items],
                [it.payload for it in items],
                [it.captured_at_ms for it in items],
                [it.binary_code for it in items],
                [it.audit_mse for it in items],
                [it.name for it in items],
            )
            inserted = set(conn.execute(INSERT, (stored_at_ms, *cols)).fetchall())
            chunks = [r for it in items if (it.device_id, it.item_id) in inserted for r in chunk_rows(it)]
            if chunks:  # the multi-index entries of the new items (cloud/store/base.py, search)
                conn.execute(INSERT_CHUNKS, [list(col) for col in zip(*chunks)])
            rest = [it for it in items if (it.device_id, it.item_id) not in inserted]
            if not rest:
                return 0
            rows = conn.execute(
                "SELECT device_id, item_id, bundle_id, payload FROM ingested_items "
                "WHERE (device_id, item_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([it.device_id for it in rest], [it.item_id for it in rest]),
            ).fetchall()
            old = {(d, i): (b, bytes(p)) for d, i, b, p in rows}
            for it in rest:
                prev = old.get((it.device_id, it.item_id))
                if prev is None:  # cannot happen: the row conflicted, so it exists and is committed
                    raise StoreError(f"item {it.item_id!r} conflicted but is not stored")
                if not same_content(prev[0], prev[1], it.bundle_id, it.payload):
                    raise ItemConflict(conflict_message(it), it.item_id)  # rolls the transaction back
            return len(rest)

    def get(self, item_ids: Sequence[str], device_id: str = "") -> list[StoredRecord]:
        ids = list(dict.fromkeys(item_ids))
        q = f"SELECT {COLUMNS} FROM ingested_items WHERE item_id = ANY(%s::text[])"
        args: list = [ids]
        if device_id:
            q += " AND device_id = %s"
            args.append(device_id)
        with self._conn() as conn:
            out = [_record(r) for r in conn.execute(q, args)]
        order = {k: n for n, k in enumerate(ids)}
        out.sort(key=lambda r: (order[r.item_id], r.device_id))
        return out

    def query(self, device_id: str, since_ms: int, until_ms: int, limit: int) -> list[StoredRecord]:
        q = f"SELECT {COLUMNS} FROM ingested_items WHERE device_id = %s AND captured_at_ms >= %s"
        args: list = [device_id, since_ms]
        if until_ms:
            q += " AND captured_at_ms < %s"
            args.append(until_ms)
        q += " ORDER BY captured_at_ms, item_id LIMIT %s"
        args.append(limit)
        with self._conn() as conn:
            return [_record(r) for r in conn.execute(q, args)]

    def summaries(self, device_id: str = "") -> list[Summary]:
        q = "SELECT device_id, bundle_id, COUNT(*), SUM(octet_length(payload)) FROM ingested_items"
        args: list = []
        if device_id:
            q += " WHERE device_id = %s"
            args.append(device_id)
        q += " GROUP BY device_id, bundle_id ORDER BY device_id, bundle_id"
        with self._conn() as conn:
            return [Summary(d, b, int(n), int(s or 0)) for d, b, n, s in conn.execute(q, args)]

    def binary_codes(
        self, bundle_id: str, device_ids: Sequence[str] | None
    ) -> tuple[list[tuple[str, str]], list[bytes]]:
        q = "SELECT device_id, item_id, binary_code FROM ingested_items WHERE bundle_id = %s AND binary_code IS NOT NULL"
        args: list = [bundle_id]
        if device_ids is not None:
            if not device_ids:
                return [], []
            q += " AND device_id = ANY(%s::text[])"
            args.append(list(device_ids))
        with self._conn() as conn:
            rows = conn.execute(q, args).fetchall()
        return [(d, i) for d, i, _ in rows], [bytes(c) for _, _, c in rows]

    def code_count(self, bundle_id: str, device_ids: Sequence[str] | None) -> int:
        q = "SELECT count(*) FROM ingested_items WHERE bundle_id = %s AND binary_code IS NOT NULL"
        args: list = [bundle_id]
        if device_ids is not None:
            q += " AND device_id = ANY(%s::text[])"
            args.append(list(device_ids))
        with self._conn() as conn:
            row = conn.execute(q, args).fetchone()
        return int(row[0]) if row else 0

    def code_candidates(
        self, bundle_id: str, device_ids: Sequence[str] | None, probes: Sequence[tuple[int, Sequence[int]]]
    ) -> tuple[list[tuple[str, str]], list[bytes]]:
        if device_ids is not None and not device_ids:
            return [], []
        scope = "" if device_ids is None else " AND device_id = ANY(%s::text[])"
        # One SELECT per chunk, so each seeks the primary key (bundle_id, chunk, value); UNION drops the repeats.
        part = (
            "SELECT device_id, item_id, binary_code FROM code_chunks WHERE bundle_id = %s AND chunk = %s "
            "AND value = ANY(%s::integer[])" + scope
        )
        args: list = []
        for j, vs in probes:
            args += [bundle_id, int(j), [int(v) for v in vs]] + (
                [list(device_ids)] if device_ids is not None else []
            )
        with self._conn() as conn:
            rows = conn.execute(" UNION ".join(part for _ in probes), args).fetchall()
        return [(d, i) for d, i, _ in rows], [bytes(c) for _, _, c in rows]

    def close(self) -> None:
        self.pool.close()
