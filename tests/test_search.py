"""Semantic-hashing Search against a real server with both stores: binary codes stored on ingest, nearest items by
Hamming distance, scoped to the caller's devices as Fetch is, and bad queries refused with the right status; an
existing database from before the binary-code column keeps working; the edge CLI and the Python client."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import grpc
import numpy as np
import pytest

from latent_codec import datasets
from latent_codec.binary_code import binary_codes, hamming
from latent_codec.codec import Codec
from latent_codec.container import to_tensor
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from tests.helpers import ROOT, CloudStub, child_env, tiny_bundle, tiny_hashing_bundle

TOKENS = "tok-cam-a-1234 devices=cam-a\ntok-cam-b-1234 devices=cam-b\ntok-ops-123456 role=operator\ntok-none-12345\n"


def md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A --bundles directory: the hashing bundle and a bundle without binary codes."""
    d = tmp_path_factory.mktemp("search-bundles")
    for b, name in (
        (tiny_hashing_bundle(tmp_path_factory), "hash"),
        (tiny_bundle(tmp_path_factory), "plain"),
    ):
        (d / name).symlink_to(b, target_is_directory=True)
    return d


@pytest.fixture(scope="module")
def codecs(bundles):
    return Codec.open(bundles / "hash"), Codec.open(bundles / "plain")


@pytest.fixture(scope="module")
def data():
    ds = datasets.load("digits", "test")
    return ds.x[:240], ds.y[:240]


@pytest.fixture(params=["sqlite", "postgres"])
def served(request, bundles, tmp_path):
    from cloud.server import build_server
    from cloud.tenancy import load_tokens

    store = str(tmp_path / "store.sqlite") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    running = build_server(
        bundles,
        "127.0.0.1:0",
        workers=2,
        store=store,
        auth_tokens=load_tokens(tokens),
        metrics_address="127.0.0.1:0",
    )
    if request.param == "postgres":  # the session's schema: each test starts from an empty table
        import psycopg

        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute("TRUNCATE ingested_items, code_chunks")
    ch = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, CloudStub(ch)
    ch.close()
    running.stop(grace=1.0)


def ingest(stub, device: str, codec, x, prefix: str, token: str, originals: bool = False) -> list[str]:
    payloads = codec.encode(x)
    items = [
        pb.IngestItem(
            item_id=f"{prefix}{k}",
            payload=p,
            captured_at_ms=1000 + k,
            **({"original": to_tensor(x[k])} if originals else {}),
        )
        for k, p in enumerate(payloads)
    ]
    req = pb.IngestRequest(device_id=device, bundle_id=codec.bundle_id, items=items)
    acks = list(stub.Ingest(iter([req]), timeout=60, metadata=md(token)))
    assert len(acks[0].item_ids) == len(items)
    return [it.item_id for it in items]


def search(stub, token: str, **kw) -> pb.SearchResponse:
    return stub.Search(pb.SearchRequest(**kw), timeout=30, metadata=md(token))


def test_search_returns_the_nearest_stored_items_by_hamming_distance(served, codecs, data):
    _, stub = served
    hashing, _ = codecs
    x, y = data
    ingest(stub, "cam-a", hashing, x[:120], "a", "tok-cam-a-1234")
    ingest(stub, "cam-b", hashing, x[120:], "b", "tok-cam-b-1234")
    bits = binary_codes(hashing, hashing.encode(x))  # what the server stored for each item
    keys = [("cam-a", f"a{k}") for k in range(120)] + [("cam-b", f"b{k}") for k in range(120)]
    q = 5
    resp = search(
        stub, "tok-ops-123456", bundle_id=hashing.bundle_id, payload=hashing.encode(x[q : q + 1])[0], limit=15
    )
    assert 15 <= resp.searched <= 240 and resp.code_bits == 14 and len(resp.hits) == 15
    d = hamming(bits[q], bits)
    want = sorted(range(240), key=lambda i: (int(d[i]), keys[i]))[:15]  # ties in (device, item) order
    assert [(h.item.device_id, h.item.item_id) for h in resp.hits] == [keys[i] for i in want]
    assert [h.distance for h in resp.hits] == [int(d[i]) for i in want]
    exact = [
        h.item for h in resp.hits if h.distance == 0
    ]  # the query item itself, and any with the same bits
    assert ("cam-a", f"a{q}") in [(it.device_id, it.item_id) for it in exact]
    assert hashing.encode(x[q : q + 1])[0] in [it.payload for it in exact]
    by_code = search(
        stub, "tok-ops-123456", bundle_id="hash", code=bits[q].tobytes(), limit=15
    )  # by name, by code
    assert [h.item.item_id for h in by_code.hits] == [h.item.item_id for h in resp.hits]
    default = search(stub, "tok-ops-123456", bundle_id=hashing.bundle_id, code=bits[q].tobytes())
    assert len(default.hits) == 10
    # Semantic: the nearest items share the query's class far more often than chance (1 in 10).
    same = np.mean([y[keys.index((h.item.device_id, h.item.item_id))] == y[q] for h in resp.hits])
    assert same >= 0.4


def test_search_is_scoped_to_the_callers_devices(served, codecs, data):
    _, stub = served
    hashing, _ = codecs
    x, _ = data
    ingest(stub, "cam-a", hashing, x[:60], "a", "tok-cam-a-1234")
    ingest(stub, "cam-b", hashing, x[:60], "b", "tok-cam-b-1234")  # the same items on another device
    query = hashing.encode(x[3:4])[0]
    own = search(stub, "tok-cam-a-1234", bundle_id=hashing.bundle_id, payload=query, limit=1000)
    assert own.searched == 60 and {h.item.device_id for h in own.hits} == {"cam-a"} and len(own.hits) == 60
    ops = search(stub, "tok-ops-123456", bundle_id=hashing.bundle_id, payload=query, limit=1000)
    assert ops.searched == 120 and {h.item.device_id for h in ops.hits} == {"cam-a", "cam-b"}
    named = search(stub, "tok-ops-123456", bundle_id=hashing.bundle_id, payload=query, device_ids=["cam-b"])
    assert {h.item.device_id for h in named.hits} == {"cam-b"} and 10 <= named.searched <= 60
    for token, devices in (
        ("tok-cam-a-1234", ["cam-b"]),
        ("tok-cam-a-1234", ["cam-a", "cam-b"]),
        ("tok-none-12345", []),
    ):
        with pytest.raises(grpc.RpcError) as e:
            search(stub, token, bundle_id=hashing.bundle_id, payload=query, device_ids=devices)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:  # authentication as for every call
        stub.Search(pb.SearchRequest(bundle_id=hashing.bundle_id, payload=query), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "case, status, needle",
    [
        ("no binary codes", grpc.StatusCode.FAILED_PRECONDITION, "has no binary codes"),
        ("unknown bundle", grpc.StatusCode.NOT_FOUND, "not held"),
        ("empty bundle id", grpc.StatusCode.INVALID_ARGUMENT, "bundle_id is empty"),
        ("no query", grpc.StatusCode.INVALID_ARGUMENT, "query is empty"),
        ("short code", grpc.StatusCode.INVALID_ARGUMENT, "14 bits = 2 bytes"),
        ("padding bits", grpc.StatusCode.INVALID_ARGUMENT, "padding"),
        ("payload size", grpc.StatusCode.INVALID_ARGUMENT, "needs exactly"),
        ("limit", grpc.StatusCode.INVALID_ARGUMENT, "limit 5000"),
        ("device id", grpc.StatusCode.INVALID_ARGUMENT, "device_ids[0] is empty"),
    ],
)
def test_bad_queries_get_a_clear_error_with_the_right_status(served, codecs, data, case, status, needle):
    _, stub = served
    hashing, plain = codecs
    good = hashing.encode(data[0][:1])[0]
    kw = {
        "no binary codes": dict(bundle_id=plain.bundle_id, payload=plain.encode(data[0][:1])[0]),
        "unknown bundle": dict(bundle_id="dense-000000000000", payload=good),
        "empty bundle id": dict(payload=good),
        "no query": dict(bundle_id=hashing.bundle_id),
        "short code": dict(bundle_id=hashing.bundle_id, code=b"\x01"),
        "padding bits": dict(bundle_id=hashing.bundle_id, code=b"\x00\x01"),
        "payload size": dict(bundle_id=hashing.bundle_id, payload=good + b"\x00"),
        "limit": dict(bundle_id=hashing.bundle_id, payload=good, limit=5000),
        "device id": dict(bundle_id=hashing.bundle_id, payload=good, device_ids=[""]),
    }[case]
    with pytest.raises(grpc.RpcError) as e:
        search(stub, "tok-ops-123456", **kw)
    assert e.value.code() == status and needle in e.value.details(), e.value.details()


def test_a_malformed_request_body_is_invalid_argument(served):
    running, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        call = ch.unary_unary("/aecodec.v2.Storage/Search")  # raw bytes: no serialiser
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff\xff\xff garbage", timeout=10, metadata=md("tok-ops-123456"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_audited_items_carry_their_error_in_fetch_and_search(served, codecs, data):
    running, stub = served
    hashing, _ = codecs
    x, _ = data
    ingest(stub, "cam-a", hashing, x[:8], "au", "tok-cam-a-1234", originals=True)
    ingest(stub, "cam-a", hashing, x[8:16], "pl", "tok-cam-a-1234")
    want = hashing.squared_error(x[:8], hashing.decode(hashing.encode(x[:8])))
    items = [
        it
        for r in stub.Fetch(
            pb.FetchRequest(device_id="cam-a", codes_only=True), timeout=30, metadata=md("tok-cam-a-1234")
        )
        for it in r.items
    ]
    by_id = {it.item_id: it for it in items}
    for k in range(8):
        assert by_id[f"au{k}"].audit_mse == pytest.approx(float(want[k]), rel=1e-6)
        assert not by_id[f"pl{k}"].HasField("audit_mse")
    resp = search(
        stub, "tok-cam-a-1234", bundle_id=hashing.bundle_id, payload=hashing.encode(x[:1])[0], limit=16
    )
    audited = {h.item.item_id: h.item.audit_mse for h in resp.hits if h.item.HasField("audit_mse")}
    assert audited == pytest.approx({f"au{k}": float(want[k]) for k in range(8)}, rel=1e-6)
    # ... and as a metric: each audited item's error in a histogram per bundle (alerts on anomalies)
    from tests.helpers.prometheus import scrape, val

    samples = scrape(running.metrics_port)
    assert val(samples, "aecodec_audit_item_mse_count", bundle=hashing.bundle_id) == 8
    assert val(samples, "aecodec_audit_item_mse_sum", bundle=hashing.bundle_id) == pytest.approx(
        float(want.sum())
    )
    below = val(samples, "aecodec_audit_item_mse_bucket", bundle=hashing.bundle_id, le="0.05")
    assert below == int((want <= 0.05).sum())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_multi_index_returns_exactly_what_a_linear_scan_returns(kind, request, tmp_path):
    """Random and clustered 24-bit codes (a 16-bit chunk and an 8-bit one), every scope and several limits: Store.search with the multi-index gives
    the same hits and distances as the linear scan, in the same order, while comparing fewer codes when it can."""
    from cloud.store import NewItem, open_store

    url = str(tmp_path / "s.sqlite") if kind == "sqlite" else request.getfixturevalue("pg_url")
    store = open_store(url)
    store.linear_below = 0  # always probe the multi-index first (a real store scans small scopes linearly)
    try:
        if kind == "postgres":
            with store._conn() as conn:
                conn.execute("TRUNCATE ingested_items, code_chunks")
        rng = np.random.default_rng(1)
        centres = rng.integers(0, 256, (8, 3), dtype=np.uint8)
        codes = np.concatenate(
            [
                rng.integers(0, 256, (800, 3), dtype=np.uint8),  # uniform
                centres[rng.integers(0, 8, 1200)]
                ^ (rng.random((1200, 24)) < 0.08)
                .reshape(1200, 3, 8)
                .dot(1 << np.arange(7, -1, -1))
                .astype(np.uint8),
            ]
        )
        items = [
            NewItem(f"dev-{i % 3}", f"item-{i:05d}", "b-1", b"p%d" % i, i, binary_code=c.tobytes())
            for i, c in enumerate(codes)
        ]
        store.put_many(items[:1000], 1)
        store.put_many(items[1000:], 2)
        store.put_many(
            [NewItem("dev-0", "no-code", "b-1", b"x", 0)], 3
        )  # items without a code are never found
        narrowed = 0
        for q in [*codes[::97], *rng.integers(0, 256, (10, 3), dtype=np.uint8)]:
            for scope in (None, ["dev-1"], ["dev-0", "dev-2"]):
                for limit in (1, 10, 50):
                    a, n_a = store.search("b-1", scope, q, limit, index=True)
                    b, n_b = store.search("b-1", scope, q, limit, index=False)
                    assert [(r.device_id, r.item_id, d) for r, d in a] == [
                        (r.device_id, r.item_id, d) for r, d in b
                    ]
                    in_scope = sum(1 for i in range(2000) if scope is None or f"dev-{i % 3}" in scope)
                    assert len(a) == limit and n_b == in_scope and n_a <= in_scope
                    narrowed += n_a < n_b
        assert narrowed > 20  # the index did narrow the search
        assert store.search("other-bundle", None, codes[0], 10) == ([], 0)
    finally:
        store.close()


OLD_SCHEMA = """
CREATE TABLE ingested_items (device_id TEXT NOT NULL, item_id TEXT NOT NULL, bundle_id TEXT NOT NULL,
  payload BLOB NOT NULL, captured_at_ms INTEGER NOT NULL, stored_at_ms INTEGER NOT NULL,
  PRIMARY KEY (device_id, item_id)) WITHOUT ROWID;
CREATE INDEX ingested_items_by_time ON ingested_items (device_id, captured_at_ms, item_id);
CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_a_database_from_before_binary_codes_is_migrated_and_keeps_its_items(bundles, codecs, data, tmp_path):
    from cloud.store import open_store

    hashing, _ = codecs
    x, _ = data
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    old = hashing.encode(x[:1])[0]
    db.execute("INSERT INTO ingested_items VALUES ('cam-a', 'old0', ?, ?, 5, 6)", (hashing.bundle_id, old))
    db.commit()
    db.close()
    store = open_store(str(path))
    try:
        (rec,) = store.get(["old0"], "cam-a")
        assert rec.payload == old and rec.audit_mse is None
        assert store.binary_codes(hashing.bundle_id, None) == ([], [])  # stored before: no code, not searched
    finally:
        store.close()
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(ingested_items)")}
    assert {"binary_code", "audit_mse"} <= cols


def test_a_postgres_schema_from_before_binary_codes_is_migrated(pg_url, codecs, data):
    import psycopg

    from cloud.store import open_store

    hashing, _ = codecs
    old = hashing.encode(data[0][:1])[0]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ingested_items")
        conn.execute(
            "CREATE TABLE ingested_items (device_id text NOT NULL, item_id text NOT NULL, bundle_id text NOT NULL,"
            " payload bytea NOT NULL, captured_at_ms bigint NOT NULL, stored_at_ms bigint NOT NULL,"
            " PRIMARY KEY (device_id, item_id))"
        )
        conn.execute(
            "INSERT INTO ingested_items VALUES ('cam-a', 'old0', %s, %s, 5, 6)", (hashing.bundle_id, old)
        )
    store = open_store(pg_url)
    try:
        (rec,) = store.get(["old0"], "cam-a")
        assert rec.payload == old and rec.audit_mse is None
        assert store.binary_codes(hashing.bundle_id, None) == ([], [])
    finally:
        store.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DROP TABLE ingested_items")


def test_the_edge_cli_and_the_python_client_search(bundles, codecs, data, tmp_path):
    from cloud.server import build_server
    from edge.client import CloudClient

    hashing, plain = codecs
    x, _ = data
    running = build_server(bundles, "127.0.0.1:0", workers=2, store=str(tmp_path / "s.sqlite"))
    try:
        target = f"127.0.0.1:{running.port}"
        with CloudClient(target) as cloud:
            stub = CloudStub(cloud.channel)
            ingest(stub, "cam-a", hashing, x[:50], "a", "")
            hits, searched = cloud.search(hashing, payload=hashing.encode(x[7:8])[0], limit=50)
            assert searched == 50 and len(hits) == 50 and hits[0].distance == 0
            assert "a7" in [h.item_id for h in hits if h.distance == 0]
            with pytest.raises(Exception, match="no binary codes"):
                cloud.search(plain, payload=plain.encode(x[:1])[0])
        np.save(tmp_path / "q.npy", x[7:8])
        cli = [
            sys.executable,
            "-m",
            "edge.cli",
            "search",
            "--bundle",
            str(bundles / "hash"),
            "--server",
            target,
        ]
        out = subprocess.run(
            [*cli, "--data", str(tmp_path / "q.npy"), "--limit", "50", "--json", str(tmp_path / "h.json")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=child_env(),
        )
        assert out.returncode == 0, out.stderr
        assert "50 nearest items (50 stored codes compared" in out.stdout
        assert "a7" in [
            h["item_id"] for h in json.loads((tmp_path / "h.json").read_text())["hits"] if h["distance"] == 0
        ]
        bad = subprocess.run(
            [*cli, "--code", "zz"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=child_env()
        )
        assert bad.returncode == 2 and "not hexadecimal" in bad.stderr and "Traceback" not in bad.stderr
        short = subprocess.run(
            [*cli, "--code", "ff"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=child_env()
        )
        assert short.returncode == 2 and "2 bytes" in short.stderr and "Traceback" not in short.stderr
    finally:
        running.stop(grace=1.0)
