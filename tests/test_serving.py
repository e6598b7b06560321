"""Serving as operators expect (issue 13): dynamic batching, live rollout, drain, JSON logs, env config, field audit.

Real servers (in-process, or child processes with real signals), real bundles, real edge runs.
"""

from __future__ import annotations

import asyncio
import json
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

from cloud.server import build_server
from latent_codec import datasets
from latent_codec.codec import Codec
from latent_codec.container import from_tensor, to_batch
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from tests.helpers import ROOT, CloudStub, ServerProcess, child_env, run_within, tiny_bundle, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return datasets.load("digits", "test").x[:64]


def health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as ch:
        return (
            health_pb2_grpc.HealthStub(ch)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            .status
        )


# ---- dynamic batching ---------------------------------------------------------------------------------------------
def test_batcher_merges_concurrent_requests_and_gives_each_its_own_rows(bundle, items):
    from concurrent.futures import ThreadPoolExecutor

    from cloud.batching import Batcher

    codec = Codec.open(bundle)
    codes = codec.dequantise(codec.symbols(codec.encode(items))[0])
    runs: list[int] = []
    sizes = [1, 3, 1, 5, 2, 1, 8, 1, 4, 2]  # 28 items in 10 requests

    async def go(batcher: Batcher) -> list[np.ndarray]:
        starts = np.cumsum([0, *sizes])
        return await asyncio.gather(
            *(batcher.synthesise(codes[a:b], {}) for a, b in zip(starts[:-1], starts[1:]))
        )

    with ThreadPoolExecutor(2) as pool:
        merged = run_within(
            go(Batcher(codec, pool, max_items=8, max_delay=0.05, observe=runs.append)), 60, "merged runs"
        )
        solo_runs: list[int] = []
        solo = run_within(
            go(Batcher(codec, pool, max_items=0, max_delay=0.05, observe=solo_runs.append)), 60, "solo runs"
        )
    want = codec.synthesise(codes[:28], {})
    starts = np.cumsum([0, *sizes])
    for got, a, b in zip(merged, starts[:-1], starts[1:]):
        assert got.shape == (b - a, 1, 8, 8) and np.abs(got - want[a:b]).max() <= 1e-5
    assert all(np.abs(m - s).max() <= 1e-5 for m, s in zip(merged, solo))
    assert sum(runs) == 28 and max(runs) <= 8 and len(runs) < len(sizes)  # merged, within the bound
    assert solo_runs == sizes  # off: one run per request


def test_the_runtimes_memory_is_given_back_once_when_idle_not_after_every_large_run(bundle, items):
    """Releasing ONNX Runtime's arena after every large run cost a served map bundle a quarter of its CPU per
    item; the memory must still come back when the server goes idle (the hostile tests measure the RSS)."""
    from concurrent.futures import ThreadPoolExecutor

    from cloud import batching
    from cloud.batching import Batcher

    codec = Codec.open(bundle)
    codes = codec.dequantise(codec.symbols(codec.encode(items))[0])

    async def go(batcher: Batcher) -> tuple[int, int]:
        for _ in range(6):  # back to back, each a "large" run
            await batcher.synthesise(codes[:4], {}, release=True)
        during = batcher.releases
        await asyncio.sleep(batching.RELEASE_IDLE_SECONDS * 1.5)
        deadline = time.monotonic() + 30
        while batcher.releases == during and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(batching.RELEASE_IDLE_SECONDS * 2)  # no second release follows
        return during, batcher.releases

    with ThreadPoolExecutor(2) as pool:
        during, after = run_within(go(Batcher(codec, pool, max_items=0)), 60, "the idle release")
    assert (during, after) == (0, 1)


def test_one_large_request_is_split_across_the_decode_threads(bundle, items):
    """A request too large to merge runs alone, but in parts on every run slot at once, so a single client with a
    big batch keeps all decode threads busy; a small one stays one run (ORT's per-run cost)."""
    from concurrent.futures import ThreadPoolExecutor

    from cloud.batching import SPLIT, Batcher

    codec = Codec.open(bundle)
    codes = codec.dequantise(codec.symbols(codec.encode(items))[0])  # 64 items
    calls: list[tuple[int, int]] = []
    both = threading.Barrier(2, timeout=10)  # the parts must run at the same time, on two threads
    real = codec.synthesise

    def recording(c, side, chunk=0):
        calls.append((len(c), threading.get_ident()))
        if len(c) == len(codes) // 2:
            both.wait()
        return real(c, side, chunk)

    codec.synthesise = recording  # type: ignore[method-assign]
    with ThreadPoolExecutor(2) as pool:
        out = run_within(
            Batcher(codec, pool, max_items=16, max_runs=2).synthesise(codes, {}), 60, "a split request"
        )
        assert sorted(n for n, _ in calls) == [32, 32] and len({t for _, t in calls}) == 2
        calls.clear()
        small = codes[: 2 * SPLIT - 1]
        run_within(
            Batcher(codec, pool, max_items=16, max_runs=2).synthesise(small, {}), 60, "a small request"
        )
        assert [n for n, _ in calls] == [len(small)]
    assert np.abs(out - real(codes, {})).max() <= 1e-5


def test_requests_arriving_while_the_runs_are_busy_go_together_in_the_next_run(bundle, items):
    """Continuous batching (no delay): the first request runs at once; those that arrive while every run slot is
    busy wait and then go as one run."""
    from concurrent.futures import ThreadPoolExecutor

    from cloud.batching import Batcher

    codec = Codec.open(bundle)
    codes = codec.dequantise(codec.symbols(codec.encode(items[:10]))[0])
    runs: list[int] = []

    async def go() -> list[np.ndarray]:
        batcher = Batcher(codec, pool, max_items=64, max_delay=0.0, observe=runs.append, max_runs=1)
        first = asyncio.ensure_future(batcher.synthesise(codes[:1], {}))
        await asyncio.sleep(0.05)  # the first run is dispatched (its thread is held busy below) ...
        rest = asyncio.gather(*(batcher.synthesise(codes[k : k + 1], {}) for k in range(1, 10)))
        await asyncio.sleep(0.05)  # ... and the next nine find the only slot taken
        release.set()
        return [await first, *await rest]

    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(release.wait, 30)  # the decode thread is busy until released
        out = run_within(go(), 60, "requests queued behind a busy run")
    assert runs == [1, 9]
    want = codec.synthesise(codes, {})
    assert all(np.abs(o - want[k : k + 1]).max() <= 1e-5 for k, o in enumerate(out))


def test_served_requests_are_merged_and_a_bad_request_fails_alone(bundle, items):
    from cloud.decoding_service import Batching
    from tests.helpers.prometheus import scrape, val

    running = build_server(bundle, "127.0.0.1:0", metrics_address="127.0.0.1:0", batching=Batching(64, 0.05))
    codec = Codec.open(bundle)
    payloads = codec.encode(items[:32])
    bad = pb.DecodeRequest(codes=to_batch(codec, [b"\x00" * (codec.item_bytes or 1)]))
    bad.codes.data = bad.codes.data[:-1]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = CloudStub(ch)
            results: list = [None] * 33

            def call(k: int) -> None:
                req = bad if k == 32 else pb.DecodeRequest(codes=to_batch(codec, [payloads[k]]))
                try:
                    results[k] = stub.Decode(req, timeout=30)
                except grpc.RpcError as exc:
                    results[k] = exc.code()

            threads = [threading.Thread(target=call, args=(k,)) for k in range(33)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)  # each call has a 30 s deadline of its own
                assert not t.is_alive(), "a Decode call did not end within its deadline"
        samples = scrape(running.metrics_port)
    finally:
        running.stop(grace=1.0)
    assert results[32] == grpc.StatusCode.INVALID_ARGUMENT
    want = codec.decode(payloads)
    from latent_codec.container import from_tensor

    for k in range(32):
        got = from_tensor(results[k].reconstructions)
        assert np.abs(got.astype(int) - want[k : k + 1].astype(int)).max() <= 1
    runs = val(samples, "aecodec_decode_batch_items_count")
    assert (
        val(samples, "aecodec_decode_batch_items_sum") == 32 and runs < 32
    )  # fewer decoder runs than requests


# ---- one stream read ahead -------------------------------------------------------------------------------------
def _stream_server(bundle, window: int = 32):
    from cloud.decoding_service import Batching

    batching = Batching(64, 0.05, stream_window=window)  # 50 ms for company: merging is certain, not a race
    return build_server(bundle, "127.0.0.1:0", metrics_address="127.0.0.1:0", batching=batching)


def test_a_pipelined_stream_is_batched_and_answered_in_order(bundle, items):
    """A device pipelining single items over one DecodeStream: read ahead, its requests share decoder runs; with
    --stream-window 1 each waits for the one before (one run per request)."""
    from tests.helpers.prometheus import scrape, val

    codec = Codec.open(bundle)
    payloads = codec.encode(items[:24])
    want = codec.decode(payloads)
    requests = [pb.DecodeRequest(codes=to_batch(codec, [p])) for p in payloads]
    runs = {}
    for window in (32, 1):
        running = _stream_server(bundle, window)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                replies = list(CloudStub(ch).DecodeStream(iter(requests), timeout=30))
            samples = scrape(running.metrics_port)
        finally:
            running.stop(grace=1.0)
        assert len(replies) == 24
        for k, r in enumerate(replies):  # in request order
            np.testing.assert_array_equal(from_tensor(r.reconstructions, "reconstructions"), want[k : k + 1])
        assert val(samples, "aecodec_decode_batch_items_sum") == 24
        runs[window] = val(samples, "aecodec_decode_batch_items_count")
    assert runs[32] <= 4 and runs[1] == 24, runs


def test_a_refusal_in_a_pipelined_stream_comes_after_the_replies_before_it(bundle, items):
    """Requests worked on ahead are refused in their turn: the replies before a bad request arrive, then its status,
    whether it is refused on admission (unknown bundle), while decoding (bad payload) or does not parse."""
    codec = Codec.open(bundle)
    payloads = codec.encode(items[:8])
    good = [pb.DecodeRequest(codes=to_batch(codec, [p])) for p in payloads]
    unknown = pb.DecodeRequest(codes=to_batch(codec, payloads[:1]))
    unknown.codes.bundle_id = "nope"
    corrupt = pb.DecodeRequest(codes=to_batch(codec, payloads[:1]))
    corrupt.codes.data = corrupt.codes.data[:-1]
    cases = [
        (unknown.SerializeToString(), grpc.StatusCode.NOT_FOUND),
        (corrupt.SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT),
        (b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    running = _stream_server(bundle)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            raw_stream = ch.stream_stream(
                "/aecodec.v2.Decoding/DecodeStream", response_deserializer=pb.DecodeResponse.FromString
            )
            for bad, code in cases:
                body = (
                    [g.SerializeToString() for g in good[:5]]
                    + [bad]
                    + [g.SerializeToString() for g in good[5:]]
                )
                got = []
                with pytest.raises(grpc.RpcError) as exc:
                    for reply in raw_stream(iter(body), timeout=30):
                        got.append(reply)
                assert exc.value.code() == code, exc.value.details()
                assert len(got) == 5 and all(r.count == 1 for r in got)
            assert CloudStub(ch).Decode(good[0], timeout=10).count == 1  # the server is fine
    finally:
        running.stop(grace=1.0)


def test_read_ahead_is_bounded_by_requests_and_bytes_while_the_client_does_not_read():
    """A client that sends fast and never reads holds at most `window` requests and `budget` bytes of work."""
    from cloud.batching import in_order
    from cloud.limits import InFlight

    started: list[int] = []

    async def requests():
        for k in range(100):
            yield k

    async def admit(request, ctx):
        return request, 40  # each request will hold 40 bytes

    async def work(ticket, ctx):
        started.append(ticket)
        return ticket

    async def go(window: int, budget: int) -> tuple[list[int], list[int]]:
        started.clear()
        replies = in_order(requests(), None, admit, work, window, InFlight(budget))  # type: ignore[arg-type]
        first = [await replies.__anext__()]
        await asyncio.sleep(0.05)  # the client reads nothing more: the reader runs as far as it may
        seen = list(started)
        first += [r async for r in replies]
        return seen, first

    seen, out = run_within(go(window=8, budget=10_000), 30, "read-ahead bounded by the window")
    assert len(seen) == 8 and out == list(range(100))  # the one handed over still counts until it is taken
    seen, out = run_within(go(window=64, budget=100), 30, "read-ahead bounded by the byte budget")
    assert len(seen) == 100 // 40 and out == list(range(100))
    seen, out = run_within(go(window=64, budget=10), 30, "a request larger than the budget")  # runs alone
    assert len(seen) == 1 and out == list(range(100))


# ---- live rollout ---------------------------------------------------------------------------------------------
def _copy_as(src: Path, dst: Path) -> Path:
    tmp = dst.parent / f".{dst.name}.tmp"
    shutil.copytree(src, tmp)
    tmp.rename(dst)  # atomic: the server never sees half a bundle
    return dst


@pytest.mark.slow
def test_bundles_roll_out_by_name_and_version_without_a_restart(bundle, digits_bundle, items, tmp_path):
    root = tmp_path / "bundles"
    root.mkdir()
    server = ServerProcess(root, None, tmp_path, extra=("--reload-interval", "0.5")).start()
    v1, v2 = Codec.open(bundle), Codec.open(digits_bundle)
    p1, p2 = v1.encode(items[:8]), v2.encode(items[:8])
    stop = threading.Event()
    failures: list = []
    try:
        assert health(server.target) == NOT_SERVING  # nothing to decode yet
        (root / "digits").mkdir()
        _copy_as(bundle, root / "digits" / "1")
        wait_until(lambda: health(server.target) == SERVING, 10, "SERVING after the first bundle (polling)")
        ch = grpc.insecure_channel(server.target)
        stub = CloudStub(ch)
        assert stub.Decode(pb.DecodeRequest(codes=to_batch(v1, p1)), timeout=10).bundle_id == v1.bundle_id

        def keep_decoding() -> None:  # v1 by its id, all through the rollout: no call may fail
            while not stop.is_set():
                try:
                    stub.Decode(pb.DecodeRequest(codes=to_batch(v1, p1)), timeout=10)
                except grpc.RpcError as exc:
                    failures.append(exc.code())

        worker = threading.Thread(target=keep_decoding)
        worker.start()
        _copy_as(digits_bundle, root / "digits" / "2")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: len(stub.ModelInfo(pb.ModelInfoRequest(), timeout=5).bundles) == 2, 10, "v2 loaded"
        )
        info = {
            b.bundle_id: (b.name, b.version) for b in stub.ModelInfo(pb.ModelInfoRequest(), timeout=5).bundles
        }
        assert info == {v1.bundle_id: ("digits", 1), v2.bundle_id: ("digits", 2)}
        # "digits" is the newest; "digits@1" is still v1; both decode with the right bundle.
        by_name = pb.DecodeRequest(codes=to_batch(v2, p2))
        by_name.codes.bundle_id = "digits"
        assert stub.Decode(by_name, timeout=10).bundle_id == v2.bundle_id
        pinned = pb.DecodeRequest(codes=to_batch(v1, p1))
        pinned.codes.bundle_id = "digits@1"
        assert stub.Decode(pinned, timeout=10).bundle_id == v1.bundle_id
        stop.set()
        worker.join(60)
        assert not worker.is_alive(), "the load thread did not stop within 60 s"
        # Removing v1 takes it away (after in-flight calls finished with it); "digits" keeps working.
        shutil.rmtree(root / "digits" / "1")
        server.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: len(stub.ModelInfo(pb.ModelInfoRequest(), timeout=5).bundles) == 1, 10, "v1 removed"
        )
        with pytest.raises(grpc.RpcError) as info_err:
            stub.Decode(pinned, timeout=10)
        assert info_err.value.code() == grpc.StatusCode.NOT_FOUND and "digits@2" in info_err.value.details()
        assert stub.Decode(by_name, timeout=10).count == 8
        ch.close()
    finally:
        stop.set()
        server.kill(signal.SIGTERM)
    assert not failures, failures
    assert "Traceback" not in server.log_text()


def test_a_broken_bundle_in_a_rollout_is_skipped_and_the_rest_keeps_serving(bundle, tmp_path):
    from cloud.bundles import BundleRegistry

    root = tmp_path / "b"
    _copy_as(bundle, root / "good")
    registry = BundleRegistry()
    registry.load_dir(root)
    _copy_as(bundle, root / "broken")
    (root / "broken" / "decoder.onnx").write_bytes(b"not onnx")
    report = registry.reload()
    assert report.errors and "broken" in report.errors[0] and not report.added
    assert [lb.name for lb in registry.entries()] == ["good"]


# ---- drain on SIGTERM -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_reports_not_serving_keeps_serving_through_the_drain_then_exits_0(bundle, items, tmp_path):
    server = ServerProcess(bundle, None, tmp_path, extra=("--drain", "2", "--grace", "1")).start()
    codec = Codec.open(bundle)
    req = pb.DecodeRequest(codes=to_batch(codec, codec.encode(items[:4])))
    with grpc.insecure_channel(server.target) as ch:
        stub = CloudStub(ch)
        assert stub.Decode(req, timeout=10).count == 4
        assert server.proc is not None
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: health(server.target) == NOT_SERVING, 5, "NOT_SERVING on SIGTERM")
        assert stub.Decode(req, timeout=10).count == 4  # still answering while a load balancer moves away
        rc = server.proc.wait(timeout=20)
    took = time.monotonic() - t0
    assert rc == 0 and 2 <= took < 2 + 1 + 5, took


# ---- JSON logs and configuration from the environment ----------------------------------------------------------
@pytest.mark.slow
def test_json_logs_one_object_per_rpc_without_tokens_or_payloads(bundle, items, tmp_path):
    token = "tok-secret-5c1e"
    (tmp_path / "tokens").write_text(f"{token}\n")
    server = ServerProcess(
        bundle,
        None,
        tmp_path,
        extra=("--log-format", "json", "--log-level", "INFO", "--auth-token-file", str(tmp_path / "tokens")),
    ).start()
    codec = Codec.open(bundle)
    payloads = codec.encode(items[:3])
    with grpc.insecure_channel(server.target) as ch:
        CloudStub(ch).Decode(
            pb.DecodeRequest(codes=to_batch(codec, payloads)), metadata=[("authorization", f"Bearer {token}")]
        )
        with pytest.raises(grpc.RpcError):
            CloudStub(ch).Decode(pb.DecodeRequest(codes=to_batch(codec, payloads)))
    server.kill(signal.SIGTERM)
    text = server.log_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    rpcs = [r for r in records if r.get("rpc") == "/aecodec.v2.Decoding/Decode"]
    assert [r["code"] for r in rpcs] == ["OK", "UNAUTHENTICATED"] and all(
        "ms" in r and "peer" in r for r in rpcs
    )
    assert all(line.startswith("{") for line in text.splitlines() if line.strip()), text[-500:]
    assert token not in text and payloads[0].hex()[:16] not in text


@pytest.mark.slow
def test_every_flag_can_come_from_the_environment_and_secrets_from_files(bundle, tmp_path):
    secret = tmp_path / "store-url"
    secret.write_text(f"{tmp_path / 'from-env.db'}\n")
    port_file = tmp_path / "port"
    env = {
        **child_env(),
        "AECODEC_BUNDLES": str(bundle),
        "AECODEC_ADDRESS": "127.0.0.1:0",
        "AECODEC_STORE_FILE": str(secret),
        "AECODEC_PORT_FILE": str(port_file),
        "AECODEC_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud.server"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: port_file.exists() or proc.poll() is not None, 30, "the server to start")
        assert proc.poll() is None, proc.communicate()[1]
        assert (tmp_path / "from-env.db").exists()  # the store came from the secret file
        assert health(f"127.0.0.1:{port_file.read_text()}", "aecodec.v2.Storage") == SERVING
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run(
        [sys.executable, "-m", "cloud.server"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**child_env(), "AECODEC_BUNDLES": str(bundle), "AECODEC_DECODE_WORKERS": "many"},
    )
    assert bad.returncode == 2 and "AECODEC_DECODE_WORKERS" in bad.stderr and "Traceback" not in bad.stderr
    # The command line wins over the environment.
    from cloud.server import parse_args

    os.environ["AECODEC_GRACE"] = "9"
    try:
        assert (
            parse_args(["--bundles", "b"]).grace == 9.0
            and parse_args(["--bundles", "b", "--grace", "1"]).grace == 1
        )
    finally:
        del os.environ["AECODEC_GRACE"]


# ---- field quality monitoring ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_audited_items_give_per_bundle_quality_figures(digits_bundle, items, tmp_path):
    from edge.ingest import IngestConfig, run
    from tests.helpers.prometheus import scrape, val

    running = build_server(
        digits_bundle, "127.0.0.1:0", store=str(tmp_path / "s.db"), metrics_address="127.0.0.1:0"
    )
    codec = Codec.open(digits_bundle)
    x = datasets.load("digits", "test").x[:200]
    try:
        report = run(
            IngestConfig(
                bundle=digits_bundle,
                server=f"127.0.0.1:{running.port}",
                spool=tmp_path / "spool.db",
                source_id="cam",
                audit_fraction=0.25,
            ),
            items=x,
        )
        assert report.acknowledged == 200 and 20 <= report.audited <= 80  # about a quarter, chosen by item id
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            (info,) = CloudStub(ch).ModelInfo(pb.ModelInfoRequest(), timeout=10).bundles
        samples = scrape(running.metrics_port)
    finally:
        running.stop(grace=1.0)
    from edge.producer import audited

    picked = [i for i in range(200) if audited(f"cam#{i}", 0.25)]
    assert info.audit.items == report.audited == len(picked)
    mse = codec.squared_error(x[picked], codec.decode(codec.encode(x[picked])))
    assert info.audit.mean_mse == pytest.approx(float(mse.mean()), rel=1e-6)
    assert info.audit.psnr == pytest.approx(-10 * np.log10(mse.mean()), rel=1e-6)
    assert val(samples, "aecodec_audit_items_total", bundle=codec.bundle_id) == len(picked)
    assert val(samples, "aecodec_audit_squared_error_total", bundle=codec.bundle_id) == pytest.approx(
        mse.sum(), rel=1e-6
    )


@pytest.mark.slow
def test_two_processes_on_one_port_both_answer_and_every_call_is_decoded(bundle, items, tmp_path):
    """The way to use more cores than one event loop (docs/deployment.md, Cores): processes sharing a port with
    --reuse-port; the kernel spreads connections over them, and each decodes exactly what it is sent."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        extra = ("--reuse-port", "--log-format", "json", "--log-level", "INFO")
        servers.append(ServerProcess(bundle, None, tmp_path / name, port=port, extra=extra).start())
    codec = Codec.open(bundle)
    payloads = codec.encode(items[:16])
    want = codec.decode(payloads)
    try:
        for k in range(16):  # 16 connections (no shared subchannel): all on one process has odds 2^-15
            opts = [("grpc.use_local_subchannel_pool", 1)]
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
                reply = CloudStub(ch).Decode(
                    pb.DecodeRequest(codes=to_batch(codec, payloads[k : k + 1])), timeout=30
                )
                np.testing.assert_array_equal(
                    from_tensor(reply.reconstructions, "reconstructions"), want[k : k + 1]
                )
    finally:
        for s in servers:
            s.kill(signal.SIGTERM)
    counts = []
    for s in servers:
        records = [json.loads(line) for line in s.log_text().splitlines() if line.startswith("{")]
        counts.append(
            sum(r.get("rpc") == "/aecodec.v2.Decoding/Decode" and r["code"] == "OK" for r in records)
        )
    assert sum(counts) == 16 and min(counts) >= 1, counts


def test_the_in_flight_budget_loses_no_bytes_to_cancelled_callers_and_serves_waiters_in_order():
    """cloud/limits.py InFlight: a caller granted its bytes but cancelled before it ran gives them back; a caller
    cancelled while waiting lets those behind it in; waiters are served in order. A lost byte would shrink the
    budget for every later request; a waiter jumped by smaller requests could wait forever."""
    from contextlib import suppress

    from cloud.limits import InFlight

    async def go() -> dict:
        budget, seen = InFlight(100), {}
        first = await budget.acquire(60)
        granted = asyncio.ensure_future(budget.acquire(60))  # 60 + 60 > 100: waits
        await asyncio.sleep(0)
        budget.release(first)  # grants the waiter its 60 ...
        granted.cancel()  # ... but it is cancelled before it runs: the 60 come back
        with suppress(asyncio.CancelledError):
            await granted
        seen["after a granted caller was cancelled"] = budget.used

        first = await budget.acquire(60)
        big = asyncio.ensure_future(budget.acquire(60))  # waits
        small = asyncio.ensure_future(budget.acquire(30))  # would fit, but waits its turn behind big
        await asyncio.sleep(0)
        seen["small jumped the queue"] = small.done()
        big.cancel()  # cancelled while waiting: small goes now
        with suppress(asyncio.CancelledError):
            await big
        await asyncio.sleep(0)
        seen["small granted after big left"] = small.done()
        budget.release(first)
        budget.release(await small)
        seen["at the end"] = budget.used

        async with budget.hold(500):  # more than the capacity: takes all of it, never waits forever
            seen["a request over the capacity holds"] = budget.used
        seen["after hold"] = budget.used
        return seen

    async def bounded() -> dict:  # a lost byte makes a later acquire wait forever: fail, do not hang
        return await asyncio.wait_for(go(), 10)

    assert asyncio.run(bounded()) == {
        "after a granted caller was cancelled": 0,
        "small jumped the queue": False,
        "small granted after big left": True,
        "at the end": 0,
        "a request over the capacity holds": 100,
        "after hold": 0,
    }


def test_the_server_process_serves_large_requests_without_faulting_in_fresh_pages(bundle, items, tmp_path):
    """cloud/server.py main() tunes malloc (cloud/allocator.py): a large request's arrays reuse the previous
    request's pages. Before, every request's reconstructions landed on fresh pages (2.6 faults per 28x28 item,
    0.7 ms of a 256-item request's 12 ms). The same server with an operator's MALLOC_* variable is untuned."""
    codec = Codec.open(bundle)
    payloads = codec.encode(np.resize(items, (2048, *items.shape[1:])))  # 512 KiB of float32 reconstructions
    req = pb.DecodeRequest(
        codes=to_batch(codec, payloads), reconstruction_format=pb.RECONSTRUCTION_FORMAT_UINT8
    )
    per_request = {}
    # Untuned: glibc's default threshold, held fixed (glibc raises it by itself after freeing a large mapped block,
    # which the server's start-up may or may not do: the decoder graphs are measured at load).
    for name, env in (("tuned", {}), ("untuned", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        (tmp_path / name).mkdir()
        server = ServerProcess(bundle, None, tmp_path / name, env=env).start()
        try:
            with grpc.insecure_channel(server.target) as ch:
                stub = CloudStub(ch)
                for _ in range(5):  # warm up: first requests grow the heaps
                    stub.Decode(req, timeout=30)
                before = server.page_faults()
                for _ in range(20):
                    assert stub.Decode(req, timeout=30).count == 2048
                per_request[name] = (server.page_faults() - before) / 20
        finally:
            server.kill(signal.SIGTERM)
    assert per_request["untuned"] > 200, per_request  # the reconstructions alone are 128 pages
    assert per_request["tuned"] < per_request["untuned"] / 5, per_request
