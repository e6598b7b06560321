"""Ingest throughput (acknowledged = committed and durable) per store and batch size, and the edge spool's cost.

    python -m bench.ingest --bundle bundles/digits --out docs/bench-ingest.md

The cloud runs as a real `python -m cloud.server --store ...` child process on
127.0.0.1; the client streams IngestRequests of B items with up to --window
requests in flight and counts an item when its IngestAck arrives (sent only
after the commit: SQLite WAL with synchronous=FULL, PostgreSQL with its
default synchronous_commit=on). The spool rows time the edge with and without
the spool around the same encoder. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench-ingest", description=__doc__.split("\n")[0])
    p.add_argument(
        "--bundle", type=Path, required=True, help="bundle directory whose encoder makes the payloads"
    )
    p.add_argument("--data", default="digits", help="items to encode (see edge.cli --data)")
    p.add_argument("--batch-sizes", default="1,64,1024")
    p.add_argument("--items", type=int, default=20000, help="items per run (batch size 1 uses --items-b1)")
    p.add_argument(
        "--items-b1", type=int, default=2000, help="items per run at batch size 1 (one commit each)"
    )
    p.add_argument("--window", type=int, default=8, help="requests in flight")
    p.add_argument("--stores", default="sqlite,postgres")
    p.add_argument(
        "--pg",
        default=os.environ.get("AECODEC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL database; the benchmark works in a schema of its own and drops it",
    )
    p.add_argument("--spool-items", type=int, default=20000)
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    return p.parse_args(argv)


def payloads_for(bundle: Path, data: str, n: int) -> tuple[str, list[bytes]]:
    from edge.source import open_source

    enc, items = open_source(bundle, data, "train")
    x = items.stacked().x
    x = np.concatenate([x] * (n // len(x) + 1))[:n]
    return enc.bundle_id, enc.encode(x)


class Server:
    """The cloud as a child process with a store; the port comes back through --port-file."""

    def __init__(self, bundle: Path, store: str, workdir: Path):
        bundles = workdir / "bundles"
        if not bundles.exists():
            bundles.mkdir()
            (bundles / bundle.name).symlink_to(bundle.resolve(), target_is_directory=True)
        port_file = workdir / f"port-{uuid.uuid4().hex[:6]}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloud.server",
                "--bundles",
                str(bundles),
                "--store",
                store,
                "--address",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {self.proc.stderr.read()[-1000:]}")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{port_file.read_text()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def ingest_rate(target: str, bundle_id: str, payloads: list[bytes], batch: int, window: int) -> float:
    """Items acknowledged per second over one stream, with up to `window` requests in flight."""
    import threading

    import grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    device = f"bench-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    reqs = [
        pb.IngestRequest(
            device_id=device,
            items=[
                pb.IngestItem(item_id=f"i{i + k}", bundle_id=bundle_id, payload=p, captured_at_ms=now)
                for k, p in enumerate(payloads[i : i + batch])
            ],
        )
        for i in range(0, len(payloads), batch)
    ]
    slots = threading.Semaphore(window)

    def gen():
        for r in reqs:
            slots.acquire()
            yield r

    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.StorageStub(ch)
        grpc.channel_ready_future(ch).result(timeout=30)
        t0 = time.perf_counter()
        acked = 0
        for ack in stub.Ingest(gen(), timeout=600):
            acked += len(ack.item_ids) + len(ack.item_seqs)
            slots.release()
        dt = time.perf_counter() - t0
        total = stub.ListStored(pb.ListStoredRequest(device_id=device), timeout=30).total_items
    if acked != len(payloads) or total != len(payloads):
        raise RuntimeError(f"acknowledged {acked}, stored {total}, sent {len(payloads)}")
    return acked / dt


def pg_schema(url: str) -> tuple[str, str]:
    import psycopg

    schema = f"aecodec_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    return schema, f"{url}?options=-csearch_path%3D{schema}"


def pg_drop(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=3) as c:
        c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def spool_overhead(bundle: Path, data: str, n: int, batch: int, workdir: Path) -> list[tuple[str, float]]:
    """Microseconds per item: encode alone, then encode + spool in + read + remove on ack (one batch at a time)."""
    from edge.source import open_source
    from edge.spool import Spool

    enc, items = open_source(bundle, data, "train")
    x = items.stacked().x
    x = np.concatenate([x] * (n // len(x) + 1))[:n]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        enc.encode(x[i : i + batch])
    base = (time.perf_counter() - t0) / n * 1e6
    spool = Spool(workdir / "spool.sqlite", 1 << 30)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        ps = enc.encode(x[i : i + batch])
        spool.add_many([(f"cam#{i + k}", enc.bundle_id, p, 0) for k, p in enumerate(ps)], "cam", i + len(ps))
        spool.remove(spool.peek(0, batch))
    full = (time.perf_counter() - t0) / n * 1e6
    spool.close()
    return [("encode only", base), ("encode + spool (write, read, delete on ack)", full)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    bundle_id, payloads = payloads_for(args.bundle, args.data, max(args.items, args.items_b1))
    avg = sum(len(p) for p in payloads) / len(payloads)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        for store in stores:
            schema = None
            try:
                if store == "sqlite":
                    url = str(work / "cloud.sqlite")
                else:
                    schema, url = pg_schema(args.pg)
                server = Server(args.bundle, url, work)
            except Exception as exc:  # no PostgreSQL here: say so in the table instead of failing the rest
                rows.append(f"| {store} | - | - | skipped: {type(exc).__name__}: {str(exc).strip()[:80]} |")
                continue
            try:
                for b in sizes:
                    n = args.items_b1 if b == 1 else args.items
                    rate = ingest_rate(server.target, bundle_id, payloads[:n], b, args.window)
                    rows.append(f"| {store} | {b} | {n:,} | {rate:,.0f} |")
                    print(rows[-1], file=sys.stderr)
            finally:
                server.stop()
                if schema:
                    pg_drop(args.pg, schema)
        spool_rows = spool_overhead(args.bundle, args.data, args.spool_items, 256, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = spool_rows[0][1]
    lines = [
        f"Bundle `{bundle_id}`, payloads {avg:.1f} bytes/item on average, {args.window} requests in flight, "
        f"one stream, server and client on 127.0.0.1.",
        "",
        "| store | batch (items/request) | items | acknowledged items/s (committed, durable) |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"Edge spool, {args.spool_items:,} items in batches of 256:",
        "",
        "| edge path | µs/item | overhead |",
        "|---|---:|---:|",
        *[
            f"| {name} | {us:.1f} | {'-' if k == 0 else f'+{us - base:.1f} µs ({(us / base - 1) * 100:.0f} %)'} |"
            for k, (name, us) in enumerate(spool_rows)
        ],
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(
            f"# Ingest benchmark\n\n`python -m bench.ingest {' '.join(argv or sys.argv[1:])}`\n\n{text}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
