"""A request that fails inside a budget gives its bytes and seconds back (cloud/limits.py, cloud/batching.py;
issue 25). A lost release shrinks the budget for good: later requests wait forever. Every wait here is bounded
(asyncio.wait_for, gRPC deadlines) so a leak fails with a message instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

import grpc
import pytest

from cloud import decoding_service, lifecycle
from cloud.batching import in_order
from cloud.limits import Cost, DecodeBudget, InFlight, Limits
from cloud.server import build_server
from latent_codec import datasets
from latent_codec.codec import Codec
from latent_codec.container import to_batch
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from tests.helpers import CloudStub, tiny_bundle, wait_until


def _bounded(coro, seconds: float = 10.0):
    async def go():
        return await asyncio.wait_for(coro, seconds)

    return asyncio.run(go())


def test_a_request_failing_inside_a_hold_returns_its_bytes_and_seconds():
    async def go() -> tuple[int, int]:
        budget = DecodeBudget(Limits(max_decode_bytes=1000, max_decode_seconds=1.0), runs=1)
        with pytest.raises(RuntimeError):
            async with budget.hold(Cost(nbytes=600, seconds=0.5)):
                assert (budget.bytes.used, budget.micros.used) == (600, 500_000)
                raise RuntimeError("decoding failed")
        # the next request of the whole budget goes at once
        async with budget.hold(Cost(nbytes=1000, seconds=1.0)):
            pass
        return budget.bytes.used, budget.micros.used

    assert _bounded(go()) == (0, 0)


def test_a_block_that_raises_inside_an_in_flight_hold_gives_its_bytes_back():
    """InFlight.hold (a Fetch's reply bytes, cloud/storage_service.py): the bytes come back however the block ends,
    by an error or by the caller's cancellation."""

    async def go() -> list[int]:
        budget = InFlight(100)
        seen = []
        with suppress(RuntimeError):
            async with budget.hold(70):
                seen.append(budget.used)
                raise RuntimeError("decoding failed")
        seen.append(budget.used)

        async def holder() -> None:
            async with budget.hold(70):
                await asyncio.Event().wait()  # until cancelled

        task = asyncio.ensure_future(holder())
        await asyncio.sleep(0.01)
        seen.append(budget.used)
        task.cancel()
        await asyncio.gather(
            task, return_exceptions=True
        )  # (not suppress: that would swallow our own cancel)
        seen.append(budget.used)
        async with budget.hold(100):  # all of it, at once: nothing was lost
            seen.append(budget.used)
        return seen + [budget.used]

    assert _bounded(go()) == [70, 0, 70, 0, 100, 0]


def test_a_waiter_is_granted_only_bytes_that_fit():
    """Bytes given back that are too few for the first waiter leave it waiting; the budget never goes over."""

    async def go() -> dict:
        budget = InFlight(100)
        a = await budget.acquire(50)
        b = await budget.acquire(30)
        waiter = asyncio.ensure_future(budget.acquire(60))
        await asyncio.sleep(0)
        budget.release(b)  # 50 used: 60 more would be 110
        await asyncio.sleep(0)
        seen = {"granted while it did not fit": waiter.done(), "used": budget.used}
        budget.release(a)
        seen["granted once it fits"] = (await asyncio.wait_for(waiter, 5)) == 60
        seen["used at the end"] = budget.used
        return seen

    assert _bounded(go()) == {
        "granted while it did not fit": False,
        "used": 50,
        "granted once it fits": True,
        "used at the end": 60,
    }


def test_a_request_cancelled_while_waiting_for_seconds_returns_the_bytes_it_took():
    """_HeldCost takes bytes first, then seconds: cancelled between the two, the bytes come back."""

    async def go() -> dict:
        budget = DecodeBudget(Limits(max_decode_bytes=1000, max_decode_seconds=1.0), runs=1)
        first = await budget.micros.acquire(1_000_000)  # every second taken: the next hold waits for seconds
        waiting = asyncio.ensure_future(budget.hold(Cost(nbytes=300, seconds=0.5)).__aenter__())
        await asyncio.sleep(0.01)
        seen = {"bytes while waiting": budget.bytes.used}
        waiting.cancel()
        with suppress(asyncio.CancelledError):
            await waiting
        budget.micros.release(first)
        seen["bytes after the cancel"] = budget.bytes.used
        seen["seconds after"] = budget.micros.used
        return seen

    assert _bounded(go()) == {"bytes while waiting": 300, "bytes after the cancel": 0, "seconds after": 0}


def test_a_failing_request_of_a_read_ahead_stream_returns_its_bytes():
    """in_order: a request whose work fails, and one refused at admission, leave the stream budget as found."""

    async def requests():
        for k in range(6):
            yield k

    async def admit(request, ctx):
        if request == 4:
            raise ValueError("refused at admission")
        return request, 40

    async def work(ticket, ctx):
        if ticket == 2:
            raise RuntimeError("decoding failed")
        return ticket

    async def go() -> tuple[list[int], int]:
        budget = InFlight(100)
        got: list[int] = []
        with pytest.raises(RuntimeError, match="decoding failed"):
            async for reply in in_order(requests(), None, admit, work, 3, budget):
                got.append(reply)
        return got, budget.used

    assert _bounded(go()) == ([0, 1], 0)

    async def refused() -> tuple[list[int], int]:
        budget = InFlight(100)
        got: list[int] = []

        async def fine(ticket, ctx):
            return ticket

        with pytest.raises(ValueError, match="refused"):
            async for reply in in_order(requests(), None, admit, fine, 3, budget):
                got.append(reply)
        return got, budget.used

    assert _bounded(refused()) == ([0, 1, 2, 3], 0)


# ---- the same on a real server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


def test_decode_requests_that_fail_inside_the_budget_give_it_back_on_a_real_server(bundle, monkeypatch):
    """The decoder graph fails for every request (unary and streamed): each ends INTERNAL, and afterwards every
    budget the server keeps is back at zero and a good request is served."""
    budgets: list[DecodeBudget] = []
    streams: list[InFlight] = []

    class SeenBudget(DecodeBudget):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            budgets.append(self)

    class SeenInFlight(InFlight):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            streams.append(self)

    monkeypatch.setattr(lifecycle, "DecodeBudget", SeenBudget)
    monkeypatch.setattr(decoding_service, "InFlight", SeenInFlight)
    codec = Codec.open(bundle)
    payloads = codec.encode(datasets.load("digits", "test").x[:4])
    request = pb.DecodeRequest(codes=to_batch(codec, payloads))
    running = build_server(bundle.parent, "127.0.0.1:0", workers=2)
    try:
        (loaded,) = running.registry.entries()
        good = loaded.codec.synthesise

        def broken(*a, **kw):
            raise RuntimeError("the decoder graph failed")

        loaded.codec.synthesise = broken  # type: ignore[method-assign]
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = CloudStub(ch)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as exc:
                    stub.Decode(request, timeout=20)
                assert exc.value.code() == grpc.StatusCode.INTERNAL, exc.value.details()
            with pytest.raises(grpc.RpcError) as exc:
                list(stub.DecodeStream(iter([request] * 4), timeout=20))
            assert exc.value.code() == grpc.StatusCode.INTERNAL, exc.value.details()

            async def used() -> list[int]:
                return (
                    [b.bytes.used for b in budgets]
                    + [b.micros.used for b in budgets]
                    + [s.used for s in streams]
                )

            assert budgets and streams
            zero = [0] * (2 * len(budgets) + len(streams))
            # the stream's requests read ahead end on the server's loop after the client saw the status
            try:
                wait_until(lambda: running.call(used(), timeout=10) == zero, 20, "every budget back at zero")
            except AssertionError:
                raise AssertionError(
                    f"budgets still held after the failures: {running.call(used(), timeout=10)}"
                ) from None
            loaded.codec.synthesise = good  # type: ignore[method-assign]
            reply = stub.Decode(request, timeout=20)
            assert reply.count == 4
    finally:
        running.stop(grace=1.0)
