"""One log line per RPC: method, the status the client saw, duration, peer; never payloads or tokens.

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
                ms = (time.perf_counter() - t0) * 1e3
                if code == "UNKNOWN" and failure is not None:
                    log.error(
                        "rpc=%s code=%s ms=%.1f peer=%s", method, code, ms, context.peer(), exc_info=failure
                    )
                else:
                    log.info("rpc=%s code=%s ms=%.1f peer=%s", method, code, ms, context.peer())

        return wrap(handler, around)
