"""A server's life: start (bundles, store, services, interceptors, port), health, reload, bounded stop.

``start(config)`` builds a grpc.aio server on an event loop thread of its own and returns ``Running``:
its port, health, registry and store, and ``stop(grace)``, which reports NOT_SERVING and gives in-flight
calls `grace` seconds. Health follows what is held (NOT_SERVING with no bundle) and the store (a write
check every --health-interval seconds); --reload-interval polls --bundles (SIGHUP does it at once).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from latent_codec.errors import CodecError
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from .audit import Audit
from .bundles import BundleRegistry, ReloadReport
from .config import ServerConfig
from .decoding_service import DecodingService
from .interceptors.auth_interceptor import AuthInterceptor
from .interceptors.concurrency_interceptor import ConcurrencyInterceptor
from .interceptors.logging_interceptor import LoggingInterceptor
from .interceptors.metrics_interceptor import MetricsInterceptor
from .interceptors.parsing_interceptor import ParsingInterceptor
from .limits import DecodeBudget
from .metrics import CodecMetrics, MetricsHTTPServer, publish_bundles
from .ports import check_address_free

log = logging.getLogger("cloud")
DECODING = pb.DESCRIPTOR.services_by_name["Decoding"].full_name
STORAGE = pb.DESCRIPTOR.services_by_name["Storage"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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


def start(config: ServerConfig) -> Running:
    """Start a server as configured (its settings checked first); CodecError with one line when it cannot."""
    config.check()
    if not config.reuse_port:
        check_address_free(config.address)
    registry = BundleRegistry(threads=config.threads)
    registry.load_dir(config.bundles)
    if not len(registry):
        log.warning(
            "%s holds no bundle: this server decodes nothing (health NOT_SERVING) until one is added "
            "and --bundles is rescanned (SIGHUP or --reload-interval)",
            config.bundles,
        )
    runs = max(1, config.decode_workers)
    config.batching = replace(config.batching, max_runs=runs)  # one run per decode thread
    config.limits = replace(config.limits, max_reply_bytes=config.max_message_bytes, decode_runs=runs)
    budget = DecodeBudget(config.limits, runs)  # what all decoding holds at once: Decode, Ingest, Fetch
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
                s,
                registry,
                store_executor,
                decode_executor,
                config.limits,
                metrics,
                audit,
                budget,
                config.write_timeout,
            )
        if metrics is not None:
            publish_bundles(metrics, registry.entries())
            metrics_http = MetricsHTTPServer(metrics, config.metrics_address or "")
        thread.start()
        server, port, health, services = asyncio.run_coroutine_threadsafe(
            _serve(config, registry, storage, decode_executor, metrics, audit, budget), loop
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
    budget: DecodeBudget,
) -> tuple[grpc.aio.Server, int, HealthServicer, list[str]]:
    # Order matters: metrics outermost (it sees calls auth refuses), then logging, then the bound on calls in
    # flight (per kind, so tokenless callers never take a token holder's slot), then auth, and parsing last,
    # so that nothing is parsed before the caller is authenticated.
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics)] if metrics else []
    interceptors.append(LoggingInterceptor())
    interceptors.append(ConcurrencyInterceptor(config.max_concurrent_rpcs, config.max_open_streams))
    if config.auth_tokens:
        interceptors.append(AuthInterceptor(config.auth_tokens))
    interceptors.append(ParsingInterceptor())
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        *config.keepalive,
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    decoding = DecodingService(
        registry,
        decode_executor,
        config.limits,
        metrics,
        config.batching,
        audit,
        budget,
        config.write_timeout,
    )
    pb_grpc.add_DecodingServicer_to_server(decoding, server)
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
