"""Ingest, Fetch and ListStored over a real in-process gRPC server with a real store."""

from __future__ import annotations

import shutil
import uuid

import grpc
import numpy as np
import pytest

from latent_codec import datasets
from latent_codec.codec import Codec
from latent_codec.container import from_tensor
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from tests.helpers import CloudStub, fixed_size_variant


@pytest.fixture(scope="module")
def bundles(digits_bundle, tmp_path_factory):
    """A --bundles directory with the digits model twice: entropy-coded and fixed-size codes."""
    d = tmp_path_factory.mktemp("ingest-bundles")
    shutil.copytree(digits_bundle, d / digits_bundle.name)
    fixed_size_variant(digits_bundle, d)
    return d


@pytest.fixture(params=["sqlite", "postgres"])
def served(request, bundles, tmp_path):
    from cloud.server import build_server

    store = str(tmp_path / "store.sqlite") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    running = build_server(bundles, "127.0.0.1:0", workers=4, store=store)
    ch = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, CloudStub(ch)
    ch.close()
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def encoders(bundles):
    from latent_codec.codec import Codec

    return {b.name: Codec.open(b) for b in sorted(bundles.iterdir())}


@pytest.fixture(scope="module")
def x():
    return datasets.load("digits", "test").x[:300]


def enc_dir(bundles, codec) -> object:
    """The bundle directory a codec was opened from."""
    return next(b for b in bundles.iterdir() if Codec.open(b, need=()).bundle_id == codec.bundle_id)


def device() -> str:
    return f"dev-{uuid.uuid4().hex[:10]}"


def request_of(dev: str, enc, payloads, start=0, t0=1_000) -> pb.IngestRequest:
    return pb.IngestRequest(
        device_id=dev,
        items=[
            pb.IngestItem(
                item_id=f"i{start + k}", bundle_id=enc.bundle_id, payload=p, captured_at_ms=t0 + start + k
            )
            for k, p in enumerate(payloads)
        ],
    )


def fetch_all(stub, req: pb.FetchRequest) -> tuple[list[pb.StoredItem], list[str]]:
    items, missing = [], []
    for resp in stub.Fetch(req, timeout=30):
        items.extend(resp.items)
        missing.extend(resp.missing_ids)
    return items, missing


def test_ingest_acks_each_request_in_order_and_is_idempotent(served, encoders, x):
    running, stub = served
    enc = encoders[next(iter(encoders))]
    dev = device()
    payloads = enc.encode(x)
    reqs = [request_of(dev, enc, payloads[i : i + 64], i) for i in range(0, 300, 64)]
    acks = list(stub.Ingest(iter(reqs), timeout=30))
    assert [list(a.item_ids) for a in acks] == [[it.item_id for it in r.items] for r in reqs]
    assert sum(a.duplicates for a in acks) == 0
    again = list(stub.Ingest(iter(reqs[1:3]), timeout=30))  # a client resending after a lost ack
    assert [a.duplicates for a in again] == [64, 64]
    listing = stub.ListStored(pb.ListStoredRequest(device_id=dev), timeout=10)
    assert listing.total_items == 300
    assert listing.total_payload_bytes == sum(len(p) for p in payloads)
    (summary,) = listing.summaries
    assert summary.bundle_available and summary.bundle_id == enc.bundle_id


@pytest.mark.parametrize("fmt", [pb.RECONSTRUCTION_FORMAT_FLOAT32, pb.RECONSTRUCTION_FORMAT_UINT8])
def test_fetch_reconstructions_equal_decoding_the_original_payloads(served, encoders, bundles, x, fmt):
    from latent_codec.codec import Codec

    running, stub = served
    for enc in encoders.values():
        dev = device()
        payloads = enc.encode(x)
        list(stub.Ingest(iter([request_of(dev, enc, payloads)]), timeout=30))
        items, missing = fetch_all(stub, pb.FetchRequest(device_id=dev, reconstruction_format=fmt))
        assert not missing and [it.item_id for it in items] == [f"i{k}" for k in range(300)]
        got = np.concatenate([from_tensor(it.reconstruction, "reconstruction") for it in items])
        local = Codec.open(enc_dir(bundles, enc), need=("decoder",))
        want = local.decode(payloads, unit=True)  # the same codec, decoding independently of the server
        if fmt == pb.RECONSTRUCTION_FORMAT_FLOAT32:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(got, local.unscale(want))
        assert [it.payload for it in items] == payloads
        assert all(not it.error for it in items)


def test_fetch_by_ids_codes_only_and_time_range(served, encoders, x):
    running, stub = served
    enc = encoders[next(iter(encoders))]
    dev = device()
    payloads = enc.encode(x[:50])
    list(stub.Ingest(iter([request_of(dev, enc, payloads)]), timeout=30))
    items, missing = fetch_all(
        stub, pb.FetchRequest(item_ids=["i3", "i7", "nope"], device_id=dev, codes_only=True)
    )
    assert [it.item_id for it in items] == ["i3", "i7"] and missing == ["nope"]
    assert items[0].payload == payloads[3] and not items[0].HasField("reconstruction")
    assert items[0].stored_at_ms > 0 and items[0].captured_at_ms == 1003
    items, _ = fetch_all(stub, pb.FetchRequest(device_id=dev, since_ms=1010, until_ms=1015, codes_only=True))
    assert [it.item_id for it in items] == [f"i{k}" for k in range(10, 15)]
    items, _ = fetch_all(stub, pb.FetchRequest(device_id=dev, limit=4, codes_only=True))
    assert len(items) == 4


@pytest.mark.parametrize(
    "ref, code",
    [
        ("retired-000000000000", grpc.StatusCode.NOT_FOUND),  # a content id this server does not hold
        ("nope-000000000000", grpc.StatusCode.NOT_FOUND),
        ("{name}@2", grpc.StatusCode.NOT_FOUND),  # a version not (yet) held
        ("{name}@0", grpc.StatusCode.INVALID_ARGUMENT),
        ("{name}@", grpc.StatusCode.INVALID_ARGUMENT),  # once read as the newest version
        ("../map", grpc.StatusCode.INVALID_ARGUMENT),
        ("@1", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_items_naming_a_bundle_the_server_does_not_hold_are_refused_and_named_for_quarantine(
    served, encoders, x, ref, code
):
    """Issue 22 finding 5: such items were acknowledged and stored verbatim (a version-1 item stored as conv@2 was
    later decoded with version 2). Now the request is refused before anything is stored, naming the item, so the
    edge quarantines it with the reason; the good items of the request go in again without it."""
    from latent_codec.rejection import rejected_item

    running, stub = served
    name, enc = next(iter(encoders.items()))
    dev = device()
    payload = enc.encode(x[:1])[0]
    items = [
        pb.IngestItem(item_id="ok-1", bundle_id=enc.bundle_id, payload=payload, captured_at_ms=5),
        pb.IngestItem(item_id="gone-1", bundle_id=ref.format(name=name), payload=payload, captured_at_ms=6),
    ]
    err = _status(stub, [pb.IngestRequest(device_id=dev, items=items)])
    assert err.code() == code, err
    assert rejected_item(err) == 1 and "items[1].bundle_id" in err.details()
    assert stub.ListStored(pb.ListStoredRequest(device_id=dev), timeout=10).total_items == 0
    # The name a request uses is resolved: the item is stored under the content id of the bundle that made it.
    (ack,) = stub.Ingest(
        iter([pb.IngestRequest(device_id=dev, bundle_id=f"{name}@1", items=items[:1])]), timeout=30
    )
    assert list(ack.item_ids) == ["ok-1"]
    (stored,), _ = fetch_all(stub, pb.FetchRequest(device_id=dev))
    assert stored.bundle_id == enc.bundle_id and stored.HasField("reconstruction")


def _status(stub, reqs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Ingest(iter(reqs), timeout=30))
    return info.value


def test_bad_ingest_requests_are_invalid_argument_naming_the_field(served, encoders, x):
    running, stub = served
    ans_enc, fixed_enc = (encoders[n] for n in sorted(encoders))  # "...-ans" sorts before "...-ans-fixed"
    assert fixed_enc.manifest.payload.item_bytes is not None and ans_enc.manifest.payload.item_bytes is None
    good = fixed_enc.encode(x[:2])

    def item(**kw):
        d = dict(item_id="a", bundle_id=fixed_enc.bundle_id, payload=good[0], captured_at_ms=1)
        d.update(kw)
        return pb.IngestItem(**d)

    cases = [
        (pb.IngestRequest(device_id="", items=[item()]), "device_id is empty"),
        (pb.IngestRequest(device_id="d", items=[]), "items is empty"),
        (pb.IngestRequest(device_id="d", items=[item(item_id="")]), "items[0].item_id is empty"),
        (
            pb.IngestRequest(device_id="d", items=[item(), item(item_id="b", bundle_id="")]),
            "items[1].bundle_id is empty",
        ),
        (pb.IngestRequest(device_id="d", items=[item(), item()]), "appears twice"),
        (pb.IngestRequest(device_id="d", items=[item(payload=b"")]), "items[0].payload is 0 bytes"),
        (pb.IngestRequest(device_id="d", items=[item(item_seq=3)]), "gives both item_id and item_seq"),
        (
            pb.IngestRequest(
                device_id="d", item_id_prefix="p", items=[item(item_id="", item_seq=3), item(item_id="p3")]
            ),
            "'p3' appears twice",
        ),
        (
            pb.IngestRequest(device_id="d", captured_base_ms=-5, items=[item()]),
            "captured_base_ms is negative",
        ),
        (pb.IngestRequest(device_id="d", captured_base_ms=2**62, items=[item()]), "past the year 9999"),
        (pb.IngestRequest(device_id="d", items=[item(payload=good[0] + b"\0")]), "needs exactly"),
        (pb.IngestRequest(device_id="d", items=[item(captured_at_ms=-1)]), "captured_at_ms is negative"),
        (pb.IngestRequest(device_id="d", items=[item(item_id="x" * 300)]), "limit is 256"),
        (
            # not what the range coder writes (it never ends a stream on a zero byte)
            pb.IngestRequest(device_id="d", items=[item(bundle_id=ans_enc.bundle_id, payload=b"\1\0")]),
            "does not fit bundle",
        ),
    ]
    for req, text in cases:
        err = _status(stub, [req])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (text, err)
        assert text in err.details(), (text, err.details())
    # the server keeps serving, and a rejected request stored nothing
    (ack,) = stub.Ingest(iter([pb.IngestRequest(device_id="d-ok", items=[item()])]), timeout=30)
    assert list(ack.item_ids) == ["a"]
    assert stub.ListStored(pb.ListStoredRequest(device_id="d"), timeout=10).total_items == 0


def test_request_level_bundle_id_saves_framing_and_is_stored_per_item(served, encoders, x):
    """Items may leave bundle_id empty and inherit the request's; mixed batches keep their own."""
    from edge.spool import SpooledItem
    from latent_codec.framing import ingest_request as build_request

    running, stub = served
    ans_enc, fixed_enc = (encoders[n] for n in sorted(encoders))
    dev = device()
    pa, pf = ans_enc.encode(x[:40]), fixed_enc.encode(x[:40])
    same = [SpooledItem(k, f"s{k}", ans_enc.bundle_id, p, 5 + k) for k, p in enumerate(pa)]
    req = build_request(dev, same)
    assert req.bundle_id == ans_enc.bundle_id and all(it.bundle_id == "" for it in req.items)
    per_item = pb.IngestRequest(
        device_id=dev,
        items=[
            pb.IngestItem(
                item_id=it.item_id,
                bundle_id=it.bundle_id,
                payload=it.payload,
                captured_at_ms=it.captured_at_ms,
            )
            for it in same
        ],
    )
    # The bundle id is sent once instead of once per item.
    assert per_item.ByteSize() - req.ByteSize() >= 39 * len(ans_enc.bundle_id)
    mixed = build_request(
        dev,
        [
            SpooledItem(100 + k, f"m{k}", b, p, 7)
            for k, (b, p) in enumerate([(ans_enc.bundle_id, pa[0]), (fixed_enc.bundle_id, pf[1])])
        ],
    )
    assert mixed.bundle_id == "" and [it.bundle_id for it in mixed.items] == [
        ans_enc.bundle_id,
        fixed_enc.bundle_id,
    ]
    acks = list(stub.Ingest(iter([req, mixed]), timeout=30))
    assert [(list(a.item_ids), list(a.item_seqs)) for a in acks] == [([], list(range(40))), ([], [0, 1])]
    got, missing = fetch_all(
        stub, pb.FetchRequest(device_id=dev, item_ids=["s0", "s39", "m0", "m1"], codes_only=True)
    )
    assert not missing
    bundle_of = {it.item_id: it.bundle_id for it in got}
    assert bundle_of == {
        "s0": ans_enc.bundle_id,
        "s39": ans_enc.bundle_id,
        "m0": ans_enc.bundle_id,
        "m1": fixed_enc.bundle_id,
    }
    err = _status(stub, [pb.IngestRequest(device_id=dev, items=[pb.IngestItem(item_id="z", payload=pa[0])])])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[0].bundle_id is empty (and the request's bundle_id is empty)" in err.details()


def test_acks_before_a_bad_request_stay_stored(served, encoders, x):
    running, stub = served
    enc = encoders[sorted(encoders)[1]]
    dev = device()
    payloads = enc.encode(x[:10])
    reqs = [
        request_of(dev, enc, payloads[:5]),
        pb.IngestRequest(
            device_id=dev,
            items=[pb.IngestItem(item_id="bad", bundle_id=enc.bundle_id, payload=b"\0", captured_at_ms=1)],
        ),
    ]
    call = stub.Ingest(iter(reqs), timeout=30)
    first = next(call)
    assert len(first.item_ids) == 5
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request 1" in info.value.details()
    assert stub.ListStored(pb.ListStoredRequest(device_id=dev), timeout=10).total_items == 5


def test_reusing_an_item_id_for_other_content_is_already_exists(served, encoders, x):
    running, stub = served
    enc = encoders[sorted(encoders)[1]]
    dev = device()
    p = enc.encode(x[:2])
    list(stub.Ingest(iter([request_of(dev, enc, p[:1])]), timeout=30))
    err = _status(
        stub,
        [
            pb.IngestRequest(
                device_id=dev,
                items=[pb.IngestItem(item_id="i0", bundle_id=enc.bundle_id, payload=p[1], captured_at_ms=1)],
            )
        ],
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "'i0'" in err.details()


def test_bad_fetch_requests(served):
    running, stub = served
    cases = [
        (pb.FetchRequest(), "device_id is empty"),
        (pb.FetchRequest(device_id="d", since_ms=10, until_ms=5), "until_ms 5 is not after"),
        (pb.FetchRequest(device_id="d", since_ms=-1), "must not be negative"),
        (pb.FetchRequest(item_ids=["a"], since_ms=3), "not both"),
        (pb.FetchRequest(item_ids=[""]), "item_ids[0] is empty"),
        (pb.FetchRequest(device_id="d", reconstruction_format=9), "reconstruction_format 9"),
        (pb.FetchRequest(device_id="d", limit=10**7), "exceeds the maximum"),
    ]
    for req, text in cases:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Fetch(req, timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (text, info.value)
        assert text in info.value.details(), (text, info.value.details())
    items, missing = fetch_all(stub, pb.FetchRequest(item_ids=["nothing-here"]))
    assert items == [] and missing == ["nothing-here"]


def test_storage_is_offered_only_with_a_store_and_the_client_says_so(served, bundles):
    """With a store, health and reflection list Storage; without one, the Python client's error names why."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cloud.server import build_server
    from edge.channel import CloudError
    from edge.client import CloudClient
    from tests.helpers.requests import reflected_services

    running, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="aecodec.v2.Storage")
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert {"aecodec.v2.Decoding", "aecodec.v2.Storage"} <= set(reflected_services(running.port))
    bare = build_server(bundles, "127.0.0.1:0", workers=2)
    try:
        with CloudClient(f"127.0.0.1:{bare.port}") as client:
            with pytest.raises(CloudError, match="UNIMPLEMENTED|does not offer") as info:
                client.list_stored()
        assert "--store" in str(info.value)
    finally:
        bare.stop(grace=0.5)


def test_items_stay_fetchable_after_their_bundle_is_removed(bundles, encoders, x, tmp_path):
    """Restart the server on the same store without one bundle: its items come back undecoded, with an error."""
    from cloud.server import build_server

    ans_name, fixed_name = sorted(encoders)
    enc = encoders[fixed_name]
    store = str(tmp_path / "store.sqlite")
    payloads = enc.encode(x[:20])
    running = build_server(bundles, "127.0.0.1:0", workers=2, store=store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            list(CloudStub(ch).Ingest(iter([request_of("d", enc, payloads)]), timeout=30))
    finally:
        running.stop(grace=0.5)
    only_ans = tmp_path / "only-ans"
    only_ans.mkdir()
    (only_ans / ans_name).symlink_to(bundles / ans_name, target_is_directory=True)
    running = build_server(only_ans, "127.0.0.1:0", workers=2, store=store)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = CloudStub(ch)
            items, _ = fetch_all(stub, pb.FetchRequest(device_id="d"))
            listing = stub.ListStored(pb.ListStoredRequest(), timeout=10)
    finally:
        running.stop(grace=0.5)
    assert [it.payload for it in items] == payloads
    assert all(f"bundle {enc.bundle_id} is not held" in it.error for it in items)
    (summary,) = listing.summaries
    assert summary.items == 20 and not summary.bundle_available


def test_compact_ids_and_times_cut_framing_and_store_the_same_items(served, encoders, x):
    """build_request sends the id prefix and the earliest capture time once; the server stores the full ids
    and times, and a resend in the long form is recognised as the same items (idempotency across forms)."""
    from edge.spool import SpooledItem
    from latent_codec.framing import ingest_request as build_request

    running, stub = served
    enc = encoders[sorted(encoders)[0]]
    dev = device()
    payloads = enc.encode(x[:200])
    t0 = 1_763_800_000_000  # a 2025 timestamp in ms: 6 bytes as a varint
    batch = [SpooledItem(k, f"0a1b2c3d#{k}", enc.bundle_id, p, t0 + 40 * k) for k, p in enumerate(payloads)]
    req = build_request(dev, batch)
    assert req.item_id_prefix == "0a1b2c3d#" and req.captured_base_ms == t0
    assert all(it.item_id == "" and it.item_seq == k for k, it in enumerate(req.items))
    long_form = pb.IngestRequest(
        device_id=dev,
        bundle_id=enc.bundle_id,
        items=[
            pb.IngestItem(item_id=it.item_id, payload=it.payload, captured_at_ms=it.captured_at_ms)
            for it in batch
        ],
    )
    framing = (req.ByteSize() - sum(len(p) for p in payloads)) / len(batch)
    assert framing < 10 and long_form.ByteSize() - req.ByteSize() > 15 * len(batch), framing
    (ack,) = stub.Ingest(iter([req]), timeout=30)
    assert list(ack.item_seqs) == list(range(200)) and not ack.item_ids and ack.duplicates == 0
    got, missing = fetch_all(
        stub, pb.FetchRequest(device_id=dev, item_ids=["0a1b2c3d#0", "0a1b2c3d#199"], codes_only=True)
    )
    assert not missing
    assert {(it.item_id, it.captured_at_ms, it.payload) for it in got} == {
        ("0a1b2c3d#0", t0, payloads[0]),
        ("0a1b2c3d#199", t0 + 40 * 199, payloads[199]),
    }
    (again,) = stub.Ingest(iter([long_form]), timeout=30)
    assert again.duplicates == 200 and len(again.item_ids) == 200


def test_build_request_keeps_ids_it_cannot_shorten():
    from edge.spool import SpooledItem
    from latent_codec.framing import acknowledges as acknowledged_ids
    from latent_codec.framing import ingest_request as build_request

    lead = build_request("d", [SpooledItem(1, "x#007", "b", b"p", 5), SpooledItem(2, "x#008", "b", b"q", 9)])
    # "007" would come back as "7": the prefix takes the zeros, the number what str() gives back.
    assert (lead.item_id_prefix, [it.item_seq for it in lead.items]) == ("x#00", [7, 8])
    mixed = build_request(
        "d",
        [
            SpooledItem(1, "a#1", "b", b"p", 5),
            SpooledItem(2, "b#2", "b", b"q", 5),
            SpooledItem(3, "c", "b", b"r", 5),
        ],
    )
    assert mixed.item_id_prefix == "" and [it.item_id for it in mixed.items] == ["a#1", "b#2", "c"]
    assert not any(it.HasField("item_seq") for it in mixed.items)
    assert acknowledged_ids(mixed, pb.IngestAck(item_ids=["a#1", "b#2", "c"]))
    assert not acknowledged_ids(mixed, pb.IngestAck(item_ids=["a#1", "c", "b#2"]))
    assert not acknowledged_ids(lead, pb.IngestAck(item_seqs=[8, 7]))


def test_an_empty_entropy_coded_payload_is_stored_and_decodes(served, encoders, bundles):
    """Zero bytes is the valid code of an entropy-coded bundle's most probable symbols: accepted, stored, decoded."""
    running, stub = served
    enc = encoders[sorted(encoders)[0]]
    assert enc.item_bytes is None  # entropy-coded
    dev = device()
    (ack,) = stub.Ingest(
        iter(
            [
                pb.IngestRequest(
                    device_id=dev,
                    bundle_id=enc.bundle_id,
                    items=[pb.IngestItem(item_id="empty", payload=b"", captured_at_ms=1)],
                )
            ]
        ),
        timeout=30,
    )
    assert list(ack.item_ids) == ["empty"]
    got, _ = fetch_all(
        stub,
        pb.FetchRequest(
            device_id=dev, item_ids=["empty"], reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32
        ),
    )
    local = enc.decode([b""], unit=True)
    assert got[0].payload == b"" and not got[0].error
    assert np.abs(from_tensor(got[0].reconstruction) - local).max() <= 1e-6


def test_fetch_decodes_a_decode_budget_at_a_time():
    """Fetch decodes its items in runs of at most 256 items and one decode budget of bytes (a large item alone),
    each held until its messages are written: 256 large images at once were gigabytes."""
    from cloud.fetch_decode import fetch_chunks

    assert fetch_chunks([10] * 7, 3, 100) == [(0, 3), (3, 6), (6, 7)]
    assert fetch_chunks([40, 40, 40, 200, 10, 0, 0], 256, 100) == [(0, 2), (2, 3), (3, 4), (4, 7)]
    assert fetch_chunks([], 256, 100) == []
    rng = np.random.default_rng(0)
    for _ in range(200):
        costs = rng.integers(0, 150, size=int(rng.integers(1, 40))).tolist()
        chunks = fetch_chunks(costs, 5, 100)
        assert [a for a, _ in chunks][1:] == [b for _, b in chunks][:-1]  # consecutive ...
        assert chunks[0][0] == 0 and chunks[-1][1] == len(costs)  # ... and covering every item in order
        for a, b in chunks:
            assert 1 <= b - a <= 5
            assert sum(costs[a:b]) <= 100 or b - a == 1
