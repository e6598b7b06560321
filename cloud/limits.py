"""What one request may cost the server, checked before any work: bytes it decodes to, symbols it entropy-decodes.

A few hundred bytes can ask for 65,536 empty entropy-coded items; decoding them would allocate
gigabytes. Every decoding request (Decode, each DecodeStream message, Ingest validation, Fetch) is
measured against these budgets from its item count and the bundle's manifest alone, and refused
with RESOURCE_EXHAUSTED naming the limit before anything is decoded. Concurrency is bounded
separately: decoding runs on a fixed pool of threads (--decode-workers), so at most that many
budgets are spent at once; docs/deployment.md states the resulting memory bound.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

from latent_codec.codec import Codec
from latent_codec.errors import CodecError

MIB = 1 << 20


class OverBudget(CodecError):
    """A request would cost more than a per-request budget (answered RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Limits:
    max_items: int = 65536  # items per decode request (codes.count)
    max_decode_bytes: int = 32 * MIB  # float32 reconstruction bytes one request may decode to
    max_symbols: int = 1 << 24  # code symbols one request may entropy-decode (items x code values)
    decode_chunk: int = 256  # items per decoder-graph run: bounds the graph's activations
    max_reply_bytes: int = 64 * MIB  # the server's --max-message-mib: a larger reply could not be sent

    def check(
        self, codec: Codec, count: int, what: str = "request", payloads: Sequence[bytes] | None = None
    ) -> int:
        """Refuse a request of `count` items for this codec when it is over a budget; cheap, decodes nothing.
        -> the float32 bytes decoding it will hold (what the in-flight budget takes).

        A bundle of any item size (spatial code maps) needs the payloads: their headers say what they decode to.
        """
        if count > self.max_items:
            raise OverBudget(f"{what} has {count:,} items; the limit is {self.max_items:,} items per request")
        if payloads is not None or codec.input.any_size:
            if payloads is None:
                raise ValueError("bundles of any item size are checked on their payloads")
            out_bytes, item_symbols = codec.item_costs(payloads)
            if int(out_bytes.sum()) > self.max_decode_bytes:
                raise OverBudget(
                    f"{what} would decode to {int(out_bytes.sum()):,} bytes ({count:,} items, the largest "
                    f"{int(out_bytes.max()):,} bytes); the per-request budget is {self.max_decode_bytes:,} bytes "
                    f"(--max-decode-mib): send fewer or smaller items of bundle {codec.bundle_id} per request"
                )
            if int(item_symbols.sum()) > self.max_symbols:
                raise OverBudget(
                    f"{what} would entropy-decode {int(item_symbols.sum()):,} code symbols; the per-request budget "
                    f"is {self.max_symbols:,}: send fewer or smaller items per request"
                )
            return int(out_bytes.sum())
        per_item = math.prod(codec.input.shape) * 4
        if count * per_item > self.max_decode_bytes:
            raise OverBudget(
                f"{what} would decode to {count:,} items x {per_item:,} bytes = {count * per_item:,} bytes; "
                f"the per-request budget is {self.max_decode_bytes:,} bytes (--max-decode-mib): "
                f"send at most {self.max_decode_bytes // per_item:,} items of bundle {codec.bundle_id} per request"
            )
        symbols = count * codec.payload.code_dims
        if symbols > self.max_symbols:
            raise OverBudget(
                f"{what} would entropy-decode {symbols:,} code symbols; the per-request budget is "
                f"{self.max_symbols:,} (send at most {self.max_symbols // codec.payload.code_dims:,} items)"
            )
        return count * per_item


class InFlight:
    """Bounds the decoded bytes all requests hold at once (reconstructions waiting for their reply included).

    Decoding is pipelined (unpack, the batched decoder graph, the reply), so a thread pool alone no longer
    bounds how many large outputs are alive: each request takes its decoded bytes from this budget before it
    starts and gives them back when its reply is built. Requests wait their turn, in order; none is refused.

    Only the event loop touches it, so it needs no lock: ``release`` is a plain call, which can neither wait nor be
    cancelled half-way (a lost release would shrink the budget for good), and a request that fits while nobody
    waits takes its bytes without suspending. Every single-item request passes here, so this is on the hot path.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def hold(self, nbytes: int) -> _Held:
        """``async with budget.hold(n):`` takes n bytes for the block (waiting for them), gives them back after."""
        return _Held(self, nbytes)

    async def acquire(self, nbytes: int) -> int:
        """Wait until `nbytes` fit, take them; -> what was taken (one request never waits for more than there is)."""
        nbytes = min(nbytes, self.capacity)
        if not self._waiting and self.used + nbytes <= self.capacity:
            self.used += nbytes
            return nbytes
        entry = (nbytes, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():  # granted, then cancelled before it could run
                self.release(nbytes)
            else:  # cancelled while waiting: those behind it may fit now
                with suppress(ValueError):
                    self._waiting.remove(entry)
                self._grant()
            raise
        return nbytes

    def release(self, nbytes: int) -> None:
        """Give bytes back, and grant them to the waiters (in order) that now fit."""
        self.used -= nbytes
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            nbytes, future = self._waiting[0]
            if future.done():  # its caller was cancelled
                self._waiting.popleft()
                continue
            if self.used + nbytes > self.capacity:
                return
            self._waiting.popleft()
            self.used += nbytes
            future.set_result(None)


class _Held:
    """InFlight.hold's context manager (a class: an async generator per request cost more than the budget itself)."""

    __slots__ = ("budget", "nbytes", "taken")

    def __init__(self, budget: InFlight, nbytes: int):
        self.budget, self.nbytes, self.taken = budget, nbytes, 0

    async def __aenter__(self) -> None:
        self.taken = await self.budget.acquire(self.nbytes)

    async def __aexit__(self, *exc: object) -> None:
        self.budget.release(self.taken)
