"""Item names (IngestItem.name / StoredItem.name): stored by both stores, added to databases and spools created
before names existed (their items keep an empty name), bounded and refused when not printable."""

from __future__ import annotations

import sqlite3

import pytest

from cloud.store.base import NewItem
from edge.spool import Spool
from latent_codec import framing

OLD_STORE = """
CREATE TABLE ingested_items (
  device_id TEXT NOT NULL, item_id TEXT NOT NULL, bundle_id TEXT NOT NULL, payload BLOB NOT NULL,
  captured_at_ms INTEGER NOT NULL, stored_at_ms INTEGER NOT NULL, PRIMARY KEY (device_id, item_id)
) WITHOUT ROWID;
CREATE INDEX ingested_items_by_time ON ingested_items (device_id, captured_at_ms, item_id);
CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO ingested_items VALUES ('d', 'old#0', 'b', x'0102', 5, 6);
"""


def test_sqlite_store_of_an_older_version_gains_names(tmp_path):
    from cloud.store.sqlite import SqliteStore

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_STORE)
    store = SqliteStore(path)
    try:
        (old,) = store.get(["old#0"])
        assert old.name == "" and old.payload == b"\x01\x02"  # kept, with an empty name
        store.put_many([NewItem("d", "new#0", "b", b"\x03", 7, name="IMG_0042.jpg")], 8)
        assert [r.name for r in store.query("d", 0, 0, 10)] == ["", "IMG_0042.jpg"]
        # a resend with another name is the same item (names are not part of its identity)
        assert store.put_many([NewItem("d", "new#0", "b", b"\x03", 7, name="other.jpg")], 9) == 1
        assert store.get(["new#0"])[0].name == "IMG_0042.jpg"
    finally:
        store.close()
    SqliteStore(path).close()  # opening again: the migration does not run twice


def test_postgres_store_of_an_older_version_gains_names(pg_url):
    import psycopg

    from cloud.store.postgres import PostgresStore
    from tests.helpers import PG_BASE, pg_drop_schema, pg_fresh_schema

    schema = pg_fresh_schema()  # pg_url (its fixture skips without PostgreSQL) holds other tests' tables
    url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE ingested_items (device_id text NOT NULL, item_id text NOT NULL, bundle_id text NOT "
                "NULL, payload bytea NOT NULL, captured_at_ms bigint NOT NULL, stored_at_ms bigint NOT NULL, "
                "PRIMARY KEY (device_id, item_id))"
            )
            conn.execute("INSERT INTO ingested_items VALUES ('dn', 'old#0', 'b', '\\x0102', 5, 6)")
        store = PostgresStore(url)
        try:
            (old,) = store.get(["old#0"], "dn")
            assert old.name == "" and old.payload == b"\x01\x02"
            store.put_many([NewItem("dn", "new#0", "b", b"\x03", 7, name="IMG_0042.jpg")], 8)
            assert [r.name for r in store.query("dn", 0, 0, 10)] == ["", "IMG_0042.jpg"]
        finally:
            store.close()
        PostgresStore(url).close()  # opening again: the migration does not run twice
    finally:
        pg_drop_schema(schema)


def test_a_spool_of_an_older_version_gains_names_and_framing_sends_them(tmp_path):
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE items (seq INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL UNIQUE, "
            "bundle_id TEXT NOT NULL, payload BLOB NOT NULL, captured_at_ms INTEGER NOT NULL, original BLOB);"
            "INSERT INTO items (item_id, bundle_id, payload, captured_at_ms) VALUES ('s#0', 'b', x'01', 5);"
        )
    spool = Spool(path, 1 << 20)
    try:
        spool.add_many([("s#1", "b", b"\x02", 6, None, "IMG_1.jpg")], "s", 2)
        items = spool.peek(0, 10)
        assert [(i.item_id, i.name) for i in items] == [("s#0", ""), ("s#1", "IMG_1.jpg")]
        used = spool.bytes_used
        req = framing.ingest_request("dev", items)
        assert [it.name for it in req.items] == ["", "IMG_1.jpg"]
        spool.remove(items[1:])
        assert spool.bytes_used == used - (1 + len("s#1") + len("IMG_1.jpg") + 32)  # names count to the bound
    finally:
        spool.close()


@pytest.mark.parametrize("name", ["x" * 257, "bad\nname"])
def test_the_cloud_refuses_unprintable_or_long_names(name, tmp_path):
    from cloud.bundles import BundleRegistry
    from cloud.ingest_validation import Refused, plan_ingest
    from cloud.limits import Limits
    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

    req = pb.IngestRequest(
        device_id="d", bundle_id="b", items=[pb.IngestItem(item_id="a#1", payload=b"x", name=name)]
    )
    with pytest.raises(Refused, match=r"items\[0\].name must be printable and at most 256"):
        plan_ingest(req, 0, BundleRegistry(), Limits())
