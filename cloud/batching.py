"""Dynamic batching: concurrent requests for one bundle share one decoder-graph run.

Devices send what they capture, often one item per request. Each request's payloads are unpacked
and entropy-decoded on their own (a bad payload stays that request's error); only the synthesis
step, the decoder graph, is merged. A request goes to the graph at once when one of ``max_runs``
run slots is free, so a lone client pays no batching delay; while every slot is busy, arriving
requests wait, and when a run finishes they all go together, up to ``max_items`` items: under load
batches form by themselves (continuous batching). ``max_delay`` > 0 adds Triton's ``max_queue_delay``
on top: an idle bundle waits that long for company before it runs. A request that cannot merge (at least
``max_items`` items, or items whose graph runs are large) is decoded whole by ``decode``: the codec splits
it across the decode threads for every step, unpacking, entropy decoding and table selection as well as
synthesis (groups of ``SPLIT`` items or more, or a big item's tiles and strips: latent_codec/parallel.py),
so one big request uses every core the server decodes on. If a merged run fails, each request is run
alone, so one caller's failure never becomes another's.

One stream's requests batch too (``in_order``). A device that pipelines single-item requests over one
DecodeStream was served one request at a time, so its items never met in a decoder run and the stream's
rate was one over a request's latency. The stream's next requests are now read and started while earlier
ones decode, up to ``window`` requests, whose decoded bytes come from a budget shared by all streams until
their replies are sent (so clients that send fast and read slowly hold at most that much), and they merge here like concurrent clients' requests. What a caller
sees is unchanged: replies come in request order, and a request that is refused (or a message that does
not parse) ends the stream with its status after the replies to the requests before it. That needs the
abort to wait for its turn: requests worked on ahead get a ``DeferringContext``, whose ``abort`` raises
``Deferred`` instead of ending the call at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np

from latent_codec.codec import Codec, Side
from latent_codec.parallel import Workers

from .limits import InFlight

# Fewest items per part when one run is split across decode threads (below, ORT's per-run cost shows).
SPLIT = 32
# After a large decoder run, the runtime's memory is given back once the batcher has been idle this long: at once
# after every run cost a served map bundle a quarter of its CPU per item (docs/speed.md), and under steady load
# the arena is reused anyway; what an idle server keeps is what matters (docs/deployment.md).
RELEASE_IDLE_SECONDS = 0.5


@dataclass
class _Waiting:
    codes: np.ndarray
    side: Side
    future: asyncio.Future
    chunk: int
    release: bool


class Batcher:
    """Merges the synthesis work of concurrent requests for one codec (one per bundle per server)."""

    def __init__(
        self,
        codec: Codec,
        executor: Executor,
        max_items: int,
        max_delay: float = 0.0,
        chunk: int = 256,
        observe=None,
        max_runs: int = 2,
    ):
        self.codec, self.executor = codec, executor
        self.max_items, self.max_delay, self.chunk = max_items, max_delay, chunk
        self.max_runs = max(1, max_runs)  # decoder runs in flight at once (the decode threads)
        self.observe = observe  # called with the items of each decoder run (metrics), or None
        self._waiting: list[_Waiting] = []
        self._items = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0  # decoder runs started and not finished, merged or alone
        self._release_timer: asyncio.TimerHandle | None = None
        self._release_task: asyncio.Task | None = None
        self.releases = 0  # how many times the runtime's memory was given back (tests, metrics)

    @property
    def enabled(self) -> bool:
        return self.max_items > 1

    async def synthesise(
        self, codes: np.ndarray, side: Side, chunk: int = 0, release: bool = False
    ) -> np.ndarray:
        """The decoder graph on these codes, merged with other requests' when batching is on. chunk: items per
        decoder run at most (0: the batcher's); release: give the runtime's memory back after the run (a large
        item's working set would otherwise stay with the process)."""
        loop = asyncio.get_running_loop()
        chunk = min(chunk, self.chunk) if chunk > 0 and self.chunk > 0 else (chunk or self.chunk)
        if not self.enabled or len(codes) >= self.max_items or chunk < len(codes):
            return await self._run_alone(codes, side, chunk, release)
        future: asyncio.Future = loop.create_future()
        self._waiting.append(_Waiting(codes, side, future, chunk, release))
        self._items += len(codes)
        if self._items >= self.max_items or (self._running < self.max_runs and self.max_delay <= 0):
            self._flush()
        elif self._running < self.max_runs and self._timer is None:
            self._timer = loop.call_later(self.max_delay, self._flush)
        return await future

    async def decode(
        self, payloads: list[bytes], chunk: int, release: bool = False, workers: Workers | None = None
    ) -> np.ndarray:
        """A request decoded whole, items in [0, 1] (float32): the codec's ``decode`` on a decode thread, which
        splits the work over `workers` (the server's decode threads; latent_codec/parallel.py). The same array
        as unpacking and then synthesising, whatever the split (tests/test_split_decode.py)."""
        if self.observe is not None:
            self.observe(len(payloads))
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        try:
            return await loop.run_in_executor(
                self.executor, self.codec.decode, payloads, True, chunk, workers
            )
        finally:
            self._in_flight -= 1
            if release:
                self._release_when_idle(loop)

    async def _run_alone(
        self, codes: np.ndarray, side: Side, chunk: int = 0, release: bool = False
    ) -> np.ndarray:
        if self.observe is not None:
            self.observe(len(codes))
        loop = asyncio.get_running_loop()
        chunk = chunk or self.chunk
        self._in_flight += 1
        try:
            return await self._runs(loop, codes, side, chunk)
        finally:
            self._in_flight -= 1
            if release:
                self._release_when_idle(loop)

    def _release_when_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the runtime's memory back once no decoder run has started for RELEASE_IDLE_SECONDS."""
        if self._release_timer is not None:
            self._release_timer.cancel()
        self._release_timer = loop.call_later(RELEASE_IDLE_SECONDS, self._release_if_idle, loop)

    def _release_if_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._release_timer = None
        if self._in_flight or self._waiting:  # still busy: look again later
            self._release_timer = loop.call_later(RELEASE_IDLE_SECONDS, self._release_if_idle, loop)
            return
        self._release_task = loop.create_task(self._release(loop))

    async def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        await loop.run_in_executor(self.executor, self.codec.release_memory)
        self.releases += 1

    async def _runs(
        self, loop: asyncio.AbstractEventLoop, codes: np.ndarray, side: Side, chunk: int
    ) -> np.ndarray:
        parts = min(self.max_runs, len(codes) // SPLIT)
        if parts <= 1:
            return await loop.run_in_executor(self.executor, self.codec.synthesise, codes, side, chunk)
        # Pieces of at most `chunk` items, dealt to the parts; each is written into one output as it is done, so
        # the split holds the output once (not the parts' outputs and then their concatenation).
        n = len(codes)
        step = min(chunk if chunk > 0 else n, -(-n // parts))
        pieces = [(a, min(a + step, n)) for a in range(0, n, step)]
        made: list[np.ndarray] = []
        lock = threading.Lock()

        def fill(mine: list[tuple[int, int]]) -> None:
            for a, b in mine:
                piece = self.codec.synthesise(codes[a:b], {k: v[a:b] for k, v in side.items()})
                with lock:
                    if not made:
                        made.append(np.empty((n, *piece.shape[1:]), piece.dtype))
                made[0][a:b] = piece

        await asyncio.gather(
            *(loop.run_in_executor(self.executor, fill, pieces[r::parts]) for r in range(parts))
        )
        return made[0]

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch: list[_Waiting] = []
        items = 0
        while self._waiting and (
            not batch
            or items + len(self._waiting[0].codes)
            <= min(self.max_items, batch[0].chunk, self._waiting[0].chunk)
        ):
            w = self._waiting.pop(0)
            batch.append(w)
            items += len(w.codes)
        self._items -= items
        if batch:
            self._running += 1
            asyncio.get_running_loop().create_task(self._run(batch))

    def _finished(self) -> None:
        """A run ended: what waited while every slot was busy goes now, together."""
        self._running -= 1
        if self._waiting and self._running < self.max_runs:
            self._flush()

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            await self._merged(batch)
        finally:
            self._finished()

    async def _merged(self, batch: list[_Waiting]) -> None:
        live = [w for w in batch if not w.future.cancelled()]  # callers that went away need no rows
        if not live:
            return
        try:
            codes = np.concatenate([w.codes for w in live])
            side = {k: np.concatenate([w.side[k] for w in live]) for k in live[0].side}
            chunk = min(w.chunk for w in live)
            out = await self._run_alone(codes, side, chunk, any(w.release for w in live))
        except Exception:
            for w in live:  # isolate: each request alone, its own result or its own error
                try:
                    result = await self._run_alone(w.codes, w.side, w.chunk, w.release)
                    if not w.future.done():
                        w.future.set_result(result)
                except Exception as exc:
                    if not w.future.done():
                        w.future.set_exception(exc)
            return
        start = 0
        for w in live:
            end = start + len(w.codes)
            if not w.future.done():
                w.future.set_result(out[start:end])
            start = end


@dataclass(frozen=True)
class Batching:
    """Dynamic batching (cloud/batching.py): max_items <= 1 turns it off."""

    max_items: int = 256  # items per merged decoder run
    max_delay: float = 0.0  # seconds an idle bundle waits for company (0: run at once, batch only under load)
    chunk: int = 256  # items per decoder-graph run within a batch (bounds activations)
    max_runs: int = 2  # decoder runs in flight per bundle (the decode threads)
    stream_window: int = 32  # requests of one DecodeStream in work at once (1: one at a time, no read-ahead)


# ---- one stream's requests, read ahead ------------------------------------------------------------------------
Reply = TypeVar("Reply")
Ticket = TypeVar("Ticket")


class Deferred(Exception):
    """An abort of a request worked on ahead, to be sent when the stream reaches it."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class DeferringContext:
    """The stream's servicer context, except that ``abort`` raises ``Deferred`` instead of ending the call now."""

    def __init__(self, context: grpc.aio.ServicerContext):
        self._context = context

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        raise Deferred(code, details)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def in_order(
    requests: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    admit: Callable[[Any, Any], Awaitable[tuple[Ticket, int]]],
    work: Callable[[Ticket, Any], Awaitable[Reply]],
    window: int,
    budget: InFlight,
) -> AsyncGenerator[Reply, None]:
    """Each request's reply, in order: ``admit(request, ctx)`` checks it (cheap, in order) and says the bytes it will
    decode to; ``work(ticket, ctx)`` decodes it, up to `window` requests of this stream ahead of the replies.

    A request's bytes stay taken from `budget` (shared by all streams) until the consumer asks for the next reply
    or closes this generator, i.e. until its write of this one has completed (the client's flow-control window
    took it) or failed (the call is gone): gRPC holds an unsent reply in memory for as long as its client does
    not read, and `budget` bounds what all such replies (and the requests read ahead) hold together.
    """
    deferring = DeferringContext(context)
    ahead = asyncio.Semaphore(max(1, window))
    queue: asyncio.Queue[tuple[asyncio.Future, int] | BaseException | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in requests:
                ticket, nbytes = await admit(request, deferring)
                await ahead.acquire()
                taken = await budget.acquire(nbytes)
                queue.put_nowait((asyncio.ensure_future(work(ticket, deferring)), taken))
            queue.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # refused, unparseable, or the client went away:
            queue.put_nowait(exc)  # it ends the stream after the replies before it

    reader = asyncio.ensure_future(read())
    try:
        while True:
            entry = await queue.get()
            if entry is None:
                return
            if isinstance(entry, Deferred):
                await context.abort(entry.code, entry.details)
            if isinstance(entry, BaseException):
                raise entry
            task, taken = entry
            try:
                try:
                    reply = await task
                except Deferred as exc:
                    await context.abort(exc.code, exc.details)
                yield reply  # the bytes stay counted until the consumer has sent the reply, or the call is gone
            finally:
                ahead.release()
                budget.release(taken)
    finally:
        reader.cancel()
        while not queue.empty():  # the stream ended early: what was started ahead is not wanted
            left = queue.get_nowait()
            if isinstance(left, tuple):
                left[0].cancel()
                if left[0].done() and not left[0].cancelled():
                    left[0].exception()  # retrieved: a refusal nobody will see is not an "unhandled" error
                budget.release(left[1])
