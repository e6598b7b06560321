"""Start the decoding server.

    python -m cloud.server --bundles bundles/ --address 127.0.0.1:50051

Loads every bundle under --bundles (hash-verified), registers the Decoding
service (and the Storage service when --store is given), grpc.health.v1 and
reflection, and shuts down cleanly on SIGTERM or
SIGINT (in-flight RPCs get a grace period). To expose it beyond loopback:
--auth-token-file (bearer tokens), --tls-cert/--tls-key, --metrics-address
(Prometheus), --max-concurrent-rpcs; see docs/deployment.md.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from latent_codec.errors import CodecError
from latent_codec.pem import read_pem
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from .bundles import BundleRegistry
from .decoding_service import DecodingService
from .interceptors.auth_interceptor import AuthInterceptor, load_tokens
from .interceptors.logging_interceptor import LoggingInterceptor
from .interceptors.metrics_interceptor import MetricsInterceptor
from .metrics import CodecMetrics, MetricsHTTPServer, parse_address

log = logging.getLogger("cloud")
DECODING = pb.DESCRIPTOR.services_by_name["Decoding"].full_name
STORAGE = pb.DESCRIPTOR.services_by_name["Storage"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class Running:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    registry: BundleRegistry
    storage: object | None = None  # cloud.storage_service.StorageService, when a store is configured
    metrics: CodecMetrics | None = None
    metrics_http: MetricsHTTPServer | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_http.port if self.metrics_http else None

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.storage is not None:
            self.storage.close()  # type: ignore[attr-defined]
        if self.metrics_http is not None:
            self.metrics_http.close()


def keepalive_options(
    time_s: float = 60.0,
    timeout_s: float = 20.0,
    min_client_ping_s: float = 10.0,
    max_connection_age_s: float = 0.0,
) -> list[tuple[str, int]]:
    """Server keepalive: ping idle connections so dead peers (a phone gone offline, a dropped NAT entry) are
    noticed, accept client pings down to min_client_ping_s, and optionally recycle connections after
    max_connection_age_s so a load balancer can spread long-lived clients over new replicas."""
    opts = [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(min_client_ping_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if time_s > 0:  # 0 = the server sends no pings of its own
        opts += [
            ("grpc.keepalive_time_ms", int(time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(timeout_s * 1000)),
        ]
    if max_connection_age_s > 0:
        opts += [
            ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", 30_000),
        ]
    return opts


def build_server(
    bundles: Path | str,
    address: str = "127.0.0.1:0",
    workers: int = 8,
    threads: int = 0,
    store: str | None = None,
    *,
    auth_tokens: list[str] | None = None,
    tls: tuple[bytes, bytes] | None = None,
    metrics_address: str | None = None,
    max_concurrent_rpcs: int | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    keepalive: list[tuple[str, int]] | None = None,
) -> Running:
    """Build and start a server; returns it with the bound port (address port 0 = ephemeral).

    The keyword arguments are off by default (plaintext, no auth, no metrics, no bound): auth_tokens turns on
    bearer-token auth, tls=(key PEM, certificate chain PEM) serves TLS, metrics_address serves /metrics,
    max_concurrent_rpcs answers RESOURCE_EXHAUSTED beyond that many RPCs in flight.
    """
    registry = BundleRegistry(threads=threads)
    registry.load_dir(bundles)
    storage = None
    if store:
        from .storage_service import StorageService  # only with a store

        storage = StorageService.from_url(store, registry)
    metrics = CodecMetrics() if metrics_address else None
    # Order matters: metrics outermost (it sees calls auth rejects), then logging, then auth.
    interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor(metrics)] if metrics else []
    interceptors.append(LoggingInterceptor())
    if auth_tokens:
        interceptors.append(AuthInterceptor(auth_tokens))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        + list(keepalive or []),
        maximum_concurrent_rpcs=max_concurrent_rpcs or None,
    )
    pb_grpc.add_DecodingServicer_to_server(DecodingService(registry), server)
    services = [DECODING]
    if storage is not None:  # a server without a store does not offer Storage at all
        pb_grpc.add_StorageServicer_to_server(storage, server)
        services.append(STORAGE)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    metrics_http = None
    try:
        if tls is not None:
            port = server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise CodecError(f"cannot bind {address}")
        if metrics:
            metrics.bundles.set(len(registry.ids()))
            metrics_http = MetricsHTTPServer(metrics, metrics_address or "")
    except BaseException:
        server.stop(None)
        if storage is not None:
            storage.close()
        raise
    server.start()
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    for name in services:
        hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Running(server, port, hs, registry, storage, metrics, metrics_http)


def security_from_args(args: argparse.Namespace) -> tuple[list[str] | None, tuple[bytes, bytes] | None]:
    """Auth tokens and TLS key pair from the flags (None, None = plaintext without auth)."""
    tokens = load_tokens(args.auth_token_file) if args.auth_token_file else None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CodecError("--tls-cert and --tls-key go together")
    tls = (
        (read_pem(args.tls_key, "--tls-key"), read_pem(args.tls_cert, "--tls-cert"))
        if args.tls_cert
        else None
    )
    for name in ("max_concurrent_rpcs", "keepalive_time", "keepalive_timeout", "max_connection_age"):
        if getattr(args, name) < 0:
            raise CodecError(f"--{name.replace('_', '-')} must not be negative")
    if not 1 <= args.max_message_mib <= 2047:
        raise CodecError("--max-message-mib must be 1..2047")
    if args.metrics_address:
        parse_address(args.metrics_address)
    return tokens, tls


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aecodec-cloud", description=__doc__.split("\n")[0])
    p.add_argument(
        "--bundles", required=True, type=Path, help="a bundle directory, or a directory of bundles"
    )
    p.add_argument(
        "--address", default="127.0.0.1:50051", help="host:port to listen on (port 0 = any free port)"
    )
    p.add_argument("--workers", type=int, default=8, help="RPC worker threads")
    p.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads per decoder (0 = default)"
    )
    p.add_argument(
        "--store",
        default=None,
        help="where ingested items are kept: a SQLite file path or sqlite:///path, or postgresql://...",
    )
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here once serving")
    p.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="require 'authorization: Bearer <token>' with one of these tokens (one per line); "
        "health checks stay open",
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="serve TLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, default=None, help="the private key of --tls-cert (PEM)")
    p.add_argument(
        "--metrics-address",
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 0.0.0.0:9100; off by default)",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=256,
        help="answer RESOURCE_EXHAUSTED beyond this many RPCs in flight (0 = no bound)",
    )
    p.add_argument(
        "--max-message-mib",
        type=int,
        default=MAX_MESSAGE_BYTES >> 20,
        help="largest request or response message, MiB",
    )
    p.add_argument(
        "--keepalive-time", type=float, default=60.0, help="ping idle connections every N s (0 = never)"
    )
    p.add_argument(
        "--keepalive-timeout", type=float, default=20.0, help="drop a connection whose ping is unanswered"
    )
    p.add_argument(
        "--max-connection-age",
        type=float,
        default=0.0,
        help="close connections after N s so a load balancer can rebalance (0 = never)",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        tokens, tls = security_from_args(args)
        running = build_server(
            args.bundles,
            args.address,
            args.workers,
            args.threads,
            args.store,
            auth_tokens=tokens,
            tls=tls,
            metrics_address=args.metrics_address,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            max_message_bytes=args.max_message_mib << 20,
            keepalive=keepalive_options(
                args.keepalive_time, args.keepalive_timeout, max_connection_age_s=args.max_connection_age
            ),
        )
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # grpc raises RuntimeError when a port cannot be bound
        print(f"error: cannot listen on {args.address} ({exc})", file=sys.stderr)
        return 2
    ids = running.registry.ids()
    log.info(
        "serving %d bundle(s) on port %d (%s, %s): %s",
        len(ids),
        running.port,
        "TLS" if args.tls_cert else "plaintext",
        "token auth" if args.auth_token_file else "no auth",
        ", ".join(ids),
    )
    if running.metrics_port:
        log.info(
            "metrics on http://%s:%d/metrics", args.metrics_address.rpartition(":")[0], running.metrics_port
        )
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(args.port_file)
    stop = threading.Event()

    def _on_signal(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stop.wait()
    running.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
