"""Everything a server needs, with the one set of defaults: the CLI's flags show these (cloud/cli.py).

``ServerConfig.check()`` refuses nonsense with one line naming the flag, whether the values came from the
command line, an AECODEC_* variable or Python, before anything starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from latent_codec.errors import CodecError

from .batching import Batching
from .limits import MIB, Limits
from .tenancy import Principal

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MIN_RELOAD_INTERVAL = (
    0.1  # seconds; a rescan stats every bundle and reads its manifest: tighter only burns CPU
)
MIN_HEALTH_INTERVAL = 0.1


@dataclass
class ServerConfig:
    """A server's settings; each field is a flag of `python -m cloud.server` (--decode-workers, ...)."""

    bundles: Path
    address: str = "127.0.0.1:50051"  # host:port (port 0 = any free port)
    decode_workers: int = 2  # threads that decode (CPU-bound: about the core count); each holds <= one budget
    threads: int = (
        1  # ONNX Runtime intra-op threads per decoder session (the decode threads are the parallelism)
    )
    store: str | None = None  # SQLite path / sqlite:///path / postgresql://...; None: no Storage service
    store_workers: int = 8  # threads for store calls (and PostgreSQL connections)
    auth_tokens: dict[str, Principal] | list[str] | None = None  # None: no auth (loopback use)
    tls: tuple[bytes, bytes] | None = None  # (private key PEM, certificate chain PEM)
    metrics_address: str | None = None  # host:port for /metrics
    max_concurrent_rpcs: int = 256  # calls in flight beyond which RESOURCE_EXHAUSTED (0 = no bound)
    max_open_streams: int = 64  # Health/Watch streams (open without a token) in flight, counted on their own
    max_message_bytes: int = 64 * MIB
    limits: Limits = field(default_factory=Limits)
    keepalive_time: float = 60.0  # ping idle connections every N s (0 = never)
    keepalive_timeout: float = 20.0  # drop a connection whose ping is not answered within N s
    min_client_ping: float = 10.0  # clients may ping this often; more often gets the connection closed
    max_connection_age: float = 600.0  # close connections after N s (with a 30 s grace); 0 = never
    write_timeout: float = 10.0  # a streamed reply not taken by its client within N s ends the stream
    reuse_port: bool = (
        False  # share the port with another process (SO_REUSEPORT); off: a busy port is an error
    )
    health_interval: float = 5.0  # seconds between store write checks that drive health (0 = never)
    batching: Batching = field(default_factory=Batching)  # dynamic batching (max_items <= 1: off)
    reload_interval: float = 0.0  # seconds between rescans of the bundle directory (0: only on SIGHUP)
    grace: float = 5.0  # seconds in-flight calls get on SIGTERM/SIGINT
    drain: float = 0.0  # seconds of serving after SIGTERM while reporting NOT_SERVING
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def keepalive(self) -> list[tuple[str, int]]:
        """grpc server options: ping idle connections so dead peers (a phone gone offline, a dropped NAT entry) are
        noticed, accept client pings down to min_client_ping, and recycle connections after max_connection_age so
        a load balancer can spread long-lived clients over new replicas and no stream lives for ever."""
        opts = [
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", int(self.min_client_ping * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
        ]
        if self.keepalive_time > 0:  # 0 = the server sends no pings of its own
            opts += [
                ("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
            ]
        if self.max_connection_age > 0:
            opts += [
                ("grpc.max_connection_age_ms", int(self.max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", 30_000),
            ]
        return opts

    def check(self) -> None:
        """A one-line CodecError naming the flag for the first nonsense value."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise CodecError(f"{flag(f.name)} must be a finite number, got {value}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise CodecError(f"{flag(f.name)} must not be negative")
        for name in ("decode_workers", "store_workers"):
            if getattr(self, name) < 1:
                raise CodecError(f"{flag(name)} must be at least 1")
        check_listen_address(self.address, "--address")
        if self.reload_interval and self.reload_interval < MIN_RELOAD_INTERVAL:
            raise CodecError(
                f"--reload-interval must be 0 (off) or at least {MIN_RELOAD_INTERVAL:g} s, got {self.reload_interval:g}"
            )
        if self.health_interval and self.health_interval < MIN_HEALTH_INTERVAL:
            raise CodecError(f"--health-interval must be 0 (off) or at least {MIN_HEALTH_INTERVAL:g} s")
        if not 1024 <= self.max_message_bytes <= 2047 * MIB:
            raise CodecError("--max-message-mib must be 1..2047")
        lim = self.limits
        if lim.max_decode_bytes < 1 * MIB:
            raise CodecError("--max-decode-mib must be at least 1")
        if not (math.isfinite(lim.max_decode_seconds) and lim.max_decode_seconds > 0):
            raise CodecError("--max-decode-seconds must be a positive number")
        if lim.max_symbols < 1:
            raise CodecError("--max-decode-symbols must be at least 1")
        if self.batching.stream_window < 1:
            raise CodecError("--stream-window must be at least 1")
        if not (math.isfinite(self.batching.max_delay) and self.batching.max_delay >= 0):
            raise CodecError("--batch-delay-ms must be a finite number, not negative")
        if self.batching.max_items < 0:
            raise CodecError("--batch-max-items must not be negative")
        if self.log_level.upper() not in LOG_LEVELS:
            raise CodecError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.log_format not in LOG_FORMATS:
            raise CodecError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.metrics_address:
            check_listen_address(self.metrics_address, "--metrics-address")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_listen_address(address: str, what: str) -> tuple[str, int]:
    """host:port with a port 0..65535 ([v6]:port for IPv6); a one-line CodecError naming the flag otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise CodecError(
            f"{what} must be HOST:PORT (e.g. 0.0.0.0:50051), got {address!r}: the port is missing"
        )
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CodecError(f"{what} has port {port!r}; a port is a number 0..65535")
    return host.strip("[]"), int(port)
