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

import numpy as np

from latent_codec.codec import Codec
from latent_codec.decode_cost import DecodeCosts
from latent_codec.errors import CodecError

MIB = 1 << 20
RUN_SHARE = 8  # one decoder run may hold at most 1/RUN_SHARE of the request budget (more items: more runs)
RELEASE_BYTES = 16 * MIB  # after a decoder run estimated above this, the runtime's arena is given back
# What docs/deployment.md states: 8 concurrent worst-case requests (the largest the budgets admit) raise a server's
# peak RSS by less than this with the defaults (2 decode threads, --max-decode-mib 64). Not enforced here: the
# budgets give it. The one source of the figure: tests/test_hostile_round2.py checks the doc says it and measures
# it for every bundle kind, tests/test_hostile.py for streams that never read, bench.hostile reports against it.
PEAK_BOUND_MIB = 500


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
    threads: int = 1  # decode threads the request's work may be split over (priced for that many)


@dataclass(frozen=True)
class Limits:
    max_items: int = 65536  # items per decode request (codes.count)
    max_decode_bytes: int = 64 * MIB  # working memory one request's decoding may hold (--max-decode-mib)
    max_decode_seconds: float = (
        10.0  # estimated CPU seconds one request's decoding may take (--max-decode-seconds)
    )
    max_symbols: int = 1 << 24  # code symbols one request may entropy-decode (--max-decode-symbols)
    decode_chunk: int = 256  # items per decoder-graph run at most (fewer when an item's graph is large)
    decode_runs: int = 2  # decoder runs of one request at once (the decode threads)
    max_reply_bytes: int = 64 * MIB  # the server's --max-message-mib: a larger reply could not be sent

    def check(
        self,
        codec: Codec,
        payloads: Sequence[bytes],
        what: str = "request",
        reply_itemsize: int = 4,
        split: bool = False,
    ) -> Cost:
        """Refuse a request when it is over a budget; cheap, decodes nothing (PayloadError for a header that does
        not parse). -> what decoding it will hold and take. reply_itemsize: bytes per pixel of the reply (0: no
        reconstructions sent back). split: priced as decoded over the ``decode_runs`` threads (Decode's whole
        requests: Codec.decode_costs(payloads, threads)) when that fits the budgets, else on one thread, as
        without it (``Cost.threads`` says which: the caller decodes it so)."""
        count = len(payloads)
        if count > self.max_items:
            raise OverBudget(f"{what} has {count:,} items; the limit is {self.max_items:,} items per request")
        threads = max(1, self.decode_runs) if split else 1
        costs = codec.decode_costs(payloads, threads)
        refusal = self._refusal(costs, reply_itemsize)
        if refusal is not None and threads > 1:
            # What one thread may decode is still admitted, on one thread; what not, is refused at its least cost.
            threads, costs = 1, codec.decode_costs(payloads, 1)
            refusal = self._refusal(costs, reply_itemsize)
        if refusal is not None:
            raise OverBudget(self._explain(refusal, costs, what, codec.bundle_id, reply_itemsize))
        run_items = self.run_items(costs)
        graph_run = int(math.fsum(sorted(costs.graph_bytes.tolist())[-run_items:])) + costs.run_bytes
        return Cost(
            costs.working_bytes(run_items * max(1, self.decode_runs)),
            float(costs.seconds.sum()),
            run_items,
            graph_run,
            threads,
        )

    def run_items(self, costs: DecodeCosts) -> int:
        """Items per decoder run: at most ``decode_chunk``, and as many as fit 1/RUN_SHARE of the budget."""
        graph_max = int(costs.graph_bytes.max()) if len(costs.graph_bytes) else 0
        return max(1, min(self.decode_chunk, (self.max_decode_bytes // RUN_SHARE) // max(graph_max, 1)))

    def _refusal(self, costs: DecodeCosts, reply_itemsize: int) -> str | None:
        """The first budget these costs are over ("symbols", "bytes", "seconds", "reply"), or None: the one
        admission rule, used for requests and for the count a refusal suggests."""
        if int(costs.symbols.sum()) > self.max_symbols:
            return "symbols"
        if costs.working_bytes(self.run_items(costs) * max(1, self.decode_runs)) > self.max_decode_bytes:
            return "bytes"
        if float(costs.seconds.sum()) > self.max_decode_seconds:
            return "seconds"
        if int(costs.out_bytes.sum()) // 4 * reply_itemsize > self.max_reply_bytes:
            return "reply"
        return None

    def most_like(self, costs: DecodeCosts, k: int, reply_itemsize: int = 4) -> int:
        """The most copies of item k (of these costs) one request may carry within every budget: what a refusal
        tells the caller to send (0: not even one). Found on the sums in closed form (a refusal must stay cheap),
        then confirmed at the boundary by the admission rule itself, so the count is exact."""
        one = {f: np.asarray(getattr(costs, f))[k : k + 1] for f in _PER_ITEM}

        def copies(n: int) -> DecodeCosts:
            return DecodeCosts(**{f: np.repeat(v, n) for f, v in one.items()}, run_bytes=costs.run_bytes)

        out, graph = int(one["out_bytes"][0]), int(one["graph_bytes"][0])
        unpack, symbols, seconds = (
            int(one["unpack_bytes"][0]),
            int(one["symbols"][0]),
            float(one["seconds"][0]),
        )
        runs = self.run_items(copies(1)) * max(1, self.decode_runs)

        def fits(n: int) -> bool:  # _refusal on n copies, in closed form
            working = n * (out + unpack) + min(n, runs) * graph + costs.run_bytes
            return (
                n * symbols <= self.max_symbols
                and working <= self.max_decode_bytes
                and n * seconds <= self.max_decode_seconds
                and n * out // 4 * reply_itemsize <= self.max_reply_bytes
            )

        lo, hi = 0, self.max_items
        while lo < hi:  # every budget grows with the count: the largest count that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        while (
            lo > 0 and self._refusal(copies(lo), reply_itemsize) is not None
        ):  # float sums may differ by a hair
            lo -= 1
        while lo < self.max_items and self._refusal(copies(lo + 1), reply_itemsize) is None:
            lo += 1
        return lo

    def _explain(
        self, refusal: str, costs: DecodeCosts, what: str, bundle_id: str, reply_itemsize: int
    ) -> str:
        count = len(costs.out_bytes)
        per_item = costs.item_bytes()
        k = int(np.argmax(per_item)) if count else 0
        most = self.most_like(costs, k, reply_itemsize) if count else 0
        hint = f"send at most {most:,} such items" if count > 1 and most >= 1 else ""
        if refusal == "symbols":
            symbols = int(costs.symbols.sum())
            return (
                f"{what} would entropy-decode {symbols:,} code symbols; the per-request budget is "
                f"{self.max_symbols:,} (--max-decode-symbols): {hint or 'send fewer or smaller items per request'}"
            )
        if refusal == "bytes":
            working = costs.working_bytes(self.run_items(costs) * max(1, self.decode_runs))
            return (
                f"{what} would hold {working:,} bytes while decoding ({count:,} items, the largest "
                f"{int(per_item[k]) if count else 0:,} bytes: its reconstruction, the decoder graph's working memory "
                f"and the unpacked codes); the per-request budget is {self.max_decode_bytes:,} bytes "
                f"(--max-decode-mib) for bundle {bundle_id}: {hint or 'send smaller items, or raise --max-decode-mib'}"
            )
        if refusal == "seconds":
            return (
                f"{what} would take about {float(costs.seconds.sum()):.1f} s of CPU to decode ({count:,} items); the "
                f"per-request budget is {self.max_decode_seconds:g} s (--max-decode-seconds): "
                f"{hint or 'send fewer or smaller items'}"
            )
        reply = int(costs.out_bytes.sum()) // 4 * reply_itemsize
        return (
            f"the reply would hold {reply:,} bytes of reconstructions, over the {self.max_reply_bytes:,}-byte "
            f"message limit (--max-message-mib): {hint or 'send fewer items per request'}, or ask for "
            f"RECONSTRUCTION_FORMAT_NONE"
        )


_PER_ITEM = ("out_bytes", "graph_bytes", "unpack_bytes", "symbols", "seconds")


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
