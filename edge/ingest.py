"""Durable upload: encode items into the spool, stream them to the cloud, forget them only when acknowledged.

Two threads share the spool. The producer encodes items with the bundle's
encoder and spools them (advancing the source cursor in the same
transaction); the sender streams spooled items over Ingest and removes each
batch when its IngestAck arrives. While the cloud is unreachable the producer
keeps spooling (until the spool is full, then waits) and the sender retries
with exponential backoff and jitter, giving up only after --retry-for seconds
without progress; everything not acknowledged stays spooled for the next run.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

import grpc
import numpy as np

from latent_codec import datasets
from latent_codec.errors import CodecError
from latent_codec.rejection import rejected_item
from latent_codec.wire.aecodec.v1 import codec_pb2 as pb
from latent_codec.wire.aecodec.v1 import codec_pb2_grpc as pb_grpc

from .client import MAX_MESSAGE_BYTES, CloudError, Security, describe, make_channel
from .encoder import EdgeEncoder
from .spool import Spool, SpooledItem, SpoolFullError, item_cost

RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
)
MAX_ID_CHARS = 256

# gRPC retries a failed call itself (with its own jittered backoff) when nothing was received yet:
# connection refused on the first batch, a replica restarting. Our loop handles failures mid-stream.
_RETRY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "aecodec.v1.Codec", "method": m}
                    for m in ("Ingest", "ListStored", "ModelInfo")
                ],
                "retryPolicy": _RETRY,
            }
        ]
    }
)


class GaveUp(CodecError):
    """The cloud stayed unreachable for the whole retry budget; items remain spooled."""


def open_channel(target: str, security: Security | None = None) -> grpc.Channel:
    """A channel that retries per its service config and reconnects quickly once the cloud is back."""
    return make_channel(
        target,
        security=security,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ],
    )


@dataclass
class Backoff:
    """Exponential backoff with jitter (half fixed, half random), so many devices do not retry in step."""

    initial: float = 0.2
    maximum: float = 5.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        d = min(self.maximum, self.initial * self.multiplier**attempt)
        return d / 2 + random.uniform(0, d / 2)


@dataclass
class IngestReport:
    device_id: str = ""
    bundle_id: str = ""
    spool: str = ""
    total: int = 0  # items of the source
    taken: int = 0  # items spooled by this run
    resumed: int = 0  # items found in the spool at start (from an earlier run)
    sent: int = 0  # items sent, counting resends after failures
    acknowledged: int = 0
    duplicates: int = 0  # acknowledged items the cloud already held (resends)
    still_spooled: int = 0
    quarantined: int = 0  # items this run set aside because the cloud refused them for good
    spooled_bytes: int = 0
    payload_bytes: int = 0  # payload bytes acknowledged
    wire_bytes: int = 0  # serialised IngestRequest bytes sent
    retries: int = 0
    seconds: float = 0.0
    error: str = ""  # why the run stopped early, if it did

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        rate = self.acknowledged / self.seconds if self.seconds else 0.0
        return "\n".join(
            [
                f"device            {self.device_id}",
                f"bundle            {self.bundle_id}",
                f"spool             {self.spool}",
                f"taken             {self.taken} of {self.total} source items (+{self.resumed} resumed from the spool)",
                f"sent              {self.sent} ({self.retries} retries)",
                f"acknowledged      {self.acknowledged} ({self.duplicates} already stored)",
                f"still spooled     {self.still_spooled} ({self.spooled_bytes:,} bytes)",
                f"quarantined       {self.quarantined} (refused by the cloud, kept in the spool: edge.cli quarantine)",
                f"payload bytes     {self.payload_bytes:,} acknowledged",
                f"wire bytes        {self.wire_bytes:,}",
                f"time              {self.seconds:.2f} s ({rate:,.0f} items/s acknowledged)",
            ]
        )


class Producer(threading.Thread):
    """Encodes source items [cursor, n) in batches and spools them; waits while the spool is full."""

    def __init__(
        self,
        x: np.ndarray,
        source: str,
        encoder: EdgeEncoder,
        spool: Spool,
        batch_size: int,
        rate: float,
        stop: threading.Event,
        wake: threading.Condition,
        warn,
    ):
        super().__init__(name="spool-producer", daemon=True)
        self.x, self.source, self.encoder, self.spool = x, source, encoder, spool
        self.batch_size, self.rate, self.stop, self.wake, self.warn = batch_size, rate, stop, wake, warn
        self.start_at = min(spool.cursor(source), len(x))
        self.taken = 0
        self.error: BaseException | None = None
        self.waiting_full = False

    @property
    def finished(self) -> bool:
        return not self.is_alive()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            with self.wake:
                self.wake.notify_all()

    def _run(self) -> None:
        t0 = time.monotonic()
        bid = self.encoder.bundle_id
        for i in range(self.start_at, len(self.x), self.batch_size):
            if self.stop.is_set():
                return
            if self.rate > 0:
                lag = t0 + self.taken / self.rate - time.monotonic()
                if lag > 0:
                    self.stop.wait(lag)
            xb = self.x[i : i + self.batch_size]
            payloads = self.encoder.encode(xb)
            now = int(time.time() * 1000)
            batch = [(f"{self.source}#{i + k}", bid, p, now) for k, p in enumerate(payloads)]
            cost = sum(item_cost(a, c) for a, _b, c, _d in batch)
            if cost > self.spool.max_bytes:
                raise SpoolFullError(
                    f"spool bound {self.spool.max_bytes:,} bytes is smaller than one batch "
                    f"({cost:,} bytes): raise --spool-max-bytes or lower --batch-size"
                )
            while True:
                try:
                    self.spool.add_many(batch, self.source, i + len(batch))
                    break
                except SpoolFullError as exc:
                    if not self.waiting_full:
                        self.warn(f"warning: {exc}; waiting for the cloud to acknowledge items")
                    self.waiting_full = True
                    if self.stop.wait(0.05):
                        return
            self.waiting_full = False
            self.taken += len(batch)
            with self.wake:
                self.wake.notify_all()


class Sender:
    """Streams spooled items over Ingest; a batch leaves the spool only when its ack names its items."""

    def __init__(
        self,
        stub: pb_grpc.CodecStub,
        spool: Spool,
        device_id: str,
        batch_size: int,
        window: int,
        ack_timeout: float,
        report: IngestReport,
        wake: threading.Condition,
        on_ack,
    ):
        self.stub, self.spool, self.device_id = stub, spool, device_id
        self.batch_size, self.window, self.ack_timeout = batch_size, window, ack_timeout
        self.report, self.wake, self.on_ack = report, wake, on_ack
        self.producer_done = lambda: True

    def stream_once(self) -> int:
        """One Ingest stream until the spool is drained and the producer done; returns items acknowledged.

        Raises grpc.RpcError when the stream fails (the caller decides whether to retry).
        """
        inflight: deque[tuple[list[SpooledItem], pb.IngestRequest]] = deque()  # sent, not yet acknowledged
        ended = threading.Event()
        state = {"last_ack": time.monotonic(), "acked": 0, "error": None, "call": None, "timed_out": False}

        def ack_overdue() -> bool:
            """With acks outstanding and none for ack_timeout: cancel the call (caller holds self.wake)."""
            if inflight and time.monotonic() - state["last_ack"] > self.ack_timeout:
                state["timed_out"] = True
                state["call"].cancel()
                return True
            return False

        def requests():
            after = 0
            try:
                while not ended.is_set():
                    with self.wake:
                        if len(inflight) >= self.window:
                            if ack_overdue():
                                return
                            self.wake.wait(0.05)
                            continue
                    batch = self.spool.peek(after, self.batch_size)
                    if not batch:
                        with self.wake:
                            if self.producer_done() and not inflight and not self.spool.peek(after, 1):
                                return  # drained: close our side, the server finishes the stream
                            if ack_overdue():
                                return
                            self.wake.wait(0.05)
                        continue
                    after = batch[-1].seq
                    req = build_request(self.device_id, batch)
                    with self.wake:
                        if not inflight:
                            state["last_ack"] = time.monotonic()
                        inflight.append((batch, req))
                    self.report.sent += len(batch)
                    self.report.wire_bytes += req.ByteSize()
                    yield req
            except BaseException as exc:  # a spool failure: end the stream, re-raised by stream_once
                state["error"] = exc

        call = self.stub.Ingest(requests())
        state["call"] = call
        try:
            for ack in call:
                with self.wake:
                    batch, req = inflight.popleft() if inflight else (None, None)
                    state["last_ack"] = time.monotonic()
                if batch is None or not acknowledged_ids(req, ack):
                    raise CloudError(
                        "the cloud acknowledged items this client did not send in that order; "
                        "stopping with everything unacknowledged still spooled"
                    )
                self.spool.remove(batch)
                state["acked"] += len(batch)
                self.report.acknowledged += len(batch)
                self.report.duplicates += ack.duplicates
                self.report.payload_bytes += sum(len(it.payload) for it in batch)
                self.on_ack(len(batch))
                with self.wake:
                    self.wake.notify_all()
        except grpc.RpcError as exc:
            if state["timed_out"]:
                raise AckTimeout(state["acked"], self.ack_timeout) from None
            exc.acked = state["acked"]  # type: ignore[attr-defined]
            # Acks come in request order, so the refused request is the oldest one still in flight.
            exc.refused_batch = inflight[0][0] if inflight else None  # type: ignore[attr-defined]
            raise
        finally:
            ended.set()
            call.cancel()
        if state["error"] is not None:
            raise state["error"]
        return state["acked"]


class AckTimeout(Exception):
    def __init__(self, acked: int, seconds: float):
        super().__init__(f"no acknowledgement for {seconds:g} s")
        self.acked = acked


_SEQ_ID = re.compile(r"(.*?)(0|[1-9][0-9]{0,18})")  # a prefix, then a decimal number that str() gives back


def refused_item(exc) -> SpooledItem | None:
    """The spooled item the cloud refused for good, when its error names one (latent_codec/rejection.py)."""
    if exc.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS):
        return None
    batch, k = getattr(exc, "refused_batch", None), rejected_item(exc)
    return batch[k] if batch is not None and k is not None and 0 <= k < len(batch) else None


def build_request(device_id: str, batch) -> pb.IngestRequest:
    """One IngestRequest with as little framing per item as the batch allows.

    What items share is sent once per request: the bundle id; the start of the
    item ids, each item then carrying only its number (item_seq, a 1-3 byte
    varint; `8hex#index` ids all share `8hex#`); the earliest capture time,
    each item carrying its offset from it. Ids the server rebuilds are the
    same strings, so idempotency does not depend on the form sent.
    """
    common = batch[0].bundle_id if all(it.bundle_id == batch[0].bundle_id for it in batch) else ""
    parts = [_SEQ_ID.fullmatch(it.item_id) for it in batch]
    prefix = parts[0].group(1) if all(parts) and len({m.group(1) for m in parts}) == 1 else None
    base = min(it.captured_at_ms for it in batch)
    items = []
    for it, m in zip(batch, parts):
        item = pb.IngestItem(
            bundle_id="" if common else it.bundle_id,
            payload=it.payload,
            captured_at_ms=it.captured_at_ms - base,
        )
        if prefix is None:
            item.item_id = it.item_id
        else:
            item.item_seq = int(m.group(2))
        items.append(item)
    return pb.IngestRequest(
        device_id=device_id, bundle_id=common, item_id_prefix=prefix or "", captured_base_ms=base, items=items
    )


def acknowledged_ids(req: pb.IngestRequest, ack: pb.IngestAck) -> bool:
    """True when the ack names exactly the request's items, in order, the way the request named them."""
    by_seq = [it.HasField("item_seq") for it in req.items]
    return list(ack.item_ids) == [it.item_id for it, s in zip(req.items, by_seq) if not s] and list(
        ack.item_seqs
    ) == [it.item_seq for it, s in zip(req.items, by_seq) if s]


def default_source_id(data_source: str) -> str:
    """A short, stable name for a data source: item ids travel with every item, so keep them small."""
    return hashlib.sha256(data_source.encode()).hexdigest()[:8]


def load_source(args, encoder: EdgeEncoder) -> tuple[np.ndarray, str]:
    mode = "L" if encoder.manifest.input.shape[0] == 1 else "RGB"
    ds = datasets.load(args.data, args.split, mode=mode)
    x = ds.x[: args.limit] if args.limit else ds.x
    encoder.check_items(x[:1])
    source = args.source_id or default_source_id(ds.source)
    if len(source) + 12 > MAX_ID_CHARS:
        raise CodecError(f"source id {source[:40]!r}... is too long for item ids; pass a shorter --source-id")
    return x, source


def run(args, warn=None) -> IngestReport:
    """Take the source into the spool and drain it to the cloud; returns the report (see module doc)."""
    if warn is None:
        from tqdm import tqdm

        def warn(msg: str) -> None:  # above the progress bar, not through it
            tqdm.write(msg, file=sys.stderr)

    encoder = EdgeEncoder(args.bundle, args.threads)
    x, source = load_source(args, encoder)
    spool = Spool(args.spool, args.spool_max_bytes)
    report = IngestReport(bundle_id=encoder.bundle_id, spool=str(args.spool), total=len(x))
    t0 = time.monotonic()
    stop = threading.Event()
    wake = threading.Condition()
    channel = open_channel(args.server, Security.from_args(args))
    producer = None
    bar = None
    try:
        report.device_id = spool.device_id(args.device_id)
        report.resumed = spool.count
        producer = Producer(x, source, encoder, spool, args.batch_size, args.rate, stop, wake, warn)
        from tqdm import tqdm

        bar = tqdm(
            total=report.resumed + len(x) - producer.start_at,
            unit="item",
            disable=args.no_progress,
            file=sys.stderr,
            desc="acknowledged",
        )
        sender = Sender(
            pb_grpc.CodecStub(channel),
            spool,
            report.device_id,
            args.batch_size,
            args.window,
            args.ack_timeout,
            report,
            wake,
            bar.update,
        )
        sender.producer_done = lambda: producer.finished
        producer.start()
        backoff = Backoff(args.retry_initial, args.retry_max)
        attempt, last_progress = 0, time.monotonic()
        while True:
            try:
                if sender.stream_once():
                    attempt, last_progress = 0, time.monotonic()
                if producer.error is not None:
                    raise producer.error
                if producer.finished and spool.count == 0:
                    break
                continue  # the stream ended early (the producer still runs): open another
            except grpc.RpcError as exc:
                if getattr(exc, "acked", 0):
                    attempt, last_progress = 0, time.monotonic()
                if exc.code() not in RETRYABLE:
                    item = refused_item(exc)
                    if item is None:
                        raise CloudError(describe(exc, args.server)) from None
                    if report.quarantined >= args.max_quarantine:
                        raise CloudError(
                            f"{describe(exc, args.server)}; {report.quarantined} items were refused "
                            f"already (--max-quarantine): stopping, the rest stays spooled"
                        ) from None
                    spool.quarantine(item, f"{exc.code().name}: {exc.details()}", int(time.time() * 1000))
                    report.quarantined += 1
                    warn(
                        f"quarantined {item.item_id}: the cloud refused it ({exc.code().name}: {exc.details()})"
                    )
                    attempt, last_progress = 0, time.monotonic()
                    continue  # send the rest at once
                why = describe(exc, args.server)
            except AckTimeout as exc:
                if exc.acked:
                    attempt, last_progress = 0, time.monotonic()
                why = f"the cloud at {args.server} stopped acknowledging ({exc})"
            if producer.error is not None:
                raise producer.error
            waited = time.monotonic() - last_progress
            if waited > args.retry_for:
                raise GaveUp(
                    f"{why}; gave up after {waited:.0f} s without progress"
                    + (" (the spool is full)" if producer.waiting_full else "")
                )
            report.retries += 1
            delay = backoff.delay(attempt)
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                warn(f"retrying in {delay:.1f} s: {why}")
            stop.wait(delay)
    except CodecError as exc:
        report.error = str(exc)
        exc.report = report  # type: ignore[attr-defined]  # the caller prints what was done before failing
        raise
    finally:
        stop.set()
        if producer is not None and producer.is_alive():
            producer.join(timeout=30)
        if bar is not None:
            bar.close()
        channel.close()
        report.taken = producer.taken if producer is not None else 0
        report.still_spooled = spool.count
        report.spooled_bytes = spool.bytes_used
        report.seconds = time.monotonic() - t0
        spool.close()
    return report


def add_arguments(p) -> None:
    """The `ingest` subcommand's flags (edge/cli.py registers the subcommand)."""
    from pathlib import Path

    p.add_argument("--bundle", required=True, type=Path, help="bundle directory (manifest.json + ONNX files)")
    p.add_argument("--server", default="127.0.0.1:50051", help="cloud address host:port")
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist | digits | an IDX folder | .npy/.npz | a folder of PNG/JPEG images",
    )
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=0, help="only the first N items")
    p.add_argument(
        "--spool",
        type=Path,
        default=Path("edge-spool.sqlite"),
        help="the spool file (SQLite); created if missing, resumed if present",
    )
    p.add_argument("--spool-max-bytes", default="64M", help="size bound of the spool, e.g. 64M, 512k")
    p.add_argument(
        "--device-id", default=None, help="device id (default: generated once and kept in the spool)"
    )
    p.add_argument(
        "--source-id",
        default=None,
        help="names the source in item ids (default: 8 hex digits of a hash of the data source); "
        "item id = SOURCE#index",
    )
    p.add_argument("--batch-size", type=int, default=256, help="items per IngestRequest")
    p.add_argument("--window", type=int, default=8, help="requests in flight before waiting for acks")
    p.add_argument(
        "--rate", type=float, default=0.0, help="take at most this many items per second (0 = no limit)"
    )
    p.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        help="give up after this many seconds without an acknowledgement (items stay spooled)",
    )
    p.add_argument("--retry-initial", type=float, default=0.2, help="first retry delay, seconds")
    p.add_argument("--retry-max", type=float, default=5.0, help="longest retry delay, seconds")
    p.add_argument(
        "--ack-timeout",
        type=float,
        default=30.0,
        help="treat the stream as broken after this long without an ack while items are in flight",
    )
    p.add_argument(
        "--max-quarantine",
        type=int,
        default=100,
        help="items the cloud may refuse for good (set aside in the spool) before the run stops",
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--no-progress", action="store_true")


def check_arguments(args) -> None:
    """Refuse nonsense flags with one line naming the flag."""
    from .spool import parse_size

    for name in ("batch_size", "window"):
        if getattr(args, name) < 1:
            raise CodecError(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.batch_size <= 10_000:
        raise CodecError("--batch-size must be 1..10000 (the cloud's per-request limit)")
    for name in ("limit", "rate", "retry_for", "retry_initial", "retry_max", "ack_timeout", "max_quarantine"):
        if getattr(args, name) < 0:
            raise CodecError(f"--{name.replace('_', '-')} must not be negative")
    if isinstance(args.spool_max_bytes, str):
        args.spool_max_bytes = parse_size(args.spool_max_bytes)


def main_ingest(args) -> int:
    """Run `ingest`; print the report. Exit 0: everything acknowledged; 3: items remain spooled (the cloud
    was unreachable too long); 4: everything else acknowledged, some items quarantined; 2: stopped by an error."""
    check_arguments(args)
    code = 0
    try:
        report = run(args)
    except CodecError as exc:
        report = getattr(exc, "report", None)
        if report is None:
            raise  # nothing was done: the CLI prints the one-line error
        code = 3 if isinstance(exc, GaveUp) else 2
    print(report.format())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1))
    if code:
        print(
            f"error: {report.error}; {report.still_spooled} items stay spooled in {report.spool}",
            file=sys.stderr,
        )
    elif report.quarantined:
        print(
            f"warning: the cloud refused {report.quarantined} items for good; they are kept in {report.spool} "
            f"(list them with `edge.cli quarantine --spool {report.spool}`)",
            file=sys.stderr,
        )
        code = 4
    return code


__all__ = ["run", "add_arguments", "main_ingest", "IngestReport", "Backoff", "open_channel", "GaveUp"]
