"""Prometheus metrics without a dependency: counters, gauges, histograms and a /metrics HTTP endpoint.

The cloud image stays small and the text format (version 0.0.4) is simple and
stable, so a few dozen lines of stdlib replace prometheus_client here.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from latent_codec.errors import CodecError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(names: Labels, values: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = list(zip(names, values)) + list(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()):
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Labels) -> Labels:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels}")
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()):
        super().__init__(name, help_text, labelnames)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, labels: Labels = ()) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, labels: Labels = ()) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def add(self, amount: float, labels: Labels = ()) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, value: float, labels: Labels = ()) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Iterable[str] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ):
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[Labels, list] = {}  # key -> [bucket counts..., +Inf count, sum]

    def observe(self, value: float, labels: Labels = ()) -> None:
        key = self._key(labels)
        i = bisect_left(self.buckets, value)  # first bucket with bound >= value
        with self._lock:
            d = self._data.setdefault(key, [0] * (len(self.buckets) + 1) + [0.0])
            d[i] += 1
            d[-1] += value

    def count(self, labels: Labels = ()) -> int:
        with self._lock:
            d = self._data.get(self._key(labels))
            return sum(d[:-1]) if d else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._data.items())
        out = self.header()
        for key, d in items:
            cum = 0
            for bound, n in zip(self.buckets + (math.inf,), d[:-1]):
                cum += n
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, (('le', _fmt(bound)),))} {cum}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(d[-1])}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {cum}")
        return out


M = TypeVar("M", bound="_Metric")


class Registry:
    """The metrics one server exposes; render() is the /metrics body."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def register(self, metric: M) -> M:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self._metrics for line in m.render()) + "\n"


class CodecMetrics:
    """The cloud's metrics: RPCs by method and status, latency, items and bytes decoded and ingested."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        rpc = ("grpc_service", "grpc_method")
        self.started = r.register(Counter("aecodec_grpc_server_started_total", "RPCs started.", rpc))
        self.handled = r.register(
            Counter(
                "aecodec_grpc_server_handled_total", "RPCs completed, by status code.", rpc + ("grpc_code",)
            )
        )
        self.latency = r.register(
            Histogram(
                "aecodec_grpc_server_handling_seconds",
                "Time from call start to the last response (streams: whole stream).",
                rpc,
            )
        )
        self.in_flight = r.register(Gauge("aecodec_grpc_server_in_flight", "RPCs being handled now.", rpc))
        self.decoded_items = r.register(
            Counter("aecodec_decoded_items_total", "Items decoded and returned (Decode, DecodeStream).")
        )
        self.decoded_bytes = r.register(
            Counter(
                "aecodec_decoded_payload_bytes_total",
                "Code payload bytes of requests answered by Decode/DecodeStream.",
            )
        )
        self.ingested_items = r.register(
            Counter("aecodec_ingested_items_total", "Items acknowledged by Ingest (duplicates included).")
        )
        self.ingested_duplicates = r.register(
            Counter(
                "aecodec_ingested_duplicate_items_total",
                "Acknowledged items the store already held (resends).",
            )
        )
        self.ingested_bytes = r.register(
            Counter(
                "aecodec_ingested_payload_bytes_total", "Payload bytes of requests acknowledged by Ingest."
            )
        )
        self.bundles = r.register(Gauge("aecodec_bundles_loaded", "Model bundles this server holds."))

    def render(self) -> str:
        return self.registry.render()


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of 'host:port' ('' host = all interfaces); a one-line error otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise CodecError(f"--metrics-address must be host:port, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsHTTPServer:
    """GET /metrics on host:port from a daemon thread; port 0 picks a free port (see .port)."""

    def __init__(self, metrics: CodecMetrics, address: str):
        host, port = parse_address(address)
        body_of = metrics.render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                body = body_of().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:  # scrapes every few seconds would flood the log
                pass

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise CodecError(f"cannot serve metrics on {address} ({exc.strerror or exc})") from None
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
