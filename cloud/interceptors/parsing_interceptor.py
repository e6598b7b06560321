"""Parse request messages inside the call, after authentication, and answer garbage with INVALID_ARGUMENT.

grpc parses a request before any handler runs, so an unparseable body from an anonymous client
used to end as INTERNAL ("Exception deserializing request") with per-call state left behind.
This interceptor, innermost in the chain, takes the deserializer off every handler (our services,
health and reflection alike): the interceptors before it see raw bytes, the auth interceptor
refuses without ever parsing, and a body that does not parse is a clean INVALID_ARGUMENT that
names the expected message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .wrapping import Call, wrap

Deserializer = Callable[[bytes], Any]


async def _invalid(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request body is not a valid message for {method} ({type(exc).__name__})",
    )


def _parse_one(deserialize: Deserializer, method: str) -> Callable[..., Awaitable[Any]]:
    async def around(call: Call, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = deserialize(raw)
        except Exception as exc:
            await _invalid(context, method, exc)
        return await call(request, context)

    return around


class Unparsed(Exception):
    """A streamed message that does not parse. Raised where the handler reads it, answered here: a handler that
    reads ahead (cloud/batching.py) first sends the replies to the messages before it."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


def _parse_stream(deserialize: Deserializer, method: str) -> Callable[..., Awaitable[Any]]:
    async def around(call: Call, raw_iter: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async def parsed() -> AsyncIterator[Any]:
            async for raw in raw_iter:
                try:
                    message = deserialize(raw)
                except Exception as exc:
                    raise Unparsed(exc) from None
                yield message

        try:
            return await call(parsed(), context)
        except Unparsed as exc:
            await _invalid(context, method, exc.cause)

    return around


class ParsingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        streaming = handler.stream_unary is not None or handler.stream_stream is not None
        make = _parse_stream if streaming else _parse_one
        return wrap(handler, make(handler.request_deserializer, method), request_deserializer=None)
