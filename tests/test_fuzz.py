"""Property-based: malformed requests for every method, with and without tokens, never get INTERNAL or UNKNOWN.

The quick profile runs here (a few hundred requests); `python -m bench.hostile` sends tens of thousands
with the same generator (bench/hostile_requests.py) and writes the table in docs/hostile.md.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.hostile_requests import BAD, Target, hostile_call, send
from cloud.server import build_server
from cloud.tenancy import load_tokens
from latent_codec import datasets
from latent_codec.codec import Codec
from latent_codec.container import to_batch

TOKEN = "tok-fuzz-0123"


@pytest.fixture(scope="module")
def fuzz_target(digits_bundle, tmp_path_factory):
    """One server with a store and a device-bound token, and what the generator may know about it."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "tokens").write_text(f"{TOKEN} devices=fuzz-device\n")
    running = build_server(
        digits_bundle,
        "127.0.0.1:0",
        workers=2,
        store=str(d / "store.db"),
        auth_tokens=load_tokens(d / "tokens"),
    )
    codec = Codec.open(digits_bundle)
    payloads = codec.encode(datasets.load("digits", "test").x[:64])
    target = Target(codec.bundle_id, codec.format, codec.item_bytes, payloads, list(codec.input.shape), TOKEN)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, channel, target, codec
    channel.close()
    running.stop(grace=1.0)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rnd=st.randoms(use_true_random=False), with_token=st.booleans())
def test_no_malformed_request_gets_internal_or_unknown(fuzz_target, rnd, with_token):
    running, channel, target, _ = fuzz_target
    call = hostile_call(rnd, target, with_token)
    status = send(channel, call)
    assert status not in BAD, (call.method, status, [b[:60] for b in call.bodies])
    if not with_token and not call.method.startswith("/grpc.health"):
        assert status == "UNAUTHENTICATED" or call.metadata, (call.method, status)


def test_the_server_still_serves_after_the_fuzzing(fuzz_target):
    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from tests.helpers import CloudStub

    running, channel, target, codec = fuzz_target
    resp = CloudStub(channel).Decode(
        pb.DecodeRequest(codes=to_batch(codec, target.valid_payloads)),
        metadata=[("authorization", f"Bearer {TOKEN}")],
        timeout=30,
    )
    assert resp.count == len(target.valid_payloads)
