"""Wrapping a gRPC asyncio method handler: what every interceptor here shares.

A handler's behaviour comes in four kinds (unary or streaming request and response), and a
streaming-response behaviour either is an async generator or writes with ``context.write``.
``wrap`` gives an interceptor one shape to wrap: ``around(call, request, context)``, where
``call(request, context)`` runs the inner behaviour to completion (returning the unary response,
or None after writing the streamed ones), so ``around`` can time it, check it or observe how it
ended without caring about the kind.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Call = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Around = Callable[[Call, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _unary(behavior: Callable) -> Call:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


def _streaming(behavior: Callable) -> Call:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> None:
        result = behavior(request, context)
        if inspect.isasyncgen(result):
            async for response in result:
                await context.write(response)
        elif inspect.isawaitable(result):
            await result
        elif result is not None:  # a plain iterator of responses
            for response in result:
                await context.write(response)

    return call


def wrap(handler: grpc.RpcMethodHandler, around: Around, **replace: Any) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour run inside ``around`` (and fields such as request_deserializer replaced)."""
    for kind, streaming in (
        ("unary_unary", False),
        ("stream_unary", False),
        ("unary_stream", True),
        ("stream_stream", True),
    ):
        behavior = getattr(handler, kind)
        if behavior is not None:
            call = _streaming(behavior) if streaming else _unary(behavior)

            async def wrapped(request: Any, context: grpc.aio.ServicerContext, _call: Call = call) -> Any:
                return await around(_call, request, context)

            return handler._replace(**{kind: wrapped}, **replace)
    return handler


def status_of(exc: BaseException | None, context: grpc.aio.ServicerContext) -> str:
    """The status a client saw for a call that ended with ``exc`` (None: returned normally)."""
    if exc is None:
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "OK"
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    if isinstance(exc, asyncio.CancelledError):
        code = context.code()  # a status the handler chose but could not send (end_unread)
        if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK:
            return code.name
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"  # an unexpected exception: grpc answers UNKNOWN


class WriteTimeout(Exception):
    """A streamed reply its client did not take within the write deadline (``write_within``)."""

    def __init__(self, timeout: float):
        super().__init__(
            f"the client did not read its replies for {timeout:g} s (the server's --write-timeout): stream ended"
        )


async def write_within(context: grpc.aio.ServicerContext, message: Any, timeout: float) -> None:
    """``context.write`` that raises WriteTimeout when the client has not taken the message within `timeout`
    seconds (gRPC holds an unsent reply, and what it was built from, for as long as its client does not read; a
    stream that stays open that way holds budgets other callers wait for). timeout <= 0: no deadline.

    The caller gives back what the stream holds *first*, then ends the call with ``end_unread``: the call's
    status is queued behind the unsent reply, so ending it can wait for as long as the client does not read,
    and a budget given back only after that would make every other stream wait as long."""
    if timeout <= 0:
        await context.write(message)
        return
    try:
        await asyncio.wait_for(context.write(message), timeout)
    except TimeoutError:
        raise WriteTimeout(timeout) from None


async def end_unread(context: grpc.aio.ServicerContext, exc: WriteTimeout) -> None:
    """End a call whose client stopped reading (DEADLINE_EXCEEDED naming the write deadline); call it only once
    the call holds nothing others wait for.

    gRPC may be unable to send that status while the unsent reply is still queued (its write can neither finish
    nor be withdrawn): the status waits behind it, or the batch is refused. Either way the handler ends here,
    within a second, rather than waiting for the client; the call itself ends when the client goes away (its
    deadline, a disconnect) or with its connection (--max-connection-age), and so does the unsent reply."""
    try:
        await asyncio.wait_for(context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)), 1.0)
    except grpc.aio.AbortError:
        raise
    except Exception:  # the status could not go out now (TimeoutError, or gRPC's refused batch)
        raise asyncio.CancelledError(str(exc)) from None
