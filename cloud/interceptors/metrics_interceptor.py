"""Count every RPC by method and status code, time it, and count the items and bytes it decoded or ingested.

Put it first in the interceptor list so that it also sees calls that a later
interceptor (auth) rejects. Items and bytes are counted as responses go out:
Decode/DecodeStream answer each request with one response and Ingest
acknowledges each request with one ack, so a FIFO of request sizes pairs them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

import grpc

from ..metrics import CodecMetrics

_DECODE = ("Decode", "DecodeStream")
_INGEST = "Ingest"


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code(context: grpc.ServicerContext, default: str) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else default


class _Sizes:
    """Request sizes waiting for their response (see module doc)."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()

    def watch(self, requests: Iterator, size_of: Callable[[object], int]) -> Iterator:
        for req in requests:
            self.pending.append(size_of(req))
            yield req

    def pop(self) -> int:
        return self.pending.popleft() if self.pending else 0


def _decode_bytes(req) -> int:
    return len(req.codes.data)


def _ingest_bytes(req) -> int:
    return sum(len(it.payload) for it in req.items)


class MetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: CodecMetrics):
        self.m = metrics

    # -- per-response accounting ---------------------------------------------------------------------------
    def _count(self, name: str, response, nbytes: int) -> None:
        if name in _DECODE:
            self.m.decoded_items.inc(response.count)
            self.m.decoded_bytes.inc(nbytes)
        elif name == _INGEST:
            self.m.ingested_items.inc(len(response.item_ids) + len(response.item_seqs))
            self.m.ingested_duplicates.inc(response.duplicates)
            self.m.ingested_bytes.inc(nbytes)

    def _size_of(self, name: str) -> Callable[[object], int] | None:
        if name in _DECODE:
            return _decode_bytes
        if name == _INGEST:
            return _ingest_bytes
        return None

    # -- wrappers ------------------------------------------------------------------------------------------
    def _begin(self, labels: tuple[str, str]) -> float:
        self.m.started.inc(labels=labels)
        self.m.in_flight.add(1, labels)
        return time.perf_counter()

    def _end(self, labels: tuple[str, str], t0: float, code: str) -> None:
        self.m.in_flight.add(-1, labels)
        self.m.latency.observe(time.perf_counter() - t0, labels)
        self.m.handled.inc(labels=labels + (code,))

    def _unary_response(self, behavior, labels, stream_in: bool):
        name, size_of = labels[1], self._size_of(labels[1])

        def handler(request, context):
            t0 = self._begin(labels)
            code = "UNKNOWN"
            sizes = _Sizes()
            try:
                if stream_in and size_of:
                    request = sizes.watch(request, size_of)
                response = behavior(request, context)
                code = _code(context, "OK")
                if code == "OK" and size_of:
                    self._count(name, response, sizes.pop() if stream_in else size_of(request))
                return response
            except Exception:
                code = _code(context, "UNKNOWN")
                raise
            finally:
                self._end(labels, t0, code)

        return handler

    def _stream_response(self, behavior, labels, stream_in: bool):
        name, size_of = labels[1], self._size_of(labels[1])

        def handler(request, context):
            t0 = self._begin(labels)
            code = "UNKNOWN"
            sizes = _Sizes()
            try:
                if stream_in and size_of:
                    request = sizes.watch(request, size_of)
                for response in behavior(request, context):
                    if size_of:
                        self._count(name, response, sizes.pop() if stream_in else size_of(request))
                    yield response
                code = _code(context, "OK")
            except GeneratorExit:  # the client went away mid-stream
                code = "CANCELLED"
                raise
            except Exception:
                code = _code(context, "UNKNOWN")
                raise
            finally:
                self._end(labels, t0, code)

        return handler

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        labels = _split(handler_call_details.method)
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary_response(handler.unary_unary, labels, False))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._unary_response(handler.stream_unary, labels, True))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._stream_response(handler.unary_stream, labels, False))
        if handler.stream_stream:
            return handler._replace(stream_stream=self._stream_response(handler.stream_stream, labels, True))
        return handler
