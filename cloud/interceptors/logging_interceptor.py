"""One structured log line per RPC: method, status code, duration, peer."""

from __future__ import annotations

import logging
import time

import grpc

log = logging.getLogger("cloud.rpc")


def _wrap_unary(behavior, method: str):
    def handler(request, context):
        t0 = time.perf_counter()
        code = "OK"
        try:
            return behavior(request, context)
        except Exception:
            code = context.code().name if context.code() else "UNKNOWN"
            raise
        finally:
            log.info(
                "rpc=%s code=%s ms=%.1f peer=%s",
                method,
                code,
                (time.perf_counter() - t0) * 1e3,
                context.peer(),
            )

    return handler


def _wrap_stream(behavior, method: str):
    def handler(request, context):
        t0 = time.perf_counter()
        code = "OK"
        try:
            yield from behavior(request, context)
        except Exception:
            code = context.code().name if context.code() else "UNKNOWN"
            raise
        finally:
            log.info(
                "rpc=%s code=%s ms=%.1f peer=%s",
                method,
                code,
                (time.perf_counter() - t0) * 1e3,
                context.peer(),
            )

    return handler


class LoggingInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        m = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, m))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, m))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream, m))
        if handler.stream_stream:
            return handler._replace(stream_stream=_wrap_stream(handler.stream_stream, m))
        return handler
