"""Durable upload: take items into the spool, stream them to the cloud, forget them only when acknowledged.

    from edge.ingest import IngestConfig, run
    report = run(IngestConfig(bundle="bundles/conv", server="cloud:50051", spool="spool.db", data="photos/"))

Two threads share the spool: the producer (edge/producer.py) encodes and spools
items; the sender (edge/sender.py) streams them over Ingest and removes each
batch when its IngestAck arrives. While the cloud is unreachable the producer
keeps spooling (until the spool is full, then waits) and this module retries
with exponential backoff and jitter, giving up only after ``retry_for`` seconds
without progress; everything not acknowledged stays spooled for the next run.
An item the cloud refuses for good is quarantined in the spool, not retried.
"""

from __future__ import annotations

import hashlib
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latent_codec.codec import Codec
from latent_codec.datasets import ArrayItems, Items
from latent_codec.errors import CodecError
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from .channel import CloudError, Security, describe, open_channel
from .producer import Producer
from .sender import AckTimeout, Backoff, Sender, StreamFailed
from .source import check_sizes, load_for, set_rounding
from .spool import Spool

MAX_ID_CHARS = 256
MAX_BATCH_ITEMS = 10_000  # the cloud's per-request limit


@dataclass
class IngestConfig:
    """Everything one ingest run needs; the CLI's flags are these fields (edge/commands/ingest.py)."""

    bundle: Path  # bundle directory (manifest.json + ONNX files)
    server: str = "127.0.0.1:50051"  # cloud address host:port
    spool: Path = Path("edge-spool.sqlite")  # the spool file (SQLite); created if missing, resumed if present
    data: str = "fashion-mnist"  # a datasets.load spec, used when no items array is given
    split: str = "test"
    limit: int = 0  # only the first N items (0 = all)
    spool_max_bytes: int = 64 << 20  # the spool's size bound
    device_id: str | None = None  # default: generated once and kept in the spool
    source_id: str | None = None  # names the source in item ids (SOURCE#index); default: a hash of the source
    batch_size: int = 256  # items per IngestRequest
    window: int = 8  # requests in flight before waiting for acks
    rate: float = 0.0  # take at most this many items per second (0 = no limit)
    retry_for: float = (
        300.0  # give up after this many seconds without an acknowledgement (items stay spooled)
    )
    retry_initial: float = 0.2  # first retry delay, seconds
    retry_max: float = 5.0  # longest retry delay, seconds
    ack_timeout: float = (
        30.0  # the stream counts as broken after this long without an ack while items are out
    )
    max_quarantine: int = 100  # items the cloud may refuse for good before the run stops
    threads: int = 0  # ONNX Runtime threads (0 = default)
    rounding: float | None = (
        None  # rate-aware rounding strength κ (None: the codec's default; edge/source.py)
    )
    audit_fraction: float = (
        0.0  # send this fraction of items with their original, so the cloud measures quality
    )
    grey: bool = False  # convert colour images for a grey bundle (otherwise refused)
    alpha: str | None = None  # "white" / "black": flatten images with alpha onto it (otherwise refused)
    security: Security = field(default_factory=Security)
    progress: bool = False  # a progress bar on stderr

    def check(self) -> None:
        """Refuse nonsense settings with one line naming the setting (as its CLI flag)."""
        for name in ("batch_size", "window"):
            if getattr(self, name) < 1:
                raise CodecError(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch_size > MAX_BATCH_ITEMS:
            raise CodecError(f"--batch-size must be 1..{MAX_BATCH_ITEMS} (the cloud's per-request limit)")
        for name in (
            "limit",
            "rate",
            "retry_for",
            "retry_initial",
            "retry_max",
            "ack_timeout",
            "max_quarantine",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise CodecError(
                    f"--{name.replace('_', '-')} must be a finite number, not negative (got {value})"
                )
        if self.spool_max_bytes < 1:
            raise CodecError("--spool-max-bytes must be positive")
        if not 0.0 <= self.audit_fraction <= 1.0:
            raise CodecError("--audit-fraction must be between 0 and 1")


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
    audited: int = 0  # items this run spooled with their original, for the cloud's quality figures
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


class IngestStopped(CodecError):
    """The run stopped before everything was acknowledged; ``report`` says what was done (the rest is spooled)."""

    def __init__(self, message: str, report: IngestReport):
        super().__init__(message)
        self.report = report


class GaveUp(IngestStopped):
    """The cloud stayed unreachable for the whole retry budget; items remain spooled."""


def default_source_id(data_source: str) -> str:
    """A short, stable name for a data source: item ids travel with every item, so keep them small."""
    return hashlib.sha256(data_source.encode()).hexdigest()[:8]


def load_source(config: IngestConfig, codec: Codec, items: np.ndarray | None = None) -> tuple[Items, str]:
    """The source items (from ``items``, else ``config.data``) and the source id their item ids start with."""
    if items is None:
        x = load_for(codec, config.data, config.split, config.limit, config.grey, config.alpha)
    else:
        arr = np.asarray(items)
        name = "array:" + hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
        x = ArrayItems(arr, name).head(config.limit)
        check_sizes(codec, x)
    source = config.source_id or default_source_id(x.source)
    if len(source) + 12 > MAX_ID_CHARS:
        raise CodecError(f"source id {source[:40]!r}... is too long for item ids; pass a shorter --source-id")
    return x, source


def _stderr_warn(msg: str) -> None:
    print(msg, file=sys.stderr)


def run(
    config: IngestConfig, items: np.ndarray | None = None, warn: Callable[[str], None] | None = None
) -> IngestReport:
    """Take the source into the spool and drain it to the cloud; returns the report (see module doc).

    Raises IngestStopped (GaveUp when the cloud stayed unreachable) carrying the report when the run ends
    before everything is acknowledged, or a plain CodecError when nothing could start.
    """
    config.check()
    codec = Codec.open_split(config.bundle, need=("encoder",), threads=config.threads)
    set_rounding(codec, config.rounding)
    x, source = load_source(config, codec, items)
    spool = Spool(config.spool, config.spool_max_bytes)
    report = IngestReport(bundle_id=codec.bundle_id, spool=str(config.spool), total=len(x))
    t0 = time.monotonic()
    stop = threading.Event()
    wake = threading.Condition()
    channel = open_channel(config.server, config.security)
    producer: Producer | None = None
    sender: Sender | None = None
    bar = None
    try:
        report.device_id = spool.device_id(config.device_id)
        report.resumed = spool.count
        from tqdm import tqdm

        if warn is None:
            warn = tqdm.write if config.progress else _stderr_warn  # above the progress bar, not through it
        producer = Producer(
            x, source, codec, spool, config.batch_size, config.rate, stop, wake, warn, config.audit_fraction
        )
        bar = tqdm(
            total=report.resumed + len(x) - producer.start_at,
            unit="item",
            disable=not config.progress,
            file=sys.stderr,
            desc="acknowledged",
        )
        sender = Sender(
            pb_grpc.StorageStub(channel),
            spool,
            report.device_id,
            config.batch_size,
            config.window,
            config.ack_timeout,
            wake,
            bar.update,
        )
        sender.producer_done = lambda: producer.finished
        producer.start()
        _drain(config, producer, sender, spool, report, stop, warn)
    except IngestStopped:
        raise
    except CodecError as exc:
        report.error = str(exc)
        raise IngestStopped(str(exc), report) from None
    finally:
        stop.set()
        if producer is not None and producer.is_alive():
            producer.join(timeout=30)
        if bar is not None:
            bar.close()
        channel.close()
        if sender is not None:
            for name, value in asdict(sender.stats).items():
                setattr(report, name, value)
        report.taken = producer.taken if producer is not None else 0
        report.audited = producer.audited if producer is not None else 0
        report.still_spooled = spool.count
        report.spooled_bytes = spool.bytes_used
        report.seconds = time.monotonic() - t0
        spool.close()
    return report


def _drain(
    config: IngestConfig,
    producer: Producer,
    sender: Sender,
    spool: Spool,
    report: IngestReport,
    stop: threading.Event,
    warn: Callable[[str], None],
) -> None:
    """Open Ingest streams until the spool is empty and the producer done; retry, quarantine or give up."""
    backoff = Backoff(config.retry_initial, config.retry_max)
    attempt, last_progress = 0, time.monotonic()
    while True:
        try:
            if sender.stream_once():
                attempt, last_progress = 0, time.monotonic()
            if producer.error is not None:
                raise producer.error
            if producer.finished and spool.count == 0:
                return
            continue  # the stream ended early (the producer still runs): open another
        except StreamFailed as exc:
            if exc.acked:
                attempt, last_progress = 0, time.monotonic()
            if not exc.retryable:
                item = exc.refused_item()
                if item is None:
                    raise CloudError(describe(exc.error, config.server)) from None
                if report.quarantined >= config.max_quarantine:
                    raise CloudError(
                        f"{describe(exc.error, config.server)}; {report.quarantined} items were refused "
                        f"already (--max-quarantine): stopping, the rest stays spooled"
                    ) from None
                spool.quarantine(item, f"{exc.code.name}: {exc.details}", int(time.time() * 1000))
                report.quarantined += 1
                warn(f"quarantined {item.item_id}: the cloud refused it ({exc.code.name}: {exc.details})")
                attempt, last_progress = 0, time.monotonic()
                continue  # send the rest at once
            why = describe(exc.error, config.server)
        except AckTimeout as exc:
            if exc.acked:
                attempt, last_progress = 0, time.monotonic()
            why = f"the cloud at {config.server} stopped acknowledging ({exc})"
        if producer.error is not None:
            raise producer.error
        waited = time.monotonic() - last_progress
        if waited > config.retry_for:
            full = " (the spool is full)" if producer.waiting_full else ""
            report.error = f"{why}; gave up after {waited:.0f} s without progress{full}"
            raise GaveUp(report.error, report)
        report.retries += 1
        delay = backoff.delay(attempt)
        attempt += 1
        if attempt == 1 or attempt % 10 == 0:
            warn(f"retrying in {delay:.1f} s: {why}")
        stop.wait(delay)
