"""Calls in flight, bounded per kind: callers without a token can never take the slots of callers with one.

grpc's own ``maximum_concurrent_rpcs`` counts every call alike, before any interceptor runs: 257 idle
Health/Watch streams, which need no token, made every call RESOURCE_EXHAUSTED, health checks and token
holders included (behind a load balancer, one client took a fleet out of rotation). Here each call is
counted in a pool of its kind and refused with RESOURCE_EXHAUSTED only when *its* pool is full:

- open streams (Health/Watch, no token needed): ``max_open_streams``;
- open unary calls (Health/Check): their own pool of ``max_concurrent_rpcs``, so probes always answer;
- everything else (authenticated when the server has tokens; a caller without a valid token is refused
  by auth at once and holds nothing): ``max_concurrent_rpcs``.

Outermost but for metrics and logging, so a refusal is counted and logged with its status.
"""

from __future__ import annotations

from typing import Any

import grpc

from .auth_interceptor import OPEN_PREFIXES
from .wrapping import Call, wrap


class ConcurrencyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, max_calls: int, max_open_streams: int, open_prefixes: tuple[str, ...] = OPEN_PREFIXES):
        self._limits = {"calls": max_calls, "open-unary": max_calls, "open-streams": max_open_streams}
        self._in_flight = dict.fromkeys(self._limits, 0)
        self._open = open_prefixes

    def in_flight(self, pool: str) -> int:
        return self._in_flight[pool]

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if method.startswith(self._open):
            streaming = handler.unary_stream is not None or handler.stream_stream is not None
            pool = "open-streams" if streaming else "open-unary"
        else:
            pool = "calls"
        limit = self._limits[pool]
        if limit <= 0:
            return handler
        counts = self._in_flight

        async def bounded(call: Call, request: Any, context: grpc.aio.ServicerContext) -> Any:
            if counts[pool] >= limit:  # the event loop is the only thread here: no lock needed
                what = "unauthenticated streams (Health/Watch)" if pool == "open-streams" else "calls"
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server has {limit} {what} in flight, its limit: retry later",
                )
            counts[pool] += 1
            try:
                return await call(request, context)
            finally:
                counts[pool] -= 1

        return wrap(handler, bounded)
