"""Hostile clients and load against one real server process; writes docs/hostile.md.

    python -m bench.hostile                          # the committed run (about 5 minutes)
    python -m bench.hostile --fuzz 2000 --garbage 10000 --load-seconds 10 --out /tmp/h.md   # a quick look

Four phases against `python -m cloud.server` (a child process with a SQLite store and device-bound tokens):
1. fuzz: malformed requests for every method from bench/hostile_requests.py, with and without a token:
   requests per status code (INTERNAL and UNKNOWN must be zero) and the server's RSS before and after;
2. garbage: random bytes to every method after a warm-up: RSS must stay flat (within 10 %);
3. amplification: 8 concurrent requests at the decode budget (the worst a client may ask): peak RSS;
4. load: 64 DecodeStream clients and 64 Decode clients at once: errors, p50/p99 latency, RSS.
"""

from __future__ import annotations

import argparse
import asyncio
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

TOKEN = "tok-bench-3f9a"
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


def budget_items(codec) -> int:
    from cloud.limits import Limits

    return Limits().max_decode_bytes // (int(np.prod(codec.input.shape)) * 4)


async def amplification(target: str, codec, concurrent: int = 8) -> Counter:
    """`concurrent` requests at the edge of the decode budget at once (empty entropy-coded payloads)."""
    import grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    n = budget_items(codec)
    req = pb.DecodeRequest(
        codes=pb.CodeBatch(bundle_id=codec.bundle_id, count=n, format=codec.format, sizes=[0] * n),
        reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32,
    )
    md = [("authorization", f"Bearer {TOKEN}")]
    tally: Counter = Counter()
    opts = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=opts) as ch:
        stub = pb_grpc.DecodingStub(ch)

        async def one() -> None:
            try:
                await stub.Decode(req, metadata=md, timeout=300)
                tally["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                tally[exc.code().name] += 1

        await asyncio.gather(*(one() for _ in range(concurrent)))
    return tally


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
        f"**+{(amp['hwm_after_kib'] - amp['hwm_before_kib']) * mib:.0f} MiB** (docs/deployment.md states the "
        "budget). A request one item larger is RESOURCE_EXHAUSTED before anything is decoded.",
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
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from latent_codec import datasets
    from latent_codec.codec import Codec

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="aecodec-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or train_bundle(work)
    codec = Codec.open(bundle)
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
    r: dict = {"date": time.strftime("%Y-%m-%d"), "commit": git.stdout.strip()}
    try:

        def fuzz_calls():
            while True:
                yield hostile_call(rnd, target)

        rss0, t0 = server.rss_kib(), time.perf_counter()
        tally = run_calls(server.target, fuzz_calls(), args.fuzz, args.concurrency)
        r["fuzz"] = {
            "requests": args.fuzz, "status": dict(tally), "bad": sum(tally[b] for b in BAD),
            "rss_start_kib": rss0, "rss_end_kib": server.rss_kib(), "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        print(f"fuzz: {dict(tally)}", file=sys.stderr)

        garbage = garbage_calls(random.Random(args.seed + 1))
        run_calls(server.target, garbage, args.warmup, args.concurrency)
        rss0, t0 = server.rss_kib(), time.perf_counter()
        tally = run_calls(server.target, garbage, args.garbage, args.concurrency)
        rss1 = server.rss_kib()
        r["garbage"] = {
            "requests": args.garbage, "warmup": args.warmup, "status": dict(tally), "rss_start_kib": rss0,
            "rss_end_kib": rss1, "growth_pct": 100 * (rss1 - rss0) / rss0, "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        print(f"garbage: {dict(tally)}, RSS {rss0} -> {rss1} KiB", file=sys.stderr)

        hwm0 = server.rss_kib("VmHWM")
        n = budget_items(codec)
        tally = asyncio.run(amplification(server.target, codec))
        r["amplification"] = {
            "items": n, "shape": "x".join(map(str, codec.input.shape)),
            "reply_mib": n * int(np.prod(codec.input.shape)) * 4 / 2**20, "status": dict(tally),
            "hwm_before_kib": hwm0, "hwm_after_kib": server.rss_kib("VmHWM"),
        }  # fmt: skip
        print(f"amplification: {dict(tally)}", file=sys.stderr)

        rss0 = server.rss_kib()
        out = asyncio.run(load(server.target, codec, payloads[:16], args.clients, args.load_seconds))
        out.update(clients=args.clients, rss_start_kib=rss0, rss_end_kib=server.rss_kib())
        r["load"] = out
        print(f"load: {out}", file=sys.stderr)
    finally:
        r["exit_code"] = server.kill(signal.SIGTERM)
    write_report(args.out, list(argv if argv is not None else sys.argv[1:]), r)
    print(f"wrote {args.out}")
    return 0 if r["fuzz"]["bad"] == 0 and not r["load"]["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
