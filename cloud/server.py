"""Start the decoding server.

    python -m cloud.server --bundles bundles/ --address 127.0.0.1:50051 [--store cloud.db]

Loads every bundle under --bundles (hash- and id-verified), serves the Decoding service (and the
Storage service when --store is given), grpc.health.v1 per service and reflection of what is
registered. The server runs on grpc's asyncio engine: an idle or slow stream costs a coroutine,
not a thread, so long-lived streams never starve other calls; decoding and store calls run on
bounded thread pools. To expose it beyond loopback: --auth-token-file (bearer tokens bound to
devices), --tls-cert/--tls-key, --metrics-address (Prometheus); see docs/deployment.md.

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT; in-flight calls get --grace seconds);
2 when it cannot start (the one-line error names the flag, file or address).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from latent_codec.envargs import apply_env
from latent_codec.envargs import describe as describe_env
from latent_codec.errors import CodecError
from latent_codec.pem import read_pem
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from .allocator import tune_malloc
from .audit import Audit
from .bundles import BundleRegistry, ReloadReport
from .decoding_service import Batching, DecodingService
from .interceptors.auth_interceptor import AuthInterceptor
from .interceptors.logging_interceptor import LoggingInterceptor
from .interceptors.metrics_interceptor import MetricsInterceptor
from .interceptors.parsing_interceptor import ParsingInterceptor
from .limits import MIB, Limits
from .logs import configure as configure_logs
from .metrics import CodecMetrics, MetricsHTTPServer, parse_address, publish_bundles
from .tenancy import Principal, load_tokens

log = logging.getLogger("cloud")
DECODING = pb.DESCRIPTOR.services_by_name["Decoding"].full_name
STORAGE = pb.DESCRIPTOR.services_by_name["Storage"].full_name
MAX_MESSAGE_BYTES = 64 * MIB
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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


@dataclass
class ServerConfig:
    """Everything a server needs; the CLI's flags are these fields (see parse_args)."""

    bundles: Path
    address: str = "127.0.0.1:0"  # host:port (port 0 = any free port)
    decode_workers: int = 2  # threads that decode (CPU-bound: about the core count); each holds <= one budget
    # ONNX Runtime intra-op threads per decoder session. 1: the decode workers are the parallelism; ORT's default
    # (one per core) under 2 workers oversubscribed the cores: 8,400 against 18,300 items/s in-process.
    threads: int = 1
    store: str | None = None  # SQLite path / sqlite:///path / postgresql://...; None: no Storage service
    store_workers: int = 8  # threads for store calls (and PostgreSQL connections)
    auth_tokens: dict[str, Principal] | list[str] | None = None  # None: no auth (loopback use)
    tls: tuple[bytes, bytes] | None = None  # (private key PEM, certificate chain PEM)
    metrics_address: str | None = None  # host:port for /metrics
    max_concurrent_rpcs: int = 256  # RESOURCE_EXHAUSTED beyond this many calls in flight (0 = no bound)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    limits: Limits = field(default_factory=Limits)
    keepalive: list[tuple[str, int]] = field(default_factory=keepalive_options)
    reuse_port: bool = (
        False  # share the port with another process (SO_REUSEPORT); off: a busy port is an error
    )
    health_interval: float = 5.0  # seconds between store write checks that drive health
    batching: Batching = field(default_factory=Batching)  # dynamic batching (max_items <= 1: off)
    reload_interval: float = 0.0  # seconds between rescans of the bundle directory (0: only on SIGHUP)


@dataclass
class Running:
    """A started server: its port, health, registry and store; stop() shuts it down within the grace period."""

    port: int
    registry: BundleRegistry
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    server: grpc.aio.Server
    health: HealthServicer
    services: list[str]
    decode_executor: ThreadPoolExecutor
    store_executor: ThreadPoolExecutor
    storage: Any = None  # cloud.storage_service.StorageService, when a store is configured
    metrics: CodecMetrics | None = None
    metrics_http: MetricsHTTPServer | None = None
    monitor: asyncio.Task | None = None
    poller: asyncio.Task | None = None
    audit: Audit | None = None
    stopped: bool = False
    draining: bool = False

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_http.port if self.metrics_http else None

    def call(self, coro: Any, timeout: float | None = 30.0) -> Any:
        """Run a coroutine on the server's loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def not_serving(self) -> None:
        """Report NOT_SERVING for the server and every service from now on (the start of a shutdown)."""
        self.draining = True
        self.call(self.health.enter_graceful_shutdown())

    def reload(self) -> ReloadReport:
        """Rescan the bundle directory now (what SIGHUP does); health and metrics follow what is held."""
        return self.call(self.areload(), timeout=600)

    async def areload(self) -> ReloadReport:
        loop = asyncio.get_running_loop()
        report = await loop.run_in_executor(self.store_executor, self.registry.reload)
        if self.metrics is not None:
            outcome = "failed" if report.errors else "changed" if report.changed else "unchanged"
            self.metrics.reloads.labels(outcome).inc()
            publish_bundles(self.metrics, self.registry.entries())
        await self.update_health()
        return report

    async def update_health(self) -> None:
        """SERVING while at least one bundle is held (a server with none cannot decode anything)."""
        if self.draining:
            return
        status = SERVING if len(self.registry) else NOT_SERVING
        for name in ("", DECODING):
            await self.health.set(name, status)

    def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING, then stop: in-flight calls get `grace` seconds, then are cancelled. Bounded."""
        if self.stopped:
            return
        self.stopped = True

        async def shutdown() -> None:
            for task in (self.monitor, self.poller):
                if task is not None:
                    task.cancel()
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)

        try:
            self.call(shutdown(), timeout=grace + 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.decode_executor.shutdown(wait=False, cancel_futures=True)
            self.store_executor.shutdown(wait=False, cancel_futures=True)
            if self.storage is not None:
                self.storage.close()
            if self.metrics_http is not None:
                self.metrics_http.close()


async def _monitor_store(running: Running, interval: float) -> None:
    """Health follows the store: a write check every `interval` s; failing it turns Storage NOT_SERVING."""
    loop = asyncio.get_running_loop()
    serving = True
    while True:
        await asyncio.sleep(interval)
        try:
            await loop.run_in_executor(running.store_executor, running.storage.store.check_writable)
            ok = True
        except Exception as exc:  # StoreError or anything the driver raises: the store cannot take writes
            ok = False
            if serving:
                log.warning("store write check failed, Storage is NOT_SERVING: %s", exc)
        if ok != serving:
            if ok:
                log.info("store write check passes again, Storage is SERVING")
            serving = ok
            await running.health.set(STORAGE, SERVING if ok else NOT_SERVING)


async def _poll_bundles(running: Running, interval: float) -> None:
    """Rescan --bundles every `interval` seconds: rollouts without a signal (e.g. a mounted volume)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await running.areload()
        except Exception:  # a scan that fails must not end the polling
            log.exception("bundle rescan failed")


def build_server(
    bundles: Path | str,
    address: str = "127.0.0.1:0",
    workers: int = ServerConfig.decode_workers,
    threads: int = ServerConfig.threads,
    store: str | None = None,
    **options: Any,
) -> Running:
    """Build and start a server (options: the other ServerConfig fields); returns it with its bound port."""
    return start(ServerConfig(Path(bundles), address, workers, threads, store, **options))


def check_address_free(address: str) -> None:
    """A one-line error when another process listens on address (before grpc tries, and logs a C-level error)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CodecError(f"cannot listen on {address}: {exc.strerror}") from None
    for family, kind, proto, _name, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
            )  # as grpc does: TIME_WAIT is not "in use"
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CodecError(
                        f"cannot listen on {address}: the address is in use (another server? --reuse-port "
                        f"shares a port on purpose)"
                    ) from None


def start(config: ServerConfig) -> Running:
    if not config.reuse_port:
        check_address_free(config.address)
    registry = BundleRegistry(threads=config.threads)
    registry.load_dir(config.bundles)
    config.batching = replace(
        config.batching, max_runs=max(1, config.decode_workers)
    )  # one run per decode thread
    if config.limits.max_decode_bytes > config.max_message_bytes:  # a float32 reply must fit in one message
        config.limits = replace(config.limits, max_decode_bytes=config.max_message_bytes)
    config.limits = replace(config.limits, max_reply_bytes=config.max_message_bytes)
    metrics = CodecMetrics() if config.metrics_address else None
    audit = Audit(metrics)
    decode_executor = ThreadPoolExecutor(
        max_workers=max(1, config.decode_workers), thread_name_prefix="decode"
    )
    store_executor = ThreadPoolExecutor(max_workers=max(1, config.store_workers), thread_name_prefix="store")
    storage = None
    metrics_http = None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-aio", daemon=True)
    try:
        if config.store:
            from .storage_service import StorageService  # only with a store
            from .store import open_store

            s = open_store(config.store)
            try:
                s.check_writable()  # a read-only store is a start-up error, not a server failing every Ingest
            except CodecError as exc:
                s.close()
                raise CodecError(f"--store {config.store}: the store does not take writes ({exc})") from None
            storage = StorageService(
                s, registry, store_executor, decode_executor, config.limits, metrics, audit
            )
        if metrics is not None:
            publish_bundles(metrics, registry.entries())
            metrics_http = MetricsHTTPServer(metrics, config.metrics_address or "")
        thread.start()
        server, port, health, services = asyncio.run_coroutine_threadsafe(
            _serve(config, registry, storage, decode_executor, metrics, audit), loop
        ).result(timeout=60)
    except BaseException:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        decode_executor.shutdown(wait=False)
        store_executor.shutdown(wait=False)
        if storage is not None:
            storage.close()
        if metrics_http is not None:
            metrics_http.close()
        raise
    running = Running(
        port,
        registry,
        loop,
        thread,
        server,
        health,
        services,
        decode_executor,
        store_executor,
        storage,
        metrics,
        metrics_http,
        audit=audit,
    )
    running.call(running.update_health())
    if config.reload_interval > 0:
        running.poller = running.call(_create_task(_poll_bundles(running, config.reload_interval)))
    if storage is not None and config.health_interval > 0:
        running.monitor = asyncio.run_coroutine_threadsafe(
            _create_monitor(running, config.health_interval), loop
        ).result()
    return running


async def _create_monitor(running: Running, interval: float) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(_monitor_store(running, interval))


async def _create_task(coro: Any) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(coro)


async def _serve(
    config: ServerConfig,
    registry: BundleRegistry,
    storage: Any,
    decode_executor: ThreadPoolExecutor,
    metrics: CodecMetrics | None,
    audit: Audit,
) -> tuple[grpc.aio.Server, int, HealthServicer, list[str]]:
    # Order matters: metrics outermost (it sees calls auth refuses), then logging, then auth, and parsing last,
    # so that nothing is parsed before the caller is authenticated.
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics)] if metrics else []
    interceptors.append(LoggingInterceptor())
    if config.auth_tokens:
        interceptors.append(AuthInterceptor(config.auth_tokens))
    interceptors.append(ParsingInterceptor())
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        *config.keepalive,
    ]
    server = grpc.aio.server(
        interceptors=interceptors, options=options, maximum_concurrent_rpcs=config.max_concurrent_rpcs or None
    )
    pb_grpc.add_DecodingServicer_to_server(
        DecodingService(registry, decode_executor, config.limits, metrics, config.batching, audit), server
    )
    services = [DECODING]
    if storage is not None:  # a server without a store does not offer Storage at all
        pb_grpc.add_StorageServicer_to_server(storage, server)
        services.append(STORAGE)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((*services, "grpc.health.v1.Health", reflection.SERVICE_NAME), server)
    try:
        if config.tls is not None:
            port = server.add_secure_port(config.address, grpc.ssl_server_credentials([config.tls]))
        else:
            port = server.add_insecure_port(config.address)
    except RuntimeError:  # grpc's message is multi-line; say what matters
        raise CodecError(
            f"cannot listen on {config.address}: the address is in use or not available "
            f"(another server? --reuse-port shares a port on purpose)"
        ) from None
    if port == 0:
        raise CodecError(f"cannot listen on {config.address}")
    await server.start()
    for name in ["", *services]:
        await health.set(name, SERVING)
    return server, port, health, services


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The flags as a ServerConfig; a one-line CodecError naming the flag for nonsense values."""
    tokens = load_tokens(args.auth_token_file) if args.auth_token_file else None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CodecError("--tls-cert and --tls-key go together")
    tls = (
        (read_pem(args.tls_key, "--tls-key"), read_pem(args.tls_cert, "--tls-cert"))
        if args.tls_cert
        else None
    )
    for name in (
        "max_concurrent_rpcs",
        "keepalive_time",
        "keepalive_timeout",
        "max_connection_age",
        "grace",
        "health_interval",
        "batch_max_items",
        "batch_delay_ms",
        "reload_interval",
        "drain",
    ):
        if getattr(args, name) < 0:
            raise CodecError(f"--{name.replace('_', '-')} must not be negative")
    for name in ("decode_workers", "store_workers", "max_decode_mib", "stream_window"):
        if getattr(args, name) < 1:
            raise CodecError(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.max_message_mib <= 2047:
        raise CodecError("--max-message-mib must be 1..2047")
    if args.max_decode_mib > args.max_message_mib:
        raise CodecError(
            "--max-decode-mib must not exceed --max-message-mib (a reply must fit in one message)"
        )
    if args.metrics_address:
        parse_address(args.metrics_address)
    return ServerConfig(
        bundles=args.bundles,
        address=args.address,
        decode_workers=args.decode_workers,
        threads=args.threads,
        store=args.store,
        store_workers=args.store_workers,
        auth_tokens=tokens,
        tls=tls,
        metrics_address=args.metrics_address,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_message_bytes=args.max_message_mib * MIB,
        limits=Limits(max_decode_bytes=args.max_decode_mib * MIB),
        keepalive=keepalive_options(
            args.keepalive_time, args.keepalive_timeout, max_connection_age_s=args.max_connection_age
        ),
        reuse_port=args.reuse_port,
        health_interval=args.health_interval,
        batching=Batching(
            max_items=args.batch_max_items,
            max_delay=args.batch_delay_ms / 1000,
            stream_window=args.stream_window,
        ),
        reload_interval=args.reload_interval,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="aecodec-cloud",
        description=(__doc__ or "").split("\n")[0],
        epilog="exit codes: 0 clean shutdown, 2 cannot start (one-line error). Signals: SIGTERM/SIGINT drain and "
        "stop; SIGHUP rescans --bundles. " + describe_env(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = ServerConfig(Path("."))
    p.add_argument(
        "--bundles", required=True, type=Path, help="a bundle directory, or a directory of bundles"
    )
    p.add_argument(
        "--address", default="127.0.0.1:50051", help="host:port to listen on (port 0 = any free port)"
    )
    p.add_argument("--decode-workers", type=int, default=d.decode_workers, help="threads that decode")
    p.add_argument("--workers", dest="decode_workers", type=int, help="alias of --decode-workers")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="ONNX Runtime intra-op threads per decoder session (0 = one per core); the decode workers already "
        "run in parallel",
    )
    p.add_argument(
        "--store",
        default=None,
        help="where ingested items are kept: a SQLite file path or sqlite:///path, or postgresql://... "
        "(without it the server offers Decoding only)",
    )
    p.add_argument(
        "--store-workers", type=int, default=d.store_workers, help="threads (connections) for the store"
    )
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here once serving")
    p.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="require 'authorization: Bearer <token>'; one token per line, optionally with devices=ID,... or "
        "role=operator (docs/deployment.md); health checks stay open",
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
        default=d.max_concurrent_rpcs,
        help="answer RESOURCE_EXHAUSTED beyond this many RPCs in flight (0 = no bound)",
    )
    p.add_argument(
        "--max-message-mib", type=int, default=MAX_MESSAGE_BYTES // MIB, help="largest message, MiB"
    )
    p.add_argument(
        "--max-decode-mib",
        type=int,
        default=d.limits.max_decode_bytes // MIB,
        help="per-request budget: MiB of float32 reconstructions one request may decode to",
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
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on SIGTERM/SIGINT")
    p.add_argument(
        "--health-interval",
        type=float,
        default=d.health_interval,
        help="seconds between store write checks; a failing check reports Storage NOT_SERVING (0 = never)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other processes (SO_REUSEPORT); without it a port in use is an error",
    )
    p.add_argument(
        "--batch-max-items",
        type=int,
        default=d.batching.max_items,
        help="dynamic batching: merge concurrent requests for one bundle into decoder runs of up to N items "
        "(0 or 1 = off)",
    )
    p.add_argument(
        "--batch-delay-ms",
        type=float,
        default=d.batching.max_delay * 1000,
        help="dynamic batching: how long an idle bundle's first request waits for others, milliseconds (0: "
        "it runs at once, and requests batch up only while earlier runs are busy)",
    )
    p.add_argument(
        "--stream-window",
        type=int,
        default=d.batching.stream_window,
        help="requests of one DecodeStream decoded at once (replies stay in order), so a device pipelining single "
        "items gets them batched; 1 = one at a time",
    )
    p.add_argument(
        "--reload-interval",
        type=float,
        default=d.reload_interval,
        help="rescan --bundles every N s for new, changed or removed bundles (0 = only on SIGHUP)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=0.0,
        help="on SIGTERM, report NOT_SERVING and keep serving this many seconds (so a load balancer stops "
        "sending) before the --grace shutdown",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--log-format", default="text", choices=["text", "json"], help="json: one object per line")
    apply_env(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except CodecError as exc:  # a bad AECODEC_* variable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logs(args.log_level, args.log_format)
    # Signals first: a SIGTERM that arrives while the server starts (or right after its port is announced)
    # still drains and exits 0 instead of killing the process outright.
    stop = threading.Event()
    running: Running | None = None

    def _on_signal(signum, _frame):
        log.info("received %s, shutting down (drain %.1f s, grace %.1f s)", signal.Signals(signum).name, args.drain,
                 args.grace)  # fmt: skip
        stop.set()

    def _on_hup(_signum, _frame):
        if running is not None:
            log.info("received SIGHUP, rescanning %s", args.bundles)
            asyncio.run_coroutine_threadsafe(running.areload(), running.loop)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_hup)
    tune_malloc()  # the process's allocator: requests' arrays reuse pages instead of faulting in fresh ones
    try:
        running = start(config_from_args(args))
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    held = running.registry.entries()
    log.info(
        "serving %d bundle(s) on port %d (%s, %s%s): %s",
        len(held),
        running.port,
        "TLS" if args.tls_cert else "plaintext",
        "token auth" if args.auth_token_file else "no auth",
        ", store" if args.store else "",
        ", ".join(f"{lb.bundle_id} ({lb.ref})" for lb in held) or "none yet (health: NOT_SERVING)",
    )
    if running.metrics_port:
        log.info(
            "metrics on http://%s:%d/metrics", args.metrics_address.rpartition(":")[0], running.metrics_port
        )
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(args.port_file)
    while not stop.wait(0.5):  # wakes up now and then, so a signal's handler always gets to run promptly
        pass
    running.not_serving()
    if args.drain > 0:  # a load balancer's health checks see NOT_SERVING and stop sending; we keep answering
        time.sleep(args.drain)
    running.stop(args.grace)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
