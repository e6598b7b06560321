"""Taking source items into the spool: encode a batch with the codec, spool it with the source cursor, repeat.

The producer runs in its own thread beside the sender. With an audit fraction, a sampled few
items are spooled with their original (field quality monitoring: the cloud measures their error). An item enters the
spool in the same transaction that advances the source cursor (edge/spool.py),
so after a crash nothing is lost or taken twice. While the spool is full it
waits for acknowledgements instead of dropping items.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from latent_codec.codec import Codec
from latent_codec.container import to_tensor
from latent_codec.datasets import Items

from .spool import Spool, SpoolFullError, item_cost


def audited(item_id: str, fraction: float) -> bool:
    """Is this item one of the sampled `fraction` sent with its original? Decided by its id, so a resumed run
    samples the same items and the cloud sees each audited item once."""
    if fraction <= 0:
        return False
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") < fraction * 2**64


class Producer(threading.Thread):
    """Encodes source items [cursor, n) in batches (each encoded in groups of one size) and spools them with their
    names; waits while the spool is full."""

    def __init__(
        self,
        items: Items,
        source: str,
        codec: Codec,
        spool: Spool,
        batch_size: int,
        rate: float,
        stop: threading.Event,
        wake: threading.Condition,
        warn: Callable[[str], None],
        audit_fraction: float = 0.0,
    ):
        super().__init__(name="spool-producer", daemon=True)
        self.items, self.source, self.codec, self.spool = items, source, codec, spool
        self.batch_size, self.rate, self.stop, self.wake, self.warn = batch_size, rate, stop, wake, warn
        self.audit_fraction = audit_fraction
        self.audited = 0
        self.start_at = min(spool.cursor(source), len(items))
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
        bid = self.codec.bundle_id
        n = len(self.items)
        for i in range(self.start_at, n, self.batch_size):
            if self.stop.is_set():
                return
            if self.rate > 0:
                lag = t0 + self.taken / self.rate - time.monotonic()
                if lag > 0:
                    self.stop.wait(lag)
            payloads: dict[int, bytes] = {}
            originals: dict[int, bytes] = {}
            for group in self.items.by_size(list(range(i, min(i + self.batch_size, n))), self.batch_size):
                xb = self.items.take(group)
                for j, x, p in zip(group, xb, self.codec.encode(xb)):
                    payloads[j] = p
                    if audited(f"{self.source}#{j}", self.audit_fraction):  # travels with its original
                        originals[j] = to_tensor(x).SerializeToString()
            now = int(time.time() * 1000)
            batch = []
            for j in sorted(payloads):
                name = self.items.names[j] if self.items.named else ""
                batch.append((f"{self.source}#{j}", bid, payloads[j], now, originals.get(j), name))
            self.audited += len(originals)
            cost = sum(item_cost(a, c, o, nm) for a, _b, c, _d, o, nm in batch)
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
