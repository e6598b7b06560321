"""Count every RPC by method and the status code the client saw, time it, and track how many are in flight.

First in the interceptor list, so it also sees calls that auth refuses or that do not parse. Items
and bytes decoded or ingested are domain figures the services record themselves (cloud/metrics.py).
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from ..metrics import CodecMetrics
from .wrapping import Call, status_of, wrap


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: CodecMetrics):
        self.m = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        labels = _split(handler_call_details.method)
        m = self.m

        async def around(call: Call, request: Any, context: grpc.aio.ServicerContext) -> Any:
            m.started.labels(*labels).inc()
            m.in_flight.labels(*labels).inc()
            t0 = time.perf_counter()
            failure: BaseException | None = None
            try:
                return await call(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                m.in_flight.labels(*labels).dec()
                m.latency.labels(*labels).observe(time.perf_counter() - t0)
                m.handled.labels(*labels, status_of(failure, context)).inc()

        return wrap(handler, around)
