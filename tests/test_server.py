"""A real gRPC server on 127.0.0.1 (ephemeral port): decoding, metrics and every bad request."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latent_codec import datasets, metrics
from latent_codec.codec import Codec
from latent_codec.container import from_tensor, to_tensor
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc
from tests.helpers import fashion_test_items, unit
from tests.helpers.requests import make_request, reflected_services


def test_decode_matches_local_decoding_and_metrics(stub, fashion_bundle):
    x = fashion_test_items(64)
    req, payloads = make_request(fashion_bundle, x)
    resp = stub.Decode(req, timeout=30)
    assert resp.count == 64
    rec = from_tensor(resp.reconstructions)
    assert rec.shape == (64, 1, 28, 28) and rec.dtype == np.uint8
    # The same codec offline gives what the server returned (the server runs no other decode path).
    expect = Codec.open(fashion_bundle, need=("decoder",)).decode(payloads)
    assert np.abs(rec.astype(int) - expect.astype(int)).max() <= 1  # ORT thread-count rounding
    mse = metrics.per_item_mse(unit(x), unit(rec))
    np.testing.assert_allclose(resp.quality.mse, mse, rtol=1e-6, atol=1e-6)
    assert resp.quality.batch_psnr == pytest.approx(-10 * np.log10(mse.mean()), rel=1e-6)
    assert resp.quality.batch_psnr > 12  # a trained model, not noise


def test_entropy_coded_bundle_decodes(stub, digits_bundle):
    x = datasets.load("digits", "test").x[:50]
    req, payloads = make_request(digits_bundle, x, fmt=pb.RECONSTRUCTION_FORMAT_FLOAT32)
    assert req.codes.format.endswith("+range") and len(req.codes.sizes) == 50
    resp = stub.Decode(req, timeout=30)
    rec = from_tensor(resp.reconstructions)
    assert rec.dtype == np.float32 and rec.shape == (50, 1, 8, 8)
    assert resp.quality.batch_psnr > 12


def test_stream_decodes_in_order(stub, fashion_bundle):
    x = fashion_test_items(90)
    reqs = [make_request(fashion_bundle, x[i : i + 30])[0] for i in range(0, 90, 30)]
    resps = list(stub.DecodeStream(iter(reqs), timeout=30))
    assert [r.count for r in resps] == [30, 30, 30]
    whole = stub.Decode(make_request(fashion_bundle, x)[0], timeout=30)
    np.testing.assert_allclose(np.concatenate([r.quality.mse for r in resps]), whole.quality.mse, atol=1e-9)


def test_model_info_lists_manifests(stub, fashion_bundle, digits_bundle):
    resp = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
    ids = {b.bundle_id: json.loads(b.manifest_json) for b in resp.bundles}
    for d in (fashion_bundle, digits_bundle):
        m = json.loads((d / "manifest.json").read_text())
        assert ids[m["bundle_id"]] == m


def test_without_a_store_health_and_reflection_offer_decoding_only(server):
    """Storage is not registered without --store: health does not know it, reflection does not list it, and a
    call is UNIMPLEMENTED (not a FAILED_PRECONDITION from a service that pretends to exist)."""
    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        h = health_pb2_grpc.HealthStub(ch)
        assert h.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == serving
        assert (
            h.Check(health_pb2.HealthCheckRequest(service="aecodec.v2.Decoding"), timeout=5).status == serving
        )
        with pytest.raises(grpc.RpcError) as err:
            h.Check(health_pb2.HealthCheckRequest(service="aecodec.v2.Storage"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.StorageStub(ch).ListStored(pb.ListStoredRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    names = reflected_services(server.port)
    assert "aecodec.v2.Decoding" in names and "aecodec.v2.Storage" not in names


def _mut(field):
    def f(req):
        exec(field, {"req": req, "pb": pb, "np": np, "to_tensor": to_tensor})
        return req

    return f


BAD = [
    ("req.codes.bundle_id = 'no-such-bundle'", grpc.StatusCode.NOT_FOUND, "no-such-bundle"),
    ("req.codes.bundle_id = ''", grpc.StatusCode.INVALID_ARGUMENT, "codes.bundle_id is empty"),
    ("req.ClearField('codes')", grpc.StatusCode.INVALID_ARGUMENT, "codes is missing"),
    ("req.codes.data = req.codes.data[:-1]", grpc.StatusCode.INVALID_ARGUMENT, "codes.data is"),
    ("req.codes.count = req.codes.count + 1", grpc.StatusCode.INVALID_ARGUMENT, "codes.data is"),
    ("req.codes.count = 0; req.codes.data = b''", grpc.StatusCode.INVALID_ARGUMENT, "codes.count is 0"),
    ("req.codes.format = 'float16'", grpc.StatusCode.INVALID_ARGUMENT, "codes.format is 'float16'"),
    (
        "req.codes.sizes.extend([32] * req.codes.count)",
        grpc.StatusCode.INVALID_ARGUMENT,
        "codes.sizes must be empty",
    ),
    ("req.originals.shape[:] = [4, 1, 32, 32]", grpc.StatusCode.INVALID_ARGUMENT, "originals"),
    (
        "req.originals.CopyFrom(to_tensor(np.zeros((4, 1, 32, 32), np.uint8)))",
        grpc.StatusCode.INVALID_ARGUMENT,
        "originals.shape is [4, 1, 32, 32], expected [4, 1, 28, 28]",
    ),
    (
        "req.originals.CopyFrom(to_tensor(np.zeros((4, 1, 28, 28), np.float32)))",
        grpc.StatusCode.INVALID_ARGUMENT,
        "originals.dtype is float32",
    ),
    ("req.originals.dtype = 0", grpc.StatusCode.INVALID_ARGUMENT, "originals.dtype is unset"),
    ("req.reconstruction_format = 7", grpc.StatusCode.INVALID_ARGUMENT, "reconstruction_format 7"),
]


@pytest.mark.parametrize("mutation, code, message", BAD, ids=[b[0][:40] for b in BAD])
def test_bad_requests_get_status_and_server_keeps_serving(stub, fashion_bundle, mutation, code, message):
    x = fashion_test_items(4)
    req, _ = make_request(fashion_bundle, x)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Decode(_mut(mutation)(req), timeout=10)
    assert exc.value.code() == code, exc.value.details()
    assert message in exc.value.details()
    good, _ = make_request(fashion_bundle, x)
    assert stub.Decode(good, timeout=10).count == 4  # still serving


def test_corrupt_entropy_payload_is_invalid_argument(stub, digits_bundle):
    x = datasets.load("digits", "test").x[:3]
    req, payloads = make_request(digits_bundle, x)
    # padded: never what the range coder writes (plain decoding ignores bytes its symbols do not need, but
    # refuses a stream that ends in a zero byte; ingest validation also proves streams canonical)
    bad = [payloads[0], payloads[1] + b"\x07\x00\x00\x00", payloads[2]]
    req.codes.data = b"".join(bad)
    req.codes.sizes[:] = [len(p) for p in bad]
    with pytest.raises(grpc.RpcError) as exc:
        stub.Decode(req, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "item 1" in exc.value.details()


def test_bad_request_inside_stream_ends_only_that_stream(stub, fashion_bundle):
    x = fashion_test_items(4)
    good, _ = make_request(fashion_bundle, x)
    bad, _ = make_request(fashion_bundle, x)
    bad.codes.data = b"\x00"
    it = stub.DecodeStream(iter([good, bad, good]), timeout=10)
    assert next(it).count == 4
    with pytest.raises(grpc.RpcError) as exc:
        next(it)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Decode(good, timeout=10).count == 4


def test_decoders_run_one_onnx_runtime_thread_each_and_never_spin(server):
    """The decode threads are the parallelism: ORT's default (a pool per session, spinning when idle) under two
    decode threads oversubscribed the cores and halved the decode rate (docs/deployment.md, Cores)."""
    from cloud.server import config_from_args, parse_args

    assert config_from_args(parse_args(["--bundles", "b"])).threads == 1
    entries = server.registry.entries()
    assert entries
    for lb in entries:
        opts = lb.codec.transforms.decoder.get_session_options()
        assert opts.intra_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
