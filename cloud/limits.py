"""What one request may cost the server, checked before any work: working memory, CPU time, symbols, items.

A few bytes can claim an item whose decoding holds gigabytes and takes a minute: the decoder graph's
activations, the integer hyper-decoder's int64 maps and the entropy decoder's arrays all grow with the
item's pixels, and the reconstruction is the smallest part. Every decoding request (Decode, each
DecodeStream message, Ingest validation, Fetch) is priced by its codec from the payload headers alone
(``Codec.decode_costs``: latent_codec/decode_cost.py, from the decoder graph measured at load) and refused
with RESOURCE_EXHAUSTED naming the limit before anything is decoded. What passes takes its bytes and seconds
from budgets all requests share (``InFlight``): one request's budget per decode thread, waited for in order.
docs/deployment.md states the memory bound this gives.
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
RUN_SHARE = 8  # one decoder run may hold at most 1/RUN_SHARE of the request budget (more items: more runs)
RELEASE_BYTES = 16 * MIB  # after a decoder run estimated above this, the runtime's arena is given back


class OverBudget(CodecError):
    """A request would cost more than a per-request budget (answered RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Cost:
    """What an admitted request holds (bytes) and takes (CPU seconds) while it decodes, and its decoder-run size."""

    nbytes: int
    seconds: float
    run_items: int = 256
    graph_bytes: int = (
        0  # the largest decoder run's working bytes (above RELEASE_BYTES: give them back after)
    )


@dataclass(frozen=True)
class Limits:
    max_items: int = 65536  # items per decode request (codes.count)
    max_decode_bytes: int = 64 * MIB  # working memory one request's decoding may hold (--max-decode-mib)
    max_decode_seconds: float = (
        10.0  # estimated CPU seconds one request's decoding may take (--max-decode-seconds)
    )
    max_symbols: int = 1 << 24  # code symbols one request may entropy-decode (items x code values)
    decode_chunk: int = 256  # items per decoder-graph run at most (fewer when an item's graph is large)
    decode_runs: int = 2  # decoder runs of one request at once (the decode threads)
    max_reply_bytes: int = 64 * MIB  # the server's --max-message-mib: a larger reply could not be sent

    def check(
        self, codec: Codec, payloads: Sequence[bytes], what: str = "request", reply_itemsize: int = 4
    ) -> Cost:
        """Refuse a request when it is over a budget; cheap, decodes nothing (PayloadError for a header that does
        not parse). -> what decoding it will hold and take. reply_itemsize: bytes per pixel of the reply (0: no
        reconstructions sent back)."""
        count = len(payloads)
        if count > self.max_items:
            raise OverBudget(f"{what} has {count:,} items; the limit is {self.max_items:,} items per request")
        costs = codec.decode_costs(payloads)
        if int(costs.symbols.sum()) > self.max_symbols:
            raise OverBudget(
                f"{what} would entropy-decode {int(costs.symbols.sum()):,} code symbols; the per-request budget "
                f"is {self.max_symbols:,}: send fewer or smaller items per request"
            )
        graph_max = int(costs.graph_bytes.max()) if count else 0
        run_items = max(1, min(self.decode_chunk, (self.max_decode_bytes // RUN_SHARE) // max(graph_max, 1)))
        working = costs.working_bytes(run_items * max(1, self.decode_runs))
        if working > self.max_decode_bytes:
            per_item = costs.item_bytes()
            largest = int(per_item.max()) if count else 0
            hint = (
                f"send at most {max(self.max_decode_bytes // max(largest, 1) - 1, 0):,} such items"
                if count > 1 and largest * 2 <= self.max_decode_bytes
                else "send smaller items, or raise --max-decode-mib"
            )
            raise OverBudget(
                f"{what} would hold {working:,} bytes while decoding ({count:,} items, the largest "
                f"{largest:,} bytes: its reconstruction, the decoder graph's working memory and the unpacked "
                f"codes); the per-request budget is {self.max_decode_bytes:,} bytes (--max-decode-mib) for "
                f"bundle {codec.bundle_id}: {hint}"
            )
        seconds = float(costs.seconds.sum())
        if seconds > self.max_decode_seconds:
            raise OverBudget(
                f"{what} would take about {seconds:.1f} s of CPU to decode ({count:,} items); the per-request "
                f"budget is {self.max_decode_seconds:g} s (--max-decode-seconds): send fewer or smaller items"
            )
        reply = int(costs.out_bytes.sum()) // 4 * reply_itemsize
        if reply > self.max_reply_bytes:
            raise OverBudget(
                f"the reply would hold {reply:,} bytes of reconstructions, over the {self.max_reply_bytes:,}-byte "
                f"message limit (--max-message-mib): send fewer items per request, or ask for "
                f"RECONSTRUCTION_FORMAT_NONE"
            )
        graph_run = int(math.fsum(sorted(costs.graph_bytes.tolist())[-run_items:])) + costs.run_bytes
        return Cost(working, seconds, run_items, graph_run)


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


class DecodeBudget:
    """The working bytes and CPU seconds all admitted requests hold at once: ``--decode-workers`` requests' budgets
    of each. ``async with budget.hold(cost):`` waits (in order) until both fit."""

    def __init__(self, limits: Limits, runs: int):
        runs = max(1, runs)
        self.bytes = InFlight(runs * limits.max_decode_bytes)
        self.micros = InFlight(max(1, int(runs * limits.max_decode_seconds * 1e6)))

    def hold(self, cost: Cost) -> _HeldCost:
        return _HeldCost(self, cost)


class _HeldCost:
    __slots__ = ("budget", "cost", "taken")

    def __init__(self, budget: DecodeBudget, cost: Cost):
        self.budget, self.cost, self.taken = budget, cost, (0, 0)

    async def __aenter__(self) -> None:
        nbytes = await self.budget.bytes.acquire(self.cost.nbytes)
        try:
            micros = await self.budget.micros.acquire(int(self.cost.seconds * 1e6))
        except BaseException:
            self.budget.bytes.release(nbytes)
            raise
        self.taken = (nbytes, micros)

    async def __aexit__(self, *exc: object) -> None:
        self.budget.bytes.release(self.taken[0])
        self.budget.micros.release(self.taken[1])
