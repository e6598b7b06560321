"""Hostile clients and load against one real server process; writes docs/hostile.md.

    python -m bench.hostile                          # the committed run (about 5 minutes)
    python -m bench.hostile --fuzz 2000 --garbage 10000 --load-seconds 10 --out /tmp/h.md   # a quick look

Four phases against `python -m cloud.server` (a child process with a SQLite store and device-bound tokens):
1. fuzz: malformed requests for every method from bench/hostile_requests.py, with and without a token:
   requests per status code (INTERNAL and UNKNOWN must be zero) and the server's RSS before and after;
2. garbage: random bytes to every method after a warm-up: RSS must stay flat (within 10 %);
3. amplification: 8 concurrent requests at the decode budget (the worst a client may ask): peak RSS;
4. load: 64 DecodeStream clients and 64 Decode clients at once: errors, p50/p99 latency, RSS.
Then issue 22's findings 1-5, against a second server holding the committed map bundle (zoo/) too:
5. map bombs: a few bytes claiming 2640x2640 (and 96 x 256x256) items: status and time to answer;
6. worst case of every kind: 8 concurrent requests at the decode budget per bundle kind: peak RSS, and the RSS
   the idle server keeps after them;
7. lockout: 1,000 idle Health/Watch streams without a token: a token holder's ModelInfo and a health check;
8. a DecodeStream client that never reads: how long another client's stream takes beside it, and beside a reader;
9. Ingest of bundle references the server does not hold: statuses (nothing acknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.hostile_requests import BAD, KINDS, Call, Target, hostile_call, send
from bench.server_process import ServerProcess
from cloud.limits import PEAK_BOUND_MIB

TOKEN = "tok-bench-3f9a"
HANDLED = "aecodec_grpc_server_handled_total"
DEVICE = "fuzz-device"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.hostile", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--bundle", type=Path, default=None, help="bundle to serve (default: train a small one)")
    p.add_argument("--fuzz", type=int, default=12_000, help="malformed requests (phase 1)")
    p.add_argument("--garbage", type=int, default=100_000, help="garbage requests after warm-up (phase 2)")
    p.add_argument("--warmup", type=int, default=5_000, help="garbage requests before the RSS baseline")
    p.add_argument("--load-seconds", type=float, default=60.0, help="duration of the load phase (phase 4)")
    p.add_argument("--clients", type=int, default=64, help="clients of each kind in the load phase")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight in phases 1-2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("docs/hostile.md"))
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--skip-round2", action="store_true", help="leave out phases 5-9 (issue 22's findings)")
    p.add_argument("--note", default="", help="what else ran on the machine, for the report")
    return p.parse_args(argv)


def train_bundle(work: Path) -> Path:
    """A Fashion-MNIST dense bundle with entropy-coded codes (empty payloads are valid: the amplification case)."""
    from training.export import export_bundle
    from training.train import TrainConfig, save_checkpoint, train

    cfg = TrainConfig(
        model="dense", model_args={"code_dim": 16, "hidden": [64]}, epochs=1, limit=3000, threads=1
    )
    model, record = train(cfg, progress=None)
    ckpt = save_checkpoint(work / "dense.pt", model, cfg, record)
    bundle = work / "bundle"
    export_bundle(ckpt, bundle, quant="affine6", entropy=True, fit_items=2000, test_limit=200)
    return bundle


def run_calls(target: str, calls, n: int, concurrency: int) -> Counter:
    """n calls from the iterator over `concurrency` threads of grpc's synchronous client.

    The synchronous client, not grpc.aio's: when a server ends a request stream early (a refused token, an
    unparseable first message) the asyncio client reports its own failed write as INTERNAL ("Internal error
    from Core") instead of the status the server sent, which would count client artefacts as server errors.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    tally: Counter = Counter()
    lock = threading.Lock()
    source = iter(calls)
    channels = [grpc.insecure_channel(target) for _ in range(4)]

    def worker(k: int) -> None:
        while True:
            with lock:
                if sum(tally.values()) + _taken[0] >= n:
                    return
                _taken[0] += 1
                call = next(source)
            status = send(channels[k % 4], call)
            with lock:
                _taken[0] -= 1
                tally[status] += 1

    _taken = [0]
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    for ch in channels:
        ch.close()
    return tally


def garbage_calls(rnd: random.Random):
    methods = list(KINDS)
    while True:
        method = rnd.choice(methods)
        md = [("authorization", f"Bearer {TOKEN}")] if rnd.random() < 0.5 else None
        yield Call(method, KINDS[method], [rnd.randbytes(rnd.choice((1, 3, 16, 64)))], md)


def budget_items(codec, payload: bytes = b"", limits=None, reply_itemsize: int = 4) -> int:
    """The most copies of `payload` (default: an empty entropy-coded item) one request may carry within every
    budget of `limits` (default: the server's defaults), `codec` priced as the server prices it (see ``priced``)."""
    from cloud.limits import Limits, OverBudget

    lim = limits or Limits()
    lo, hi = 0, lim.max_items
    while lo < hi:  # the largest count the budget admits (what a request may ask for)
        mid = (lo + hi + 1) // 2
        try:
            lim.check(codec, [payload] * mid, reply_itemsize=reply_itemsize)
            lo = mid
        except OverBudget:
            hi = mid - 1
    return lo


def priced(bundle: Path):
    """A bundle's codec with its decoder graph measured, as the server holds it, that can also encode."""
    from cloud.bundles import priced_codec

    return priced_codec(bundle, 1, need=("encoder", "decoder"))


def claim(h: int, w: int, codec) -> bytes:
    """A map payload claiming an h x w item and holding nothing else, in the bundle's own size format (a varint
    header, or the range coder's in-stream size): a few bytes."""
    head, enc = codec.payload.begin(h, w)
    return head + enc.finish()


def largest_side(codec, budget: int) -> int:
    """The largest square item one request may decode within `budget` (what the server admits)."""
    from cloud.limits import Limits, OverBudget

    lim = Limits(max_decode_bytes=budget)
    lo, hi = 4, 4096
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            lim.check(codec, [claim(mid, mid, codec)])
            lo = mid
        except OverBudget:
            hi = mid - 1
    return lo


async def amplification(target: str, codec, concurrent: int = 8) -> Counter:
    """`concurrent` requests at the edge of the decode budget at once (empty entropy-coded payloads)."""
    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

    n = budget_items(codec)
    req = pb.DecodeRequest(
        codes=pb.CodeBatch(bundle_id=codec.bundle_id, count=n, format=codec.format, sizes=[0] * n),
        reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32,
    )
    md = [("authorization", f"Bearer {TOKEN}")]
    opts = [("grpc.max_receive_message_length", 64 << 20)]
    return await _concurrent(target, req, md, opts, concurrent)


async def load(target: str, codec, payloads: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` DecodeStream clients (one request, await reply, repeat) and `clients` Decode clients."""
    import grpc

    from latent_codec.container import to_batch
    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    req = pb.DecodeRequest(
        codes=to_batch(codec, payloads), reconstruction_format=pb.RECONSTRUCTION_FORMAT_UINT8
    )
    md = [("authorization", f"Bearer {TOKEN}")]
    lat: dict[str, list[float]] = {"Decode": [], "DecodeStream": []}
    errors: Counter = Counter()
    stop_at = time.monotonic() + seconds
    channels = [grpc.aio.insecure_channel(target) for _ in range(8)]

    async def unary(i: int) -> None:
        stub = pb_grpc.DecodingStub(channels[i % 8])
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                await stub.Decode(req, metadata=md, timeout=60)
                lat["Decode"].append(time.perf_counter() - t0)
            except grpc.aio.AioRpcError as exc:
                errors[f"Decode {exc.code().name}"] += 1

    async def streaming(i: int) -> None:
        stub = pb_grpc.DecodingStub(channels[i % 8])
        queue: asyncio.Queue = asyncio.Queue()

        async def requests():
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        call = stub.DecodeStream(requests(), metadata=md, timeout=seconds + 120)
        try:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                await queue.put(req)
                await call.read()
                lat["DecodeStream"].append(time.perf_counter() - t0)
            await queue.put(None)
            await call.wait_for_connection()
            assert await call.read() == grpc.aio.EOF  # the server ends the stream after our last request
        except grpc.aio.AioRpcError as exc:
            errors[f"DecodeStream {exc.code().name}"] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(unary(i) for i in range(clients)), *(streaming(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    for ch in channels:
        await ch.close()
    out: dict = {"errors": dict(errors), "seconds": wall, "items_per_request": len(payloads)}
    for kind, values in lat.items():
        v = np.array(values) * 1e3
        out[kind] = {
            "calls": len(v),
            "p50_ms": float(np.percentile(v, 50)) if len(v) else float("nan"),
            "p99_ms": float(np.percentile(v, 99)) if len(v) else float("nan"),
            "items_per_s": len(v) * len(payloads) / wall,
        }
    return out


ZOO_MAP = Path(__file__).resolve().parents[1] / "zoo" / "spatial-lambda-0.0064"


def round_two(work: Path, flat_bundle: Path) -> dict:
    """Issue 22's findings 1-5 against one server holding a flat and the zoo's map bundle (phases 5-9)."""
    import grpc

    from cloud.limits import Limits
    from latent_codec.container import to_batch
    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    root = work / "round2-bundles"
    root.mkdir(exist_ok=True)
    for b in (flat_bundle, ZOO_MAP):
        if not (root / b.name).exists():
            (root / b.name).symlink_to(b.resolve(), target_is_directory=True)
    tokens = work / "tokens2.txt"
    tokens.write_text(f"{TOKEN} devices={DEVICE}\n")
    server = ServerProcess(
        root,
        str(work / "store2.db"),
        work,
        metrics=True,
        extra=("--auth-token-file", str(tokens), "--write-timeout", "2"),
    ).start()
    md = [("authorization", f"Bearer {TOKEN}")]
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    map_codec = priced(ZOO_MAP)
    flat = priced(flat_bundle)
    out: dict = {}

    try:
        with grpc.insecure_channel(server.target, options=opts) as ch:
            stub = pb_grpc.DecodingStub(ch)
            bombs = {}
            for name, payloads in (
                ("1 x 2640x2640", [claim(2640, 2640, map_codec)]),
                ("1 x 32768x212", [claim(32768, 212, map_codec)]),
                ("96 x 256x256", [claim(256, 256, map_codec)] * 96),
            ):
                req = pb.DecodeRequest(codes=to_batch(map_codec, payloads))
                t0 = time.perf_counter()
                try:
                    stub.Decode(req, metadata=md, timeout=60)
                    status = "OK"
                except grpc.RpcError as exc:
                    status = exc.code().name
                bombs[name] = {
                    "bytes": req.ByteSize(),
                    "status": status,
                    "ms": (time.perf_counter() - t0) * 1e3,
                }
            out["bombs"] = bombs
            # 9. bundle references the server does not hold
            payload = flat.encode(np.zeros((1, *flat.input.shape), np.uint8))[0]
            refs = {}
            for ref in ("conv@2", "conv@0", "nope-000000000000", "../map", "@1", "conv@"):
                req = pb.IngestRequest(
                    device_id=DEVICE, items=[pb.IngestItem(item_id="x", bundle_id=ref, payload=payload)]
                )
                try:
                    list(pb_grpc.StorageStub(ch).Ingest(iter([req]), metadata=md, timeout=30))
                    refs[ref] = "OK (acknowledged)"
                except grpc.RpcError as exc:
                    refs[ref] = exc.code().name
            out["refs"] = refs
        # 6. worst case per kind
        kinds = {}
        lo = largest_side(map_codec, Limits().max_decode_bytes)
        x = (np.random.default_rng(1).random((1, 1, lo, lo)) * 255).astype(np.uint8)
        map_req = pb.DecodeRequest(
            codes=to_batch(map_codec, map_codec.encode(x)),
            reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32,
        )
        n = budget_items(flat)
        flat_req = pb.DecodeRequest(
            codes=pb.CodeBatch(bundle_id=flat.bundle_id, count=n, format=flat.format, sizes=[0] * n),
            reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32,
        )
        for kind, req, what in (("map", map_req, f"1 item of {lo}x{lo}"), ("flat", flat_req, f"{n:,} items")):
            idle, hwm0 = server.rss_kib(), server.rss_kib("VmHWM")
            tally = asyncio.run(_concurrent(server.target, req, md, opts))
            hwm1 = server.rss_kib("VmHWM")
            time.sleep(2)
            kinds[kind] = {
                "what": what,
                "status": dict(tally),
                "peak_mib": (hwm1 - hwm0) / 1024,
                "held_mib": (server.rss_kib() - idle) / 1024,
            }
        out["worst"] = kinds
        out["lockout"] = asyncio.run(_lockout(server.target, md))
        small = pb.DecodeRequest(
            codes=pb.CodeBatch(bundle_id=flat.bundle_id, count=4, format=flat.format, sizes=[0] * 4)
        )
        out["non_reader"] = asyncio.run(non_reader_against_controls(server, md, opts, flat_req, small))
    finally:
        out["exit_code"] = server.kill(signal.SIGTERM)
    return out


async def _concurrent(target: str, req, md, opts, n: int = 8) -> Counter:
    import grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    tally: Counter = Counter()
    async with grpc.aio.insecure_channel(target, options=opts) as ch:
        stub = pb_grpc.DecodingStub(ch)

        async def one() -> None:
            try:
                await stub.Decode(req, metadata=md, timeout=300)
                tally["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                tally[exc.code().name] += 1

        await asyncio.gather(*(one() for _ in range(n)))
    return tally


async def _lockout(target: str, md, streams: int = 1000) -> dict:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    channels = [grpc.aio.insecure_channel(target) for _ in range(10)]
    watches = [
        health_pb2_grpc.HealthStub(channels[i % 10]).Watch(health_pb2.HealthCheckRequest(), timeout=120)
        for i in range(streams)
    ]
    refused = Counter()

    async def first(w) -> None:
        try:
            await w.read()
            refused["open"] += 1
        except grpc.aio.AioRpcError as exc:
            refused[exc.code().name] += 1

    await asyncio.gather(*(first(w) for w in watches))
    out: dict = {"streams": streams, "watch": dict(refused)}
    async with grpc.aio.insecure_channel(target) as ch:
        for name, call in (
            (
                "ModelInfo (token)",
                lambda: pb_grpc.DecodingStub(ch).ModelInfo(pb.ModelInfoRequest(), metadata=md, timeout=5),
            ),
            (
                "Health/Check",
                lambda: health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5),
            ),
        ):
            t0 = time.perf_counter()
            try:
                await call()
                status = "OK"
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
            out[name] = {"status": status, "ms": (time.perf_counter() - t0) * 1e3}
    for w in watches:
        w.cancel()
    for c in channels:
        await c.close()
    return out


async def beside_a_big_stream(server: ServerProcess, md, opts, big, small, reads: bool) -> tuple[float, str]:
    """Another client's 3-request DecodeStream of `small`, started once the server has decoded the first of 4 `big`
    requests on a stream whose client reads its replies (reads=True) or never does (a server with metrics).
    -> (seconds the other client's stream took, how the big stream ended). Side by side, the two say what a
    client that does not read costs the others, whatever the machine's load: both wait for what was admitted
    before them to decode (the stream budget is shared); a non-reader may add at most the write deadline. The
    non-reader's status is the one the server's metrics count: gRPC cannot always send it while the unsent
    reply is queued (cloud/interceptors/wrapping.py, end_unread)."""
    import grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    first = await asyncio.to_thread(server.decoded_items) + big.codes.count
    ended = {"grpc_method": "DecodeStream", "grpc_code": "DEADLINE_EXCEEDED"}
    ended_before = await asyncio.to_thread(server.metric, HANDLED, **ended)
    ch = grpc.aio.insecure_channel(server.target, options=opts)
    stream = pb_grpc.DecodingStub(ch).DecodeStream(metadata=md, timeout=180)

    async def read_all() -> str:
        try:
            while await stream.read() != grpc.aio.EOF:
                pass
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    reader = asyncio.ensure_future(read_all()) if reads else None
    try:  # the server may end a non-reader's stream (write deadline) before its last write: expected
        for _ in range(4):
            await stream.write(big)
        if reads:
            await stream.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass
    deadline = time.monotonic() + 120
    while await asyncio.to_thread(server.decoded_items) < first:  # the big stream's first reply is built
        if time.monotonic() > deadline:
            raise RuntimeError("the server decoded nothing of the big stream within 120 s")
        await asyncio.sleep(0.05)
    async with grpc.aio.insecure_channel(server.target, options=opts) as other:
        t0 = time.perf_counter()
        call = pb_grpc.DecodingStub(other).DecodeStream(iter([small] * 3), metadata=md, timeout=60)
        counts = [r.count async for r in call]
        took = time.perf_counter() - t0
    if counts != [small.codes.count] * 3:
        raise RuntimeError(f"the other client got replies of {counts} items")
    if reader is not None:
        status = await reader
    else:  # how the server ended the non-reader's call (its metrics: gRPC may not get the status out to it)
        status = "not ended within 60 s"
        for _ in range(1200):
            if await asyncio.to_thread(server.metric, HANDLED, **ended) > ended_before:
                status = "DEADLINE_EXCEEDED"
                break
            await asyncio.sleep(0.05)
    stream.cancel()
    await ch.close()
    return took, status


async def non_reader_against_controls(server: ServerProcess, md, opts, big, small) -> dict:
    """The other client's delay beside a reader, beside a non-reader, and beside a reader again."""
    control1, ok1 = await beside_a_big_stream(server, md, opts, big, small, reads=True)
    took, status = await beside_a_big_stream(server, md, opts, big, small, reads=False)
    control2, ok2 = await beside_a_big_stream(server, md, opts, big, small, reads=True)
    return {
        "other_s": took,
        "hog_status": status,
        "control_s": [control1, control2],
        "control_status": [ok1, ok2],
    }


def _load(avg) -> str:
    return " / ".join(f"{v:.1f}" for v in avg)


def _status_rows(status: dict) -> list[str]:
    return [f"| {k} | {v:,} |" for k, v in sorted(status.items(), key=lambda kv: -kv[1])]


def write_report(path: Path, argv: list[str], r: dict) -> None:
    cmd = "python -m bench.hostile" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    mib = 1 / 1024
    fuzz, garbage, amp, ld = r["fuzz"], r["garbage"], r["amplification"], r["load"]
    lines = [
        "# Hostile clients and load against one server",
        "",
        f"Generated by `{cmd}` on {r['date']} (commit {r['commit']}) on 2 shared cores; do not edit by hand.",
        f"The machine is shared: its load average (1, 5, 15 min) was {_load(r['load_start'])} at the start and "
        f"{_load(r['load_end'])} at the end of the run (2 cores).",
        *([r["note"]] if r.get("note") else []),
        "The server is a real `python -m cloud.server` process with a SQLite store and a device-bound token; its RSS",
        "is read from /proc. The generator is bench/hostile_requests.py (tests/test_fuzz.py runs it under hypothesis).",
        "",
        f"## 1. Fuzz: {fuzz['requests']:,} malformed requests for every method, with and without a token",
        "",
        "| status | requests |",
        "|---|---:|",
        *_status_rows(fuzz["status"]),
        "",
        f"INTERNAL or UNKNOWN: **{fuzz['bad']}**. Server RSS {fuzz['rss_start_kib'] * mib:.0f} MiB before, "
        f"{fuzz['rss_end_kib'] * mib:.0f} MiB after ({fuzz['seconds']:.0f} s, "
        f"{fuzz['requests'] / fuzz['seconds']:,.0f} requests/s).",
        "",
        f"## 2. Garbage: {garbage['requests']:,} requests of random bytes after {garbage['warmup']:,} of warm-up",
        "",
        "| status | requests |",
        "|---|---:|",
        *_status_rows(garbage["status"]),
        "",
        f"RSS after the warm-up {garbage['rss_start_kib'] * mib:.1f} MiB, after the run "
        f"{garbage['rss_end_kib'] * mib:.1f} MiB: **{garbage['growth_pct']:+.1f} %** (required: within 10 %); "
        f"{garbage['seconds']:.0f} s.",
        "",
        "## 3. Amplification: 8 concurrent requests at the decode budget",
        "",
        f"Each asks for {amp['items']:,} empty entropy-coded items of {amp['shape']} (a float32 reply of "
        f"{amp['reply_mib']:.1f} MiB, the most one request may decode to). Statuses: {amp['status']}. Server peak "
        f"RSS (VmHWM) {amp['hwm_before_kib'] * mib:.0f} MiB before, {amp['hwm_after_kib'] * mib:.0f} MiB after: "
        f"**+{(amp['hwm_after_kib'] - amp['hwm_before_kib']) * mib:.0f} MiB** (docs/deployment.md states a peak "
        f"under +{PEAK_BOUND_MIB} MiB). A request one item larger is RESOURCE_EXHAUSTED before anything is decoded.",
        "",
        f"## 4. Load: {ld['clients']} DecodeStream and {ld['clients']} Decode clients for {ld['seconds']:.0f} s "
        f"({ld['items_per_request']} items per request)",
        "",
        "| call | calls | p50 (ms) | p99 (ms) | items/s |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {k} | {ld[k]['calls']:,} | {ld[k]['p50_ms']:.1f} | {ld[k]['p99_ms']:.1f} | {ld[k]['items_per_s']:,.0f} |"
            for k in ("Decode", "DecodeStream")
        ],
        "",
        f"Errors: **{sum(ld['errors'].values())}** {ld['errors'] or ''}. Server RSS {ld['rss_start_kib'] * mib:.0f} MiB "
        f"at the start, {ld['rss_end_kib'] * mib:.0f} MiB at the end. Latency is each client's wall time per call, "
        "with 128 clients and the server sharing 2 cores.",
        "",
        f"The server exited {r['exit_code']} on SIGTERM after all phases.",
        "",
    ]
    r2 = r.get("round2")
    if r2:
        lines += [
            "## 5-9. Issue 22: a second server with the flat bundle and zoo/spatial-lambda-0.0064 (map+hyperprior)",
            "",
            "Started with `--write-timeout 2` and the defaults otherwise (2 decode threads, `--max-decode-mib 64`).",
            "",
            "**5. Map bombs** (a payload header claiming a huge item; before: OK after 37 s, +3,845 MiB):",
            "",
            "| request | bytes | status | answered in (ms) |",
            "|---|---:|---|---:|",
            *[f"| {k} | {v['bytes']} | {v['status']} | {v['ms']:.0f} |" for k, v in r2["bombs"].items()],
            "",
            "**6. 8 concurrent worst-case requests of each kind** (the largest request the budget admits, float32 "
            f"replies; docs/deployment.md states a peak under +{PEAK_BOUND_MIB} MiB):",
            "",
            "| kind | request | statuses | peak RSS | RSS kept 2 s after |",
            "|---|---|---|---:|---:|",
            *[
                f"| {k} | {v['what']} | {v['status']} | {v['peak_mib']:+.0f} MiB | {v['held_mib']:+.0f} MiB |"
                for k, v in r2["worst"].items()
            ],
            "",
            f"**7. Lockout**: {r2['lockout']['streams']:,} idle Health/Watch streams without a token "
            f"({r2['lockout']['watch']}); then "
            + ", ".join(
                f"{k}: {v['status']} in {v['ms']:.0f} ms"
                for k, v in r2["lockout"].items()
                if isinstance(v, dict) and "ms" in v
            )
            + " (before: RESOURCE_EXHAUSTED for everyone past 256 streams).",
            "",
            f"**8. A DecodeStream client that never reads** (4 requests at the budget; another client's 3-request "
            f"stream starts once the first is decoded): the other stream took {r2['non_reader']['other_s']:.2f} s "
            f"beside the non-reader, {' and '.join(f'{c:.2f}' for c in r2['non_reader']['control_s'])} s beside a "
            f"client sending the same and reading (the write deadline is 2 s); the non-reader's stream ended "
            f"{r2['non_reader']['hog_status']} (before: others waited for their 10 s deadline).",
            "",
            "**9. Ingest of bundle references the server does not hold** (before: all acknowledged and stored "
            "verbatim): " + ", ".join(f"`{k}` {v}" for k, v in r2["refs"].items()) + ".",
            "",
            f"The second server exited {r2['exit_code']} on SIGTERM.",
            "",
        ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from latent_codec import datasets

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="aecodec-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or train_bundle(work)
    codec = priced(bundle)
    spec = "fashion-mnist" if list(codec.input.shape) == [1, 28, 28] else "digits"
    payloads = codec.encode(datasets.load(spec, "test").x[:64])
    target = Target(
        codec.bundle_id, codec.format, codec.item_bytes, payloads, list(codec.input.shape), TOKEN, [DEVICE]
    )
    tokens = work / "tokens.txt"
    tokens.write_text(f"{TOKEN} devices={DEVICE}\n")
    server = ServerProcess(
        bundle, str(work / "store.db"), work, extra=("--auth-token-file", str(tokens))
    ).start()
    rnd = random.Random(args.seed)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    r: dict = {"date": time.strftime("%Y-%m-%d"), "commit": git.stdout.strip(), "load_start": os.getloadavg()}
    try:

        def fuzz_calls():
            while True:
                yield hostile_call(rnd, target)

        rss0, t0 = server.rss_kib(), time.perf_counter()
        tally = run_calls(server.target, fuzz_calls(), args.fuzz, args.concurrency)
        r["fuzz"] = {
            "requests": args.fuzz,
            "status": dict(tally),
            "bad": sum(tally[b] for b in BAD),
            "rss_start_kib": rss0,
            "rss_end_kib": server.rss_kib(),
            "seconds": time.perf_counter() - t0,
        }
        print(f"fuzz: {dict(tally)}", file=sys.stderr)

        garbage = garbage_calls(random.Random(args.seed + 1))
        run_calls(server.target, garbage, args.warmup, args.concurrency)
        rss0, t0 = server.rss_kib(), time.perf_counter()
        tally = run_calls(server.target, garbage, args.garbage, args.concurrency)
        rss1 = server.rss_kib()
        r["garbage"] = {
            "requests": args.garbage,
            "warmup": args.warmup,
            "status": dict(tally),
            "rss_start_kib": rss0,
            "rss_end_kib": rss1,
            "growth_pct": 100 * (rss1 - rss0) / rss0,
            "seconds": time.perf_counter() - t0,
        }
        print(f"garbage: {dict(tally)}, RSS {rss0} -> {rss1} KiB", file=sys.stderr)

        hwm0 = server.rss_kib("VmHWM")
        n = budget_items(codec)
        tally = asyncio.run(amplification(server.target, codec))
        r["amplification"] = {
            "items": n,
            "shape": "x".join(map(str, codec.input.shape)),
            "reply_mib": n * int(np.prod(codec.input.shape)) * 4 / 2**20,
            "status": dict(tally),
            "hwm_before_kib": hwm0,
            "hwm_after_kib": server.rss_kib("VmHWM"),
        }
        print(f"amplification: {dict(tally)}", file=sys.stderr)

        rss0 = server.rss_kib()
        out = asyncio.run(load(server.target, codec, payloads[:16], args.clients, args.load_seconds))
        out.update(clients=args.clients, rss_start_kib=rss0, rss_end_kib=server.rss_kib())
        r["load"] = out
        print(f"load: {out}", file=sys.stderr)
    finally:
        r["exit_code"] = server.kill(signal.SIGTERM)
    if not args.skip_round2:
        r["round2"] = round_two(work, bundle)
        print(f"round two: {r['round2']}", file=sys.stderr)
    r["note"] = args.note
    r["load_end"] = os.getloadavg()
    write_report(args.out, list(argv if argv is not None else sys.argv[1:]), r)
    print(f"wrote {args.out}")
    return 0 if r["fuzz"]["bad"] == 0 and not r["load"]["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
