"""One log line per RPC: method, the status the client saw, duration, peer; never payloads or tokens.

The fields also travel as the record's ``extra`` (cloud/logs.py writes them as JSON with --log-format json).

Client errors (bad requests, refused tokens, cancelled streams) are logged as one line with their
status, never with a traceback; only an unexpected exception (a bug, answered UNKNOWN) is logged
with its traceback.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from .wrapping import Call, status_of, wrap

log = logging.getLogger("cloud.rpc")


class LoggingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        async def around(call: Call, request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            failure: BaseException | None = None
            try:
                return await call(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                code = status_of(failure, context)
                ms = round((time.perf_counter() - t0) * 1e3, 1)
                fields = {"rpc": method, "code": code, "ms": ms, "peer": context.peer()}
                line = "rpc=%s code=%s ms=%.1f peer=%s"
                if code == "UNKNOWN" and failure is not None:  # a bug, not a client error: with its traceback
                    log.error(line, method, code, ms, fields["peer"], extra=fields, exc_info=failure)
                else:
                    log.info(line, method, code, ms, fields["peer"], extra=fields)

        return wrap(handler, around)
