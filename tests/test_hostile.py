"""The server tried the way an attacker or a bad network would (issue 11): each finding, kept under test.

Real servers (in-process on 127.0.0.1 with ephemeral ports, or child processes killed with real
signals), real stores, raw bytes on the wire where a well-behaved client could not send them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.hostile import budget_items
from cloud.limits import Limits
from cloud.server import build_server
from cloud.tenancy import load_tokens
from latent_codec import datasets
from latent_codec.codec import Codec
from latent_codec.container import to_batch
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from tests.helpers import (
    PEAK_BOUND_MIB,
    ROOT,
    CloudStub,
    ServerProcess,
    child_env,
    server_cmd,
    tiny_bundle,
    wait_until,
)

DEVICE_A, DEVICE_B = "cam-a", "cam-b"
TOKENS = {  # each token is its key plus SUFFIX (a token must be 12 characters at least)
    "tok-a": f"devices={DEVICE_A}",
    "tok-b": f"devices={DEVICE_B}",
    "tok-ops": "role=operator",
    "tok-decode": "",
}
SUFFIX = "-0123456789"
METHODS = [
    ("/aecodec.v2.Decoding/Decode", "unary"),
    ("/aecodec.v2.Decoding/DecodeStream", "stream"),
    ("/aecodec.v2.Decoding/ModelInfo", "unary"),
    ("/aecodec.v2.Storage/Ingest", "stream"),
    ("/aecodec.v2.Storage/Fetch", "unary_stream"),
    ("/aecodec.v2.Storage/ListStored", "unary"),
    ("/aecodec.v2.Storage/Search", "unary"),
    ("/grpc.health.v1.Health/Check", "unary"),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "stream"),
]


def assert_start_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    """A server that cannot start: exit 2, exactly one `error:` line naming the problem, no traceback or C log."""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert not [ln for ln in proc.stderr.splitlines() if ln[:1] == "E" and ln[1:5].isdigit()], proc.stderr


def md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}{SUFFIX}")]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def entropy_bundle(digits_bundle) -> Path:
    return digits_bundle  # conftest's: entropy-coded, so an empty payload is a valid item


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    p.write_text("\n".join(f"{t}{SUFFIX} {scope}".strip() for t, scope in TOKENS.items()) + "\n")
    return p


@pytest.fixture
def guarded(entropy_bundle, token_file, tmp_path):
    """A server with a store and tokens bound to devices."""
    running = build_server(
        entropy_bundle,
        "127.0.0.1:0",
        workers=2,
        store=str(tmp_path / "store.db"),
        auth_tokens=load_tokens(token_file),
    )
    yield running
    running.stop(grace=1.0)


def raw_call(channel: grpc.Channel, method: str, kind: str, body: bytes, metadata=None, timeout: float = 10):
    """Send raw bytes as the request of any method; returns the status code the client saw."""
    try:
        if kind == "unary":
            channel.unary_unary(method)(body, metadata=metadata, timeout=timeout)
        elif kind == "unary_stream":
            list(channel.unary_stream(method)(body, metadata=metadata, timeout=timeout))
        else:
            list(channel.stream_stream(method)(iter([body]), metadata=metadata, timeout=timeout))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# ---- 1. starvation ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_idle_and_long_streams_do_not_starve_other_calls(guarded, entropy_bundle):
    """64 open Health/Watch streams (no token), 64 idle Ingest streams and 64 DecodeStream streams that each got a
    reply and stay open: health and ModelInfo still answer within 1 s, and every stream was served."""
    target = f"127.0.0.1:{guarded.port}"
    channels = [
        grpc.insecure_channel(target) for _ in range(6)
    ]  # spread over connections, as clients would be
    release = threading.Event()
    codec = Codec.open(entropy_bundle, need=("encoder",))
    x = datasets.load("digits", "test").x[:4]
    req = pb.DecodeRequest(codes=to_batch(codec, codec.encode(x)))

    def idle():
        release.wait(60)
        return
        yield  # an iterator that sends nothing until released

    def one_then_wait():
        yield req
        release.wait(60)

    calls: list = []
    try:
        watches = [
            health_pb2_grpc.HealthStub(channels[i % 2]).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            for i in range(64)
        ]
        calls += watches
        for w in watches:
            assert next(w).status == health_pb2.HealthCheckResponse.SERVING
        calls += [
            CloudStub(channels[2 + i % 2]).Ingest(idle(), metadata=md("tok-a"), timeout=60) for i in range(64)
        ]
        streams = [
            CloudStub(channels[4 + i % 2]).DecodeStream(
                one_then_wait(), metadata=md("tok-decode"), timeout=60
            )
            for i in range(64)
        ]
        calls += streams
        assert all(next(s).count == 4 for s in streams)  # 64 streams served while all 64 stay open
        with grpc.insecure_channel(target) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            assert (
                CloudStub(ch).ModelInfo(pb.ModelInfoRequest(), metadata=md("tok-decode"), timeout=1.0).bundles
            )
    finally:
        release.set()
        for c in calls:
            c.cancel()
        for ch in channels:
            ch.close()


# ---- 2. amplification ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_small_request_cannot_make_the_server_decode_gigabytes(fashion_bundle, digits_bundle, tmp_path):
    """65,536 items in a request of a few hundred bytes (entropy-coded, all empty) or of 2 MiB (fixed 32-byte
    codes) would decode to 205 MB of float32 pixels and hold several times that in the decoder: refused before
    decoding with RESOURCE_EXHAUSTED naming the budget and how many such items fit; exactly that many are
    served, one more is refused."""
    root = tmp_path / "bundles"
    root.mkdir()
    for b in (fashion_bundle, digits_bundle):
        (root / b.name).symlink_to(b, target_is_directory=True)
    running = build_server(root, "127.0.0.1:0", workers=2)
    fashion = Codec.open(fashion_bundle, need=())
    digits = Codec.open(digits_bundle, need=())
    priced = running.registry.get(
        fashion.bundle_id
    ).codec  # the server's own codec: its graph measured at load
    assert priced.graph_cost is not None
    limits = Limits(decode_runs=2)  # the server's: 2 decode threads, the default budgets
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    item = bytes(fashion.item_bytes or 0)

    def request(codec: Codec, n: int, fmt=pb.RECONSTRUCTION_FORMAT_FLOAT32) -> pb.DecodeRequest:
        if codec.item_bytes is None:
            batch = pb.CodeBatch(bundle_id=codec.bundle_id, count=n, format=codec.format, sizes=[0] * n)
        else:
            batch = to_batch(codec, [bytes(codec.item_bytes)] * n)
        return pb.DecodeRequest(codes=batch, reconstruction_format=fmt)

    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}", options=opts) as ch:
            stub = CloudStub(ch)
            budget = limits.max_decode_bytes
            for fmt, itemsize in ((pb.RECONSTRUCTION_FORMAT_FLOAT32, 4), (pb.RECONSTRUCTION_FORMAT_NONE, 0)):
                # The count from the codec's own cost model, asked of the admission rule (not a formula).
                n = budget_items(priced, item, limits, itemsize)
                # Far fewer than the pixels alone would allow: the decoder's working memory is priced too.
                assert 0 < n < budget // (28 * 28 * 4)
                with pytest.raises(grpc.RpcError) as info:
                    stub.Decode(request(fashion, 65536, fmt), timeout=10)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                details = info.value.details()
                assert f"{budget:,} bytes" in details and "--max-decode-mib" in details, details
                assert f"send at most {n:,} such items" in details, (n, details)
                # The number it names is right: that many are served, one more is refused before decoding.
                assert stub.Decode(request(fashion, n, fmt), timeout=120).count == n
                with pytest.raises(grpc.RpcError) as info:
                    stub.Decode(request(fashion, n + 1, fmt), timeout=10)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert f"send at most {n:,} such items" in info.value.details()
            tiny = request(digits, 65536 * 4)  # entropy-coded: a few hundred KB of sizes, 67 MB of pixels
            with pytest.raises(grpc.RpcError) as info:
                stub.Decode(tiny, timeout=10)
            assert (
                info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                and "65,536 items" in info.value.details()
            )
    finally:
        running.stop(grace=1.0)


# ---- 3. unparseable requests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method, kind", METHODS, ids=[m.rsplit("/", 1)[1] for m, _ in METHODS])
def test_garbage_bodies_are_invalid_argument_and_unauthenticated_callers_are_refused_before_parsing(
    guarded, method, kind
):
    with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as ch:
        for body in (b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", os.urandom(64)):
            with_token = raw_call(ch, method, kind, body, md("tok-ops"))
            if body == b"\x0a\xff\xff\xff\xff\x0f" or body == b"\xff\xff\xff":
                assert with_token == grpc.StatusCode.INVALID_ARGUMENT, (method, body)
            assert with_token not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, body)
            without = raw_call(ch, method, kind, body)
            if method.startswith("/grpc.health"):
                assert without not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)  # health is open
            else:
                assert without == grpc.StatusCode.UNAUTHENTICATED, (method, body)


@pytest.mark.slow
def test_shutdown_is_bounded_whatever_the_clients_did(bundle, tmp_path):
    """A stream that sent garbage and never closed, an idle Ingest stream, a Watch: SIGTERM still ends the
    process within its grace period (plus start-up of the shutdown), exit 0."""
    server = ServerProcess(bundle, str(tmp_path / "s.db"), tmp_path, extra=("--grace", "2")).start()
    release = threading.Event()

    def garbage_then_hang():
        yield b"\xff\xff\xff"
        release.wait(60)

    def hang():
        release.wait(60)
        return
        yield

    ch = grpc.insecure_channel(server.target)
    try:
        calls = [
            ch.stream_stream("/aecodec.v2.Decoding/DecodeStream")(garbage_then_hang(), timeout=60),
            ch.stream_stream("/aecodec.v2.Storage/Ingest")(hang(), timeout=60),
            health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=60),
        ]
        threads = [threading.Thread(target=_drain, args=(c,), daemon=True) for c in calls]
        for t in threads:
            t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=20)
        took = time.monotonic() - t0
    finally:
        release.set()
        ch.close()
        server.kill()
    assert rc == 0 and took < 2 + 5, (rc, took)
    assert "Traceback" not in server.log_text()


def _drain(call) -> None:
    try:
        for _ in call:
            pass
    except grpc.RpcError:
        pass


# ---- 4. isolation between devices -------------------------------------------------------------------------------
def test_tokens_are_bound_to_their_devices_and_operators_read_all(guarded, entropy_bundle):
    codec = Codec.open(entropy_bundle, need=("encoder",))
    x = datasets.load("digits", "test").x[:6]
    payloads = codec.encode(x)

    def ingest(token: str, device: str, prefix: str) -> list:
        req = pb.IngestRequest(
            device_id=device,
            bundle_id=codec.bundle_id,
            item_id_prefix=prefix,
            items=[pb.IngestItem(item_seq=k, payload=p, captured_at_ms=k) for k, p in enumerate(payloads)],
        )
        return list(stub.Ingest(iter([req]), metadata=md(token), timeout=30))

    def denied(fn) -> str:
        with pytest.raises(grpc.RpcError) as info:
            fn()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
        return info.value.details()

    with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as ch:
        stub = CloudStub(ch)
        assert ingest("tok-a", DEVICE_A, "a#")[0].item_seqs == list(range(6))
        assert ingest("tok-b", DEVICE_B, "b#")[0].item_seqs == list(range(6))
        # B cannot write as A (so it cannot pre-store A's next ids), and the others write nothing.
        assert "may not write items of device 'cam-a'" in denied(lambda: ingest("tok-b", DEVICE_A, "a#next-"))
        denied(lambda: ingest("tok-ops", DEVICE_A, "ops#"))
        denied(lambda: ingest("tok-decode", DEVICE_A, "d#"))
        # B cannot read A's items by range, and by id they do not exist for it.
        denied(
            lambda: list(stub.Fetch(pb.FetchRequest(device_id=DEVICE_A), metadata=md("tok-b"), timeout=10))
        )
        (resp,) = stub.Fetch(
            pb.FetchRequest(item_ids=["a#0", "b#0"], codes_only=True), metadata=md("tok-b"), timeout=10
        )
        assert [it.item_id for it in resp.items] == ["b#0"] and list(resp.missing_ids) == ["a#0"]
        denied(
            lambda: list(
                stub.Fetch(pb.FetchRequest(item_ids=["a#0"], device_id=DEVICE_A), metadata=md("tok-b"))
            )
        )
        # Listing shows a device only its own items; the operator sees all; a decode-only token sees none.
        mine = stub.ListStored(pb.ListStoredRequest(), metadata=md("tok-b"), timeout=10)
        assert {s.device_id for s in mine.summaries} == {DEVICE_B} and mine.total_items == 6
        denied(lambda: stub.ListStored(pb.ListStoredRequest(device_id=DEVICE_A), metadata=md("tok-b")))
        denied(lambda: stub.ListStored(pb.ListStoredRequest(), metadata=md("tok-decode")))
        every = stub.ListStored(pb.ListStoredRequest(), metadata=md("tok-ops"), timeout=10)
        assert {s.device_id for s in every.summaries} == {DEVICE_A, DEVICE_B} and every.total_items == 12
        items = [
            it
            for r in stub.Fetch(pb.FetchRequest(device_id=DEVICE_A), metadata=md("tok-ops"))
            for it in r.items
        ]
        assert len(items) == 6 and all(it.HasField("reconstruction") for it in items)
        # Decoding stays open to every valid token.
        assert (
            stub.Decode(pb.DecodeRequest(codes=to_batch(codec, payloads)), metadata=md("tok-decode")).count
            == 6
        )


def test_token_file_scopes_are_checked(tmp_path):
    from latent_codec.errors import CodecError

    bad = tmp_path / "t"
    for text, why in (
        ("tok-0123456789 devices=\n", "devices= needs"),
        ("tok-0123456789 role=admin\n", "unknown scope 'role=admin'"),
        ("tok-0123456789\ntok-0123456789 devices=x\n", "repeats an earlier token"),
        ("# nothing\n\n", "holds no token"),
    ):
        bad.write_text(text)
        with pytest.raises(CodecError, match=why):
            load_tokens(bad)
    t1, t2, t3 = (f"t{k}-0123456789ab" for k in (1, 2, 3))
    bad.write_text(f"{t1} devices=a,b  # a gateway\n{t2} role=operator\n{t3}\n")
    tokens = load_tokens(bad)
    assert tokens[t1].may_write("b") and not tokens[t1].may_write("c") and not tokens[t1].reads_all
    assert tokens[t2].may_read("anything") and not tokens[t2].may_write("anything")
    assert not tokens[t3].may_read("a") and not tokens[t3].devices


# ---- 6. bundles ---------------------------------------------------------------------------------------------------
def _reseal(bundle_dir: Path, decoder: bytes | None = None, edit=None) -> None:
    from latent_codec.bundle import DECODER_NAME, ENCODER_NAME, Manifest, write_manifest

    if decoder is not None:
        (bundle_dir / DECODER_NAME).write_bytes(decoder)
    m = Manifest.from_json((bundle_dir / "manifest.json").read_text())
    m.seal((bundle_dir / ENCODER_NAME).read_bytes(), (bundle_dir / DECODER_NAME).read_bytes())
    if edit:
        edit(m)
    write_manifest(bundle_dir, m)


def test_bundles_with_external_data_impostor_ids_or_duplicate_ids_are_refused(bundle, tmp_path, monkeypatch):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    from latent_codec.bundle import load_bundle
    from latent_codec.errors import BundleError

    # A re-sealed decoder whose weights point at a file outside the bundle (the server's working directory).
    evil = tmp_path / "evil"
    shutil.copytree(bundle, evil)
    model = onnx.load_model_from_string((evil / "decoder.onnx").read_bytes())
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="tokens.txt", size_threshold=0
    )
    _reseal(evil, model.SerializeToString())
    (tmp_path / "tokens.txt").write_bytes(b"secret-token-material" * 1000)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleError, match="external file"):
        load_bundle(evil)
    # An impostor: real files, but a bundle_id that is not the one its bytes give.
    impostor = tmp_path / "impostor"
    shutil.copytree(bundle, impostor)
    _reseal(impostor, edit=lambda m: setattr(m, "bundle_id", "dense-000000000000"))
    with pytest.raises(BundleError, match="does not match its content"):
        load_bundle(impostor)
    # The same bundle twice under --bundles: an error naming both paths, not one silently replacing the other.
    two = tmp_path / "two"
    two.mkdir()
    shutil.copytree(bundle, two / "first")
    shutil.copytree(bundle, two / "second")
    with pytest.raises(BundleError, match=r"two places: .*first and .*second"):
        build_server(two, "127.0.0.1:0")
    proc = subprocess.run(
        server_cmd(two),
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "two places" in proc.stderr


# ---- 7. a store that cannot take writes -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_read_only_store_is_a_start_up_error(bundle, tmp_path):
    from cloud.store.sqlite import SqliteStore

    ro = Path(__import__("tempfile").mkdtemp(prefix="aecodec-ro-"))
    try:
        SqliteStore(ro / "store.db").close()  # an existing, valid store
        cmd = server_cmd(bundle, "--store", str(ro / "store.db"))
        if os.geteuid() == 0:  # root writes anywhere: make the directory a read-only mount instead
            if shutil.which("unshare") is None:
                pytest.skip("needs unshare to make a read-only mount as root")
            script = f'mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} {ro} && exec "$@"'
            cmd = ["unshare", "-m", "sh", "-c", script, "sh", *cmd]
        else:
            for f in ro.iterdir():
                f.chmod(0o444)
            ro.chmod(0o555)
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
    finally:
        ro.chmod(0o755)
        shutil.rmtree(ro, ignore_errors=True)
    assert_start_error(proc, "store")


# ---- 8. tensor fields -------------------------------------------------------------------------------------------
def test_hostile_tensor_shapes_are_invalid_argument(guarded, entropy_bundle):
    codec = Codec.open(entropy_bundle, need=("encoder",))
    x = datasets.load("digits", "test").x[:2]
    base = pb.DecodeRequest(codes=to_batch(codec, codec.encode(x)))
    with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as ch:
        stub = CloudStub(ch)
        for shape in ([2**62, 4], [2**63 - 1, 2**63 - 1], [1] * 70, [-1, 64], [2, 1, 8, 8, 0]):
            req = pb.DecodeRequest()
            req.CopyFrom(base)
            req.originals.CopyFrom(pb.Tensor(dtype=pb.DTYPE_UINT8, shape=shape, data=b"\x00" * 16))
            with pytest.raises(grpc.RpcError) as info:
                stub.Decode(req, metadata=md("tok-decode"), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (shape, info.value)
            assert "originals" in info.value.details()


# ---- 9. logs and metrics tell the truth ---------------------------------------------------------------------------
def test_logged_and_counted_status_is_the_status_the_client_saw(bundle, tmp_path, caplog):
    import logging
    import urllib.request

    from tests.helpers.prometheus import scrape, val

    running = build_server(
        bundle, "127.0.0.1:0", workers=2, metrics_address="127.0.0.1:0", max_message_bytes=16 * 1024
    )
    caplog.set_level(logging.INFO, logger="cloud.rpc")
    codec = Codec.open(bundle)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            seen = raw_call(ch, "/aecodec.v2.Decoding/Decode", "unary", b"\xff\xff\xff")
            # A reply too large to send is refused by the server, so what it logs and counts is what the client
            # sees: 64 items of float32 pixels are exactly the (clamped) decode budget, and the reply's framing
            # makes it larger than a 16 KiB message may be.
            big = pb.DecodeRequest(
                codes=to_batch(codec, codec.encode(datasets.load("digits", "test").x[:64])),
                reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32,
            )
            with pytest.raises(grpc.RpcError) as too_big:
                CloudStub(ch).Decode(big, timeout=10)
            assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "message limit" in too_big.value.details()

            def slow():  # a stream whose deadline passes while the client holds it open
                yield pb.DecodeRequest(codes=pb.CodeBatch(bundle_id="nope", count=1))
                time.sleep(2)

            with pytest.raises(grpc.RpcError) as info:
                list(CloudStub(ch).DecodeStream(slow(), timeout=0.5))
            late = info.value.code()
        handled = "aecodec_grpc_server_handled_total"

        def stream_counted():  # the server counts a call once it has ended on its side too: wait for that
            s = scrape(running.metrics_port)
            labels = {
                "grpc_service": "aecodec.v2.Decoding",
                "grpc_method": "DecodeStream",
                "grpc_code": late.name,
            }
            logged = any(
                f"rpc=/aecodec.v2.Decoding/DecodeStream code={late.name}" in r.getMessage()
                for r in caplog.records
            )
            return s if logged and val(s, handled, **labels) >= 1 else None

        samples = wait_until(stream_counted, 30, "the server to count the DecodeStream that ran out of time")
        urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).close()
    finally:
        running.stop(grace=1.0)
    assert seen == grpc.StatusCode.INVALID_ARGUMENT and late in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "cloud.rpc"]
    assert any("rpc=/aecodec.v2.Decoding/Decode code=INVALID_ARGUMENT" in ln for ln in lines), lines
    assert any("rpc=/aecodec.v2.Decoding/Decode code=RESOURCE_EXHAUSTED" in ln for ln in lines), lines
    assert any(f"rpc=/aecodec.v2.Decoding/DecodeStream code={late.name}" in ln for ln in lines), lines
    assert not [r for r in caplog.records if r.exc_info], "a client error was logged with a traceback"
    assert (
        val(
            samples,
            handled,
            grpc_service="aecodec.v2.Decoding",
            grpc_method="Decode",
            grpc_code="INVALID_ARGUMENT",
        )
        == 1
    )
    assert (
        val(
            samples,
            handled,
            grpc_service="aecodec.v2.Decoding",
            grpc_method="DecodeStream",
            grpc_code=late.name,
        )
        == 1
    )


# ---- 11. a port already in use -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_binding_a_port_in_use_fails_unless_sharing_is_asked_for(bundle, tmp_path):
    first = ServerProcess(bundle, None, tmp_path).start()
    try:
        cmd = [sys.executable, "-m", "cloud.server", "--bundles", str(bundle), "--address", first.target]
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
        assert_start_error(proc, "in use")
        # Asked for explicitly (two versions side by side), both serve the port.
        first.kill()
        a = ServerProcess(bundle, None, tmp_path, port=first.port, extra=("--reuse-port",)).start()
        b = ServerProcess(bundle, None, tmp_path, port=first.port, extra=("--reuse-port",)).start()
        try:
            assert (
                a.proc is not None and b.proc is not None and a.proc.poll() is None and b.proc.poll() is None
            )
        finally:
            a.kill()
            b.kill()
    finally:
        first.kill()


# ---- 5. a PostgreSQL outage ----------------------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class OwnPostgres:
    """A PostgreSQL server of the test's own (data directory and port), started and stopped for real."""

    def __init__(self, port: int):
        import tempfile

        self.bin = _pg_bin()
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="aecodec-pg-"))
        self.data = self.dir / "data"
        self.as_postgres = os.geteuid() == 0  # postgres refuses to run as root
        if self.as_postgres:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        assert self.bin is not None
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check, cwd="/")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_postgres():
    from tests.helpers import IN_CI, free_port

    if _pg_bin() is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        msg = "needs PostgreSQL's initdb/pg_ctl (Debian package postgresql) to run a server of its own"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    pg = OwnPostgres(free_port())
    pg.init()
    pg.start()
    yield pg
    pg.cleanup()


@pytest.mark.slow
def test_a_postgres_outage_is_unavailable_and_recovers_without_a_restart(
    entropy_bundle, own_postgres, tmp_path
):
    from tests.helpers import edge_cmd, start_edge

    server = ServerProcess(
        entropy_bundle, own_postgres.url, tmp_path, extra=("--health-interval", "0.5")
    ).start()
    data = tmp_path / "items.npy"
    np.save(data, datasets.load("digits", "test").x[:300])
    ch = grpc.insecure_channel(server.target)
    stub = CloudStub(ch)
    health = health_pb2_grpc.HealthStub(ch)

    def storage_health() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service="aecodec.v2.Storage"), timeout=5).status

    try:
        assert stub.ListStored(pb.ListStoredRequest(), timeout=10).total_items == 0
        own_postgres.stop()
        # Every call during the outage is UNAVAILABLE (retryable), never UNKNOWN or INTERNAL.
        for call in (
            lambda: stub.ListStored(pb.ListStoredRequest(), timeout=20),
            lambda: list(stub.Fetch(pb.FetchRequest(device_id="phone-1"), timeout=20)),
            lambda: stub.ListStored(pb.ListStoredRequest(), timeout=20),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        wait_until(
            lambda: storage_health() == health_pb2.HealthCheckResponse.NOT_SERVING, 15, "Storage NOT_SERVING"
        )
        # The edge keeps its items spooled while the database is down ...
        log = tmp_path / "edge.log"
        edge = start_edge(
            edge_cmd(entropy_bundle, server.target, data, tmp_path / "spool.db", "--retry-for", "120"), log
        )
        wait_until(
            lambda: "retrying" in log.read_text() or edge.poll() is not None, 60, "the edge to log a retry"
        )
        assert edge.poll() is None, log.read_text()  # still retrying, not failed
        # ... and drains them once it is back; the first call after recovery succeeds.
        own_postgres.start()
        assert stub.ListStored(pb.ListStoredRequest(), timeout=20).total_items >= 0
        assert edge.wait(timeout=120) == 0, log.read_text()
        listing = stub.ListStored(pb.ListStoredRequest(device_id="phone-1"), timeout=10)
        assert listing.total_items == 300  # every item once
        wait_until(
            lambda: storage_health() == health_pb2.HealthCheckResponse.SERVING, 15, "Storage SERVING again"
        )
    finally:
        ch.close()
        server.kill(signal.SIGTERM)
    assert "Traceback" not in server.log_text()


@pytest.mark.slow
def test_streams_that_pipeline_worst_case_requests_and_never_read_stay_within_the_budget(tmp_path):
    """8 DecodeStream clients each send 4 requests at the decode budget (float32 replies) and never read. gRPC keeps
    an unsent reply in memory while its client does not read, so such streams used to pin one reply each (8
    streams: +825 MiB). Replies now hold a shared budget until sent: peak RSS stays within the bound docs/deployment.md
    states for worst-case requests (PEAK_BOUND_MIB, which tests/test_hostile_round2.py checks for 8 concurrent
    Decode calls of every bundle kind), and the budget comes back when those clients go away."""
    import grpc

    from bench.hostile import DEVICE, TOKEN, budget_items, priced, train_bundle
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc
    from tests.helpers import need_fashion

    need_fashion()
    bundle = train_bundle(tmp_path)
    codec = priced(bundle)
    (tmp_path / "tokens.txt").write_text(f"{TOKEN} devices={DEVICE}\n")
    server = ServerProcess(
        bundle, None, tmp_path, metrics=True, extra=("--auth-token-file", str(tmp_path / "tokens.txt"))
    ).start()
    n = budget_items(codec)
    req = pb.DecodeRequest(
        codes=pb.CodeBatch(bundle_id=codec.bundle_id, count=n, format=codec.format, sizes=[0] * n),
        reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32,
    )

    async def hold_open() -> int:
        opts = [("grpc.max_receive_message_length", 64 << 20)]
        channels = [grpc.aio.insecure_channel(server.target, options=opts) for _ in range(8)]
        calls = [
            pb_grpc.DecodingStub(ch).DecodeStream(metadata=[("authorization", f"Bearer {TOKEN}")], timeout=60)
            for ch in channels
        ]
        t0 = time.monotonic()
        for call in calls:
            for _ in range(4):
                await call.write(req)
        # The server decodes what it may; nobody reads. Waited for (its metrics), then watched for as long again
        # (2 s at least): with the shared budget broken, more requests would decode meanwhile.
        deadline = t0 + 120
        while await asyncio.to_thread(server.decoded_items) < n:
            assert time.monotonic() < deadline, "no request was decoded within 120 s"
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(2.0, time.monotonic() - t0))
        grown = server.rss_kib("VmHWM")
        for call in calls:  # the clients go away: what their replies held comes back
            call.cancel()
        for ch in channels:
            await ch.close()
        async with grpc.aio.insecure_channel(server.target, options=opts) as ch:
            call = pb_grpc.DecodingStub(ch).DecodeStream(
                metadata=[("authorization", f"Bearer {TOKEN}")], timeout=30
            )
            await call.write(req)
            assert (await call.read()).count == n
            await call.done_writing()
        return grown

    try:
        before = server.rss_kib("VmHWM")
        grown_mib = (asyncio.run(hold_open()) - before) / 1024
        print(f"peak RSS grew by {grown_mib:.0f} MiB")
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.kill(signal.SIGTERM)
    assert grown_mib < PEAK_BOUND_MIB, (
        f"peak RSS grew by {grown_mib:.0f} MiB, over the stated {PEAK_BOUND_MIB} MiB"
    )
