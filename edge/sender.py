"""Sending spooled items over Ingest: a batch leaves the spool only when its acknowledgement names its items.

One ``Sender.stream_once`` call is one Ingest stream, with up to ``window``
requests in flight. Its failures are typed: ``StreamFailed`` (the call ended
with a status; it says how many items were acknowledged before and which batch
was refused) and ``AckTimeout`` (the cloud went silent). Deciding whether to
retry, when, and what to quarantine is ``edge.ingest``'s job.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from latent_codec import framing
from latent_codec.rejection import rejected_item
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from .channel import CloudError
from .spool import Spool, SpooledItem

RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,  # the store failed or the replica is restarting (cloud/storage_service.py)
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # the store is out of space, or the server is busy
    grpc.StatusCode.ABORTED,
)
# Statuses whose trailing metadata names the one item at fault: it goes to the quarantine with the reason.
REFUSED_FOR_GOOD = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
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
class SendStats:
    """What the sender did, for the ingest report."""

    sent: int = 0  # items sent, counting resends after failures
    acknowledged: int = 0
    duplicates: int = 0  # acknowledged items the cloud already held (resends)
    payload_bytes: int = 0  # payload bytes acknowledged
    wire_bytes: int = 0  # serialised IngestRequest bytes sent


class StreamFailed(Exception):
    """An Ingest stream ended with a status. ``acked``: items acknowledged on it before; ``refused_batch``: the
    oldest request still in flight (acks come in request order, so the one the cloud refused)."""

    def __init__(self, error: grpc.RpcError, acked: int, refused_batch: list[SpooledItem] | None):
        super().__init__(f"{error.code().name}: {error.details()}")
        self.error = error
        self.code: grpc.StatusCode = error.code()
        self.details: str = error.details() or ""
        self.acked = acked
        self.refused_batch = refused_batch

    @property
    def retryable(self) -> bool:
        """Worth sending again as it is: a transient status that names no item of ours (a store out of space or
        unavailable, a replica restarting, the server busy)."""
        return self.code in RETRYABLE and self.refused_item() is None

    def refused_item(self) -> SpooledItem | None:
        """The spooled item the cloud refused for good, when its error names one (latent_codec/rejection.py): a
        bad payload, a reused id, a bundle the cloud does not hold, an item too large to decode."""
        if self.code not in REFUSED_FOR_GOOD:
            return None
        k = rejected_item(self.error)
        batch = self.refused_batch
        return batch[k] if batch is not None and k is not None and 0 <= k < len(batch) else None


class AckTimeout(Exception):
    def __init__(self, acked: int, seconds: float):
        super().__init__(f"no acknowledgement for {seconds:g} s")
        self.acked = acked


class _Stream:
    """The state of one Ingest stream, shared by the request generator and the ack loop (under ``wake``)."""

    def __init__(self) -> None:
        self.inflight: deque[tuple[list[SpooledItem], pb.IngestRequest]] = (
            deque()
        )  # sent, not yet acknowledged
        self.ended = threading.Event()
        self.last_ack = time.monotonic()
        self.acked = 0
        self.error: BaseException | None = None
        self.call: grpc.Future | None = None
        self.timed_out = False


class Sender:
    """Streams spooled items over Ingest; a batch leaves the spool only when its ack names its items."""

    def __init__(
        self,
        stub: pb_grpc.StorageStub,
        spool: Spool,
        device_id: str,
        batch_size: int,
        window: int,
        ack_timeout: float,
        wake: threading.Condition,
        on_ack: Callable[[int], object] = lambda n: None,
    ):
        self.stub, self.spool, self.device_id = stub, spool, device_id
        self.batch_size, self.window, self.ack_timeout = batch_size, window, ack_timeout
        self.wake, self.on_ack = wake, on_ack
        self.stats = SendStats()
        self.producer_done: Callable[[], bool] = lambda: True

    def _ack_overdue(self, s: _Stream) -> bool:
        """With acks outstanding and none for ack_timeout: cancel the call (caller holds self.wake)."""
        if s.inflight and time.monotonic() - s.last_ack > self.ack_timeout:
            s.timed_out = True
            if s.call is not None:
                s.call.cancel()
            return True
        return False

    def _requests(self, s: _Stream) -> Iterator[pb.IngestRequest]:
        after = 0
        try:
            while not s.ended.is_set():
                with self.wake:
                    if len(s.inflight) >= self.window:
                        if self._ack_overdue(s):
                            return
                        self.wake.wait(0.05)
                        continue
                batch = self.spool.peek(after, self.batch_size)
                if not batch:
                    with self.wake:
                        if self.producer_done() and not s.inflight and not self.spool.peek(after, 1):
                            return  # drained: close our side, the server finishes the stream
                        if self._ack_overdue(s):
                            return
                        self.wake.wait(0.05)
                    continue
                after = batch[-1].seq
                req = framing.ingest_request(self.device_id, batch)
                with self.wake:
                    if not s.inflight:
                        s.last_ack = time.monotonic()
                    s.inflight.append((batch, req))
                self.stats.sent += len(batch)
                self.stats.wire_bytes += req.ByteSize()
                yield req
        except BaseException as exc:  # a spool failure: end the stream, re-raised by stream_once
            s.error = exc

    def stream_once(self) -> int:
        """One Ingest stream until the spool is drained and the producer done; returns items acknowledged.

        Raises StreamFailed or AckTimeout when the stream fails (the caller decides whether to retry).
        """
        s = _Stream()
        call = self.stub.Ingest(self._requests(s))
        s.call = call
        try:
            for ack in call:
                with self.wake:
                    batch, req = s.inflight.popleft() if s.inflight else (None, None)
                    s.last_ack = time.monotonic()
                if batch is None or req is None or not framing.acknowledges(req, ack):
                    raise CloudError(
                        "the cloud acknowledged items this client did not send in that order; "
                        "stopping with everything unacknowledged still spooled"
                    )
                self.spool.remove(batch)
                s.acked += len(batch)
                self.stats.acknowledged += len(batch)
                self.stats.duplicates += ack.duplicates
                self.stats.payload_bytes += sum(len(it.payload) for it in batch)
                self.on_ack(len(batch))
                with self.wake:
                    self.wake.notify_all()
        except grpc.RpcError as exc:
            if s.timed_out:
                raise AckTimeout(s.acked, self.ack_timeout) from None
            raise StreamFailed(exc, s.acked, s.inflight[0][0] if s.inflight else None) from None
        finally:
            s.ended.set()
            call.cancel()
        if s.error is not None:
            raise s.error
        return s.acked
