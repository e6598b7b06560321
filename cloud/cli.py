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
import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

from latent_codec.cli_main import run_main
from latent_codec.envargs import apply_env
from latent_codec.envargs import describe as describe_env
from latent_codec.errors import CodecError
from latent_codec.pem import read_pem

from .allocator import tune_malloc
from .batching import Batching
from .config import LOG_FORMATS, LOG_LEVELS, ServerConfig
from .lifecycle import Running, start
from .limits import MIB, Limits
from .logs import configure as configure_logs
from .tenancy import load_tokens

log = logging.getLogger("cloud")
D = ServerConfig(Path("."))  # the defaults every flag shows


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The flags as a ServerConfig (checked: a one-line CodecError naming the flag for nonsense values)."""
    tokens = load_tokens(args.auth_token_file) if args.auth_token_file else None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CodecError("--tls-cert and --tls-key go together")
    tls = (
        (read_pem(args.tls_key, "--tls-key"), read_pem(args.tls_cert, "--tls-cert"))
        if args.tls_cert
        else None
    )
    if not 1 <= args.max_message_mib <= 2047:
        raise CodecError("--max-message-mib must be 1..2047")
    for name in ("max_decode_mib", "stream_window"):
        if getattr(args, name) < 1:
            raise CodecError(f"--{name.replace('_', '-')} must be at least 1")
    config = ServerConfig(
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
        max_open_streams=args.max_open_streams,
        max_message_bytes=args.max_message_mib * MIB,
        limits=replace(
            D.limits,
            max_decode_bytes=args.max_decode_mib * MIB,
            max_decode_seconds=args.max_decode_seconds,
            max_symbols=args.max_decode_symbols,
        ),
        keepalive_time=args.keepalive_time,
        keepalive_timeout=args.keepalive_timeout,
        max_connection_age=args.max_connection_age,
        write_timeout=args.write_timeout,
        reuse_port=args.reuse_port,
        health_interval=args.health_interval,
        batching=Batching(
            max_items=args.batch_max_items,
            max_delay=args.batch_delay_ms / 1000,
            stream_window=args.stream_window,
        ),
        reload_interval=args.reload_interval,
        grace=args.grace,
        drain=args.drain,
        log_level=args.log_level,
        log_format=args.log_format,
    )
    config.check()
    return config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="aecodec-cloud",
        description=(__doc__ or "").split("\n")[0],
        epilog="exit codes: 0 clean shutdown, 2 cannot start (one-line error). Signals: SIGTERM/SIGINT drain and "
        "stop; SIGHUP rescans --bundles. " + describe_env(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    lim, bat = D.limits, D.batching
    p.add_argument(
        "--bundles", required=True, type=Path, help="a bundle directory, or a directory of bundles"
    )
    p.add_argument("--address", default=D.address, help="host:port to listen on (port 0 = any free port)")
    p.add_argument("--decode-workers", type=int, default=D.decode_workers, help="threads that decode")
    p.add_argument("--workers", dest="decode_workers", type=int, help="alias of --decode-workers")
    p.add_argument(
        "--threads",
        type=int,
        default=D.threads,
        help="ONNX Runtime intra-op threads per decoder session (0 = one per core); the decode workers "
        "already run in parallel",
    )
    p.add_argument(
        "--store",
        default=D.store,
        help="where ingested items are kept: a SQLite file path or sqlite:///path, or postgresql://... "
        "(without it the server offers Decoding only)",
    )
    p.add_argument(
        "--store-workers", type=int, default=D.store_workers, help="threads (connections) for the store"
    )
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here once serving")
    p.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="require 'authorization: Bearer <token>'; one token per line, optionally with devices=ID,... "
        "or role=operator (docs/deployment.md); health checks stay open",
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="serve TLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, default=None, help="the private key of --tls-cert (PEM)")
    p.add_argument(
        "--metrics-address",
        default=D.metrics_address,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 0.0.0.0:9100; off by default)",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=D.max_concurrent_rpcs,
        help="answer RESOURCE_EXHAUSTED beyond this many calls in flight (0 = no bound); health checks "
        "and tokenless streams are counted on their own",
    )
    p.add_argument(
        "--max-open-streams",
        type=int,
        default=D.max_open_streams,
        help="Health/Watch streams (open without a token) in flight at once (0 = no bound)",
    )
    p.add_argument(
        "--max-message-mib", type=int, default=D.max_message_bytes // MIB, help="largest message, MiB"
    )
    p.add_argument(
        "--max-decode-mib",
        type=int,
        default=lim.max_decode_bytes // MIB,
        help="per-request budget: MiB of working memory one request's decoding may hold (the decoder "
        "graph, the unpacked codes and the reconstructions); the decode threads hold one each",
    )
    p.add_argument(
        "--max-decode-seconds",
        type=float,
        default=lim.max_decode_seconds,
        help="per-request budget: estimated CPU seconds one request's decoding may take",
    )
    p.add_argument(
        "--max-decode-symbols",
        type=int,
        default=lim.max_symbols,
        help="per-request budget: code symbols one request may entropy-decode (a 12-megapixel photo of a "
        "map bundle with 32 code channels has about 28.5 million)",
    )
    p.add_argument(
        "--keepalive-time",
        type=float,
        default=D.keepalive_time,
        help="ping idle connections every N s (0 = never)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=float,
        default=D.keepalive_timeout,
        help="drop a connection whose ping is unanswered",
    )
    p.add_argument(
        "--max-connection-age",
        type=float,
        default=D.max_connection_age,
        help="close connections after N s (30 s grace) so a load balancer can rebalance and no stream "
        "lives for ever (0 = never)",
    )
    p.add_argument(
        "--write-timeout",
        type=float,
        default=D.write_timeout,
        help="end a stream whose client has not taken a reply for N s (0 = never)",
    )
    p.add_argument(
        "--grace", type=float, default=D.grace, help="seconds in-flight calls get on SIGTERM/SIGINT"
    )
    p.add_argument(
        "--health-interval",
        type=float,
        default=D.health_interval,
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
        default=bat.max_items,
        help="dynamic batching: merge concurrent requests for one bundle into decoder runs of up to N "
        "items (0 or 1 = off)",
    )
    p.add_argument(
        "--batch-delay-ms",
        type=float,
        default=bat.max_delay * 1000,
        help="dynamic batching: how long an idle bundle's first request waits for others, milliseconds "
        "(0: it runs at once, and requests batch up only while earlier runs are busy)",
    )
    p.add_argument(
        "--stream-window",
        type=int,
        default=bat.stream_window,
        help="requests of one DecodeStream decoded at once (replies stay in order), so a device "
        "pipelining single items gets them batched; 1 = one at a time",
    )
    p.add_argument(
        "--reload-interval",
        type=float,
        default=D.reload_interval,
        help="rescan --bundles every N s (at least 0.1) for new, changed or removed bundles (0 = only on "
        "SIGHUP)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=D.drain,
        help="on SIGTERM, report NOT_SERVING and keep serving this many seconds (so a load balancer stops "
        "sending) before the --grace shutdown",
    )
    # Checked by ServerConfig.check (one line, whether from the command line or AECODEC_*), not by argparse.
    p.add_argument("--log-level", default=D.log_level, type=str.upper, help=", ".join(LOG_LEVELS))
    p.add_argument(
        "--log-format", default=D.log_format, help=" or ".join(LOG_FORMATS) + " (json: one object per line)"
    )
    apply_env(p)
    return p.parse_args(argv)


def serve(args: argparse.Namespace) -> int:
    """Run a server from parsed flags until SIGTERM/SIGINT; -> the exit code."""
    config = config_from_args(args)  # every flag checked before anything starts
    configure_logs(config.log_level, config.log_format)
    # Signals first: a SIGTERM that arrives while the server starts (or right after its port is announced)
    # still drains and exits 0 instead of killing the process outright.
    stop = threading.Event()
    running: Running | None = None

    def _on_signal(signum, _frame):
        log.info(
            "received %s, shutting down (drain %.1f s, grace %.1f s)",
            signal.Signals(signum).name,
            config.drain,
            config.grace,
        )
        stop.set()

    def _on_hup(_signum, _frame):
        if running is not None:
            log.info("received SIGHUP, rescanning %s", config.bundles)
            asyncio.run_coroutine_threadsafe(running.areload(), running.loop)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_hup)
    tune_malloc()  # the process's allocator: requests' arrays reuse pages instead of faulting in fresh ones
    running = start(config)
    held = running.registry.entries()
    log.info(
        "serving %d bundle(s) on port %d (%s, %s%s): %s",
        len(held),
        running.port,
        "TLS" if config.tls else "plaintext",
        "token auth" if config.auth_tokens else "no auth",
        ", store" if config.store else "",
        ", ".join(f"{lb.bundle_id} ({lb.ref})" for lb in held) or "none (health: NOT_SERVING)",
    )
    if running.metrics_port:
        log.info(
            "metrics on http://%s:%d/metrics",
            (config.metrics_address or "").rpartition(":")[0],
            running.metrics_port,
        )
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(args.port_file)
    while not stop.wait(0.5):  # wakes up now and then, so a signal's handler always gets to run promptly
        pass
    running.not_serving()
    if (
        config.drain > 0
    ):  # a load balancer's health checks see NOT_SERVING and stop sending; we keep answering
        time.sleep(config.drain)
    running.stop(config.grace)
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(parse_args, serve, argv)


__all__ = ["Limits", "config_from_args", "main", "parse_args", "serve"]
