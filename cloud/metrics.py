"""The cloud's Prometheus metrics, on prometheus_client, served at http://HOST:PORT/metrics (--metrics-address).

Per RPC (grpc_service, grpc_method): started, handled by the status code the client saw, in flight,
and handling time (metrics_interceptor.py). Domain figures, recorded by the services: items and
payload bytes decoded and ingested, decoder batch sizes and decode time, store commit time. Plus
prometheus_client's process and Python runtime collectors and a build-info metric.
"""

from __future__ import annotations

import platform
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.gc_collector import GCCollector

from latent_codec.errors import CodecError

VERSION = "0.2.0"
RPC = ("grpc_service", "grpc_method")
# Seconds: a small batch decodes in ~1 ms, a stream may last minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
# MSE on the [0, 1] scale: 40 dB down to 7 dB, so an item far above its bundle's usual error lands in its own bucket.
AUDIT_MSE_BUCKETS = (0.0001, 0.0003, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


class CodecMetrics:
    """Every metric the server exports, in a registry of its own (several servers may share a process in tests)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info("aecodec_build", "The server's build.", registry=r).info(
            {"version": VERSION, "python": platform.python_version()}
        )
        self.started = Counter("aecodec_grpc_server_started", "RPCs started.", RPC, registry=r)
        self.handled = Counter(
            "aecodec_grpc_server_handled",
            "RPCs completed, by the status code the client saw.",
            (*RPC, "grpc_code"),
            registry=r,
        )
        self.latency = Histogram(
            "aecodec_grpc_server_handling_seconds",
            "Time from call start to its end (streams: whole stream).",
            RPC,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("aecodec_grpc_server_in_flight", "RPCs being handled now.", RPC, registry=r)
        self.decoded_items = Counter(
            "aecodec_decoded_items", "Items decoded and returned (Decode, DecodeStream).", registry=r
        )
        self.decoded_bytes = Counter(
            "aecodec_decoded_payload_bytes",
            "Code payload bytes of requests answered by Decode/DecodeStream.",
            registry=r,
        )
        self.decode_seconds = Histogram(
            "aecodec_decode_seconds",
            "Time to decode one batch (entropy decoding and the decoder graph).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_items = Histogram(
            "aecodec_decode_batch_items", "Items per decoder run.", buckets=BATCH_BUCKETS, registry=r
        )
        self.ingested_items = Counter(
            "aecodec_ingested_items", "Items acknowledged by Ingest (duplicates included).", registry=r
        )
        self.ingested_duplicates = Counter(
            "aecodec_ingested_duplicate_items",
            "Acknowledged items the store already held (resends).",
            registry=r,
        )
        self.ingested_bytes = Counter(
            "aecodec_ingested_payload_bytes", "Payload bytes of requests acknowledged by Ingest.", registry=r
        )
        self.store_commit_seconds = Histogram(
            "aecodec_store_commit_seconds",
            "Time to commit one IngestRequest's items.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bundles = Gauge("aecodec_bundles_loaded", "Model bundles this server holds.", registry=r)
        self.test_psnr = Gauge(
            "aecodec_bundle_test_psnr_db",
            "PSNR each held bundle measured on its test split at export.",
            ("bundle",),
            registry=r,
        )
        self.reloads = Counter(
            "aecodec_bundle_reloads",
            "Bundle rescans, by outcome (changed, unchanged, failed).",
            ("outcome",),
            registry=r,
        )
        self.audit_items = Counter(
            "aecodec_audit_items",
            "Items devices sent their originals with, for field quality.",
            ("bundle",),
            registry=r,
        )
        self.audit_mse = Counter(
            "aecodec_audit_squared_error",
            "Sum of the audited items' MSE on the [0, 1] scale (mean = this / items).",
            ("bundle",),
            registry=r,
        )
        self.audit_item_mse = Histogram(
            "aecodec_audit_item_mse",
            "Each audited item's MSE on the [0, 1] scale: an anomaly score (items far above the bundle's usual error "
            "are unlike what it was trained on; docs/anomaly.md).",
            ("bundle",),
            buckets=AUDIT_MSE_BUCKETS,
            registry=r,
        )
        self.search_items = Counter(
            "aecodec_search_compared_items", "Stored binary codes compared by Search calls.", registry=r
        )
        self.audit_recent_psnr = Gauge(
            "aecodec_audit_recent_psnr_db",
            "PSNR of the mean MSE of the last 1,000 audited items.",
            ("bundle",),
            registry=r,
        )


def publish_bundles(metrics: CodecMetrics, entries) -> None:
    """Per-bundle gauges for the bundles held now (after start-up and every reload)."""
    metrics.bundles.set(len(entries))
    metrics.test_psnr.clear()
    for lb in entries:
        psnr = ((lb.codec.manifest.metrics if lb.codec.manifest else {}).get("test") or {}).get("psnr")
        if isinstance(psnr, (int, float)):
            metrics.test_psnr.labels(lb.bundle_id).set(float(psnr))


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CodecError(f"--metrics-address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(
        self, format: str, *args: object
    ) -> None:  # scrapes every few seconds would flood the log
        pass


class MetricsHTTPServer:
    """GET /metrics in the Prometheus text format (404 elsewhere), on a thread of its own."""

    def __init__(self, metrics: CodecMetrics, address: str):
        host, port = parse_address(address)
        metrics_app = make_wsgi_app(metrics.registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: scrape /metrics\n"]
            return metrics_app(environ, start_response)

        try:
            self._server: WSGIServer = make_server(host, port, app, handler_class=_QuietHandler)
        except OSError as exc:
            raise CodecError(f"cannot serve metrics on {address} ({exc.strerror or exc})") from None
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
