"""Prometheus metrics: scrape /metrics over HTTP after real RPCs and check every count against what was sent."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request

import grpc
import pytest

from cloud.server import build_server
from cloud.tenancy import ALL, Principal
from latent_codec import datasets
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from tests.helpers import ROOT, CloudStub, server_cmd, tiny_bundle, wait_for_file
from tests.helpers.prometheus import scrape, val
from tests.helpers.requests import make_request

CODEC = "aecodec.v2.Decoding"
STORAGE = "aecodec.v2.Storage"
TOKEN = "metrics-token"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


def test_metrics_count_rpcs_statuses_latency_and_items(bundle, tmp_path):
    running = build_server(
        bundle,
        "127.0.0.1:0",
        workers=4,
        store=str(tmp_path / "s.sqlite"),
        auth_tokens={TOKEN: Principal("ingest gateway", frozenset({ALL}))},
        metrics_address="127.0.0.1:0",
    )
    md = [("authorization", f"Bearer {TOKEN}")]
    x = datasets.load("digits", "test").x
    try:
        before = scrape(running.metrics_port)
        assert val(before, "aecodec_bundles_loaded") == 1
        assert val(before, "aecodec_decoded_items_total") == 0
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = CloudStub(ch)
            r1, _ = make_request(bundle, x[:30])
            r2, _ = make_request(bundle, x[30:47])
            for r in (r1, r2):
                stub.Decode(r, metadata=md, timeout=30)
            stream = [make_request(bundle, x[i : i + 10])[0] for i in range(0, 30, 10)]
            assert len(list(stub.DecodeStream(iter(stream), metadata=md, timeout=30))) == 3
            bad = pb.DecodeRequest()
            bad.CopyFrom(r1)
            bad.codes.bundle_id = "nope"
            with pytest.raises(grpc.RpcError) as ei:
                stub.Decode(bad, metadata=md, timeout=10)
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as ei:
                stub.Decode(r1, timeout=10)  # no token
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # ingest: 2 requests of 12 and 8 items, then the first one again (all duplicates)
            from latent_codec.codec import Codec

            enc = Codec.open(bundle)
            payloads = enc.encode(x[:20])

            def ingest_req(lo, hi, compact=False):  # compact: ids as prefix "i" + item_seq, acked by number
                return pb.IngestRequest(
                    device_id="dev-1",
                    item_id_prefix="i" if compact else "",
                    items=[
                        pb.IngestItem(
                            bundle_id=enc.bundle_id,
                            payload=payloads[k],
                            captured_at_ms=1000 + k,
                            **({"item_seq": k} if compact else {"item_id": f"i{k}"}),
                        )
                        for k in range(lo, hi)
                    ],
                )

            reqs = [ingest_req(0, 12), ingest_req(12, 20, compact=True), ingest_req(0, 12)]
            acks = list(stub.Ingest(iter(reqs), metadata=md, timeout=30))
            assert [len(a.item_ids) + len(a.item_seqs) for a in acks] == [12, 8, 12] and acks[
                2
            ].duplicates == 12
        s = scrape(running.metrics_port)
    finally:
        running.stop(grace=1.0)

    def handled(method, code):
        service = STORAGE if method in ("Ingest", "Fetch", "ListStored") else CODEC
        return val(
            s, "aecodec_grpc_server_handled_total", grpc_service=service, grpc_method=method, grpc_code=code
        )

    assert handled("Decode", "OK") == 2
    assert handled("Decode", "NOT_FOUND") == 1
    assert handled("Decode", "UNAUTHENTICATED") == 1
    assert handled("DecodeStream", "OK") == 1 and handled("Ingest", "OK") == 1
    assert val(s, "aecodec_grpc_server_started_total", grpc_service=CODEC, grpc_method="Decode") == 4
    assert val(s, "aecodec_grpc_server_in_flight", grpc_service=CODEC, grpc_method="Decode") == 0
    # latency histogram: 4 Decode calls, cumulative buckets ending in +Inf == count
    lat = "aecodec_grpc_server_handling_seconds"
    assert val(s, lat + "_count", grpc_service=CODEC, grpc_method="Decode") == 4
    assert val(s, lat + "_bucket", grpc_service=CODEC, grpc_method="Decode", le="+Inf") == 4
    assert 0 < val(s, lat + "_sum", grpc_service=CODEC, grpc_method="Decode") < 60
    buckets = sorted(
        (float(dict(k[1])["le"]), v)
        for k, v in s.items()
        if k[0] == lat + "_bucket" and dict(k[1])["grpc_method"] == "Decode"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    # items and bytes: only answered requests count (not the NOT_FOUND or the unauthenticated one)
    assert val(s, "aecodec_decoded_items_total") == 30 + 17 + 30
    sent = len(r1.codes.data) + len(r2.codes.data) + sum(len(r.codes.data) for r in stream)
    assert val(s, "aecodec_decoded_payload_bytes_total") == sent
    assert val(s, "aecodec_ingested_items_total") == 32
    assert val(s, "aecodec_ingested_duplicate_items_total") == 12
    assert val(s, "aecodec_ingested_payload_bytes_total") == sum(len(p) for p in payloads) + sum(
        len(p) for p in payloads[:12]
    )


def test_metrics_endpoint_from_the_server_cli(bundle, tmp_path):
    import socket

    with socket.socket() as sock:  # a free port for --metrics-address (the gRPC port is ephemeral)
        sock.bind(("127.0.0.1", 0))
        mport = sock.getsockname()[1]
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        server_cmd(bundle, "--port-file", str(port_file), "--metrics-address", f"127.0.0.1:{mport}"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_file(proc, port_file, 60, "the server to start")
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as ch:
            CloudStub(ch).ModelInfo(pb.ModelInfoRequest(), timeout=10)
        s = scrape(mport)
        assert (
            val(
                s,
                "aecodec_grpc_server_handled_total",
                grpc_service=CODEC,
                grpc_method="ModelInfo",
                grpc_code="OK",
            )
            == 1
        )
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/other", timeout=10)
        assert ei.value.code == 404
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert (
        proc.returncode == 0
        and "Traceback" not in err
        and f"metrics on http://127.0.0.1:{mport}/metrics" in err
    )
