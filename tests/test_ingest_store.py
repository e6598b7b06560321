"""The store contract, run against both real backends: SQLite (a file) and PostgreSQL (a real server)."""

from __future__ import annotations

import threading
import uuid

import pytest

from cloud.store import ItemConflict, NewItem, StoreError, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def device() -> str:
    """A device id unique to the test, so tests sharing one PostgreSQL schema do not see each other."""
    return f"dev-{uuid.uuid4().hex[:10]}"


def items(device: str, n: int, start: int = 0, bundle: str = "b1") -> list[NewItem]:
    return [
        NewItem(device, f"it-{k}", bundle, bytes([k % 251, 7]) * (1 + k % 5), 1000 + k)
        for k in range(start, start + n)
    ]


def test_put_is_idempotent_and_durable_across_reopen(store_url, device):
    s = open_store(store_url)
    batch = items(device, 300)
    assert s.put_many(batch, 5) == 0
    assert s.put_many(batch[100:200], 6) == 100  # resent: acknowledged as duplicates, not stored again
    s.close()
    s = open_store(store_url)  # a restarted server sees what was committed
    try:
        got = s.get([it.item_id for it in batch], device)
        assert [r.item_id for r in got] == [it.item_id for it in batch]
        assert all(r.payload == it.payload and r.stored_at_ms == 5 for r, it in zip(got, batch))
        (summary,) = s.summaries(device)
        assert (summary.items, summary.payload_bytes) == (300, sum(len(it.payload) for it in batch))
    finally:
        s.close()


def test_reused_id_with_other_content_is_refused_and_stores_nothing(store_url, device):
    s = open_store(store_url)
    try:
        s.put_many(items(device, 3), 1)
        clash = [NewItem(device, "new-1", "b1", b"x", 1), NewItem(device, "it-1", "b1", b"different", 1)]
        with pytest.raises(ItemConflict, match="it-1"):
            s.put_many(clash, 2)
        assert s.get(["new-1"], device) == []  # the whole batch rolled back
        assert s.get(["it-1"], device)[0].payload == items(device, 3)[1].payload
    finally:
        s.close()


def test_query_by_time_range_and_missing_ids(store_url, device):
    s = open_store(store_url)
    try:
        s.put_many(items(device, 50), 1)
        s.put_many(items(device + "-other", 5), 1)
        got = s.query(device, 1010, 1020, 100)
        assert [r.captured_at_ms for r in got] == list(range(1010, 1020))
        assert len(s.query(device, 0, 0, 7)) == 7
        assert len(s.query(device, 1045, 0, 100)) == 5
        assert [r.item_id for r in s.get(["it-3", "nope"], device)] == ["it-3"]
        both = [r for r in s.get(["it-2"]) if r.device_id.startswith(device)]  # no device: any device's
        assert sorted(r.device_id for r in both) == sorted([device, device + "-other"])
        per = {(x.device_id, x.bundle_id): x.items for x in s.summaries()}
        assert per[(device, "b1")] == 50 and per[(device + "-other", "b1")] == 5
    finally:
        s.close()


def test_concurrent_writers_of_the_same_items_store_each_once(store_url, device):
    """Two store instances (two server replicas) race on the same 2,000 items in batches of 100."""
    stores = [open_store(store_url), open_store(store_url)]
    batch = items(device, 2000)
    dups = [0, 0]
    errors: list[BaseException] = []

    def writer(k: int):
        try:
            order = range(0, 2000, 100) if k == 0 else range(1900, -1, -100)
            for i in order:
                dups[k] += stores[k].put_many(batch[i : i + 100], 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not errors, errors
        assert dups[0] + dups[1] == 2000  # every item written once, acknowledged twice
        assert stores[0].summaries(device)[0].items == 2000
    finally:
        for s in stores:
            s.close()


def test_bad_urls_are_one_line_errors(tmp_path):
    with pytest.raises(StoreError, match="unknown scheme"):
        open_store("mysql://x")
    with pytest.raises(StoreError, match="does not exist"):
        open_store(str(tmp_path / "no" / "such" / "dir.sqlite"))
    with pytest.raises(StoreError, match="sqlite:///"):
        open_store("sqlite://x.db")
    not_db = tmp_path / "junk.sqlite"
    not_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="junk.sqlite"):
        open_store(str(not_db))


@pytest.mark.postgres
def test_unreachable_postgres_is_a_store_error():
    with pytest.raises(StoreError, match="unreachable"):
        open_store("postgresql://postgres@127.0.0.1:1/none")
