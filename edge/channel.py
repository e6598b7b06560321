"""The edge's one way to open a gRPC channel to the cloud: TLS, bearer token, retries, readable errors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from latent_codec.errors import CodecError
from latent_codec.pem import read_pem
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TOKEN_ENV = "AECODEC_TOKEN"
DECODING = pb.DESCRIPTOR.services_by_name["Decoding"].full_name
STORAGE = pb.DESCRIPTOR.services_by_name["Storage"].full_name

# gRPC retries a failed call itself (with its own jittered backoff) when nothing was received yet:
# connection refused on the first batch, a replica restarting. The ingest sender handles failures
# mid-stream. Only calls that are safe to repeat are listed: Ingest is idempotent by item id.
_RETRY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# The calls safe to repeat on another replica: what a proxy may retry too (deploy/envoy.yaml's retried route;
# tests/test_deploy.py fails when the two differ). Streams are not replayed by a proxy.
IDEMPOTENT_METHODS = (
    (DECODING, "Decode"),
    (DECODING, "ModelInfo"),
    (STORAGE, "Fetch"),
    (STORAGE, "ListStored"),
)
# The edge retries Ingest itself as well: it is idempotent by item id, and the spool resends what was not acked.
RETRIED_METHODS = (*IDEMPOTENT_METHODS, (STORAGE, "Ingest"))
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for service, method in RETRIED_METHODS],
                "retryPolicy": _RETRY,
            }
        ]
    }
)


class CloudError(CodecError):
    """The cloud is unreachable or refused a request (the message carries its status)."""


@dataclass(frozen=True)
class Security:
    """How the edge proves who it is (bearer token) and checks who the cloud is (TLS); default: neither."""

    token: str | None = None
    tls: bool = False
    root_certs: bytes | None = None  # None with tls = the system's trusted CAs
    server_name: str | None = None  # name to verify in the cloud's certificate, if not the target's host

    @classmethod
    def from_args(cls, args: Any) -> Security:
        """From --auth-token-file (else $AECODEC_TOKEN), --tls, --tls-ca, --tls-server-name; missing flags = off."""
        token = None
        path = getattr(args, "auth_token_file", None)
        if path:
            token = read_token(path)
        elif os.environ.get(TOKEN_ENV, "").strip():
            token = os.environ[TOKEN_ENV].strip()
        ca_path = getattr(args, "tls_ca", None)
        roots = (
            read_pem(ca_path, "--tls-ca", b"-----BEGIN CERTIFICATE", "PEM certificate") if ca_path else None
        )
        return cls(
            token, bool(getattr(args, "tls", False) or roots), roots, getattr(args, "tls_server_name", None)
        )


def read_token(path: str | Path) -> str:
    """The first token in a file (blank lines, #-comments and a scope after the token skipped, so the server's
    token-file format works here too); a one-line error if there is none."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise CodecError(f"--auth-token-file: cannot read {path} ({why})") from None
    words = (line.split("#", 1)[0].split() for line in lines)
    token = next((w[0] for w in words if w), None)
    if token is None:
        raise CodecError(f"--auth-token-file: {path} holds no token")
    return token


def add_connection_arguments(p: Any) -> None:
    """The flags every subcommand that talks to the cloud takes (auth and TLS)."""
    p.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help=f"send the token in this file as 'authorization: Bearer ...' (default: ${TOKEN_ENV}, if set)",
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    p.add_argument(
        "--tls-ca", type=Path, default=None, help="connect with TLS, trusting this CA certificate (PEM)"
    )
    p.add_argument("--tls-server-name", default=None, help="name to verify in the cloud's certificate")


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the authorization metadata to every call."""

    def __init__(self, token: str):
        self._pair = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            d.method,
            d.timeout,
            [*list(d.metadata or []), self._pair],
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def check_target(target: str) -> None:
    """A one-line CodecError for an address gRPC would misread: a URL (http://...), or a host without a port
    (gRPC would silently use 443)."""
    if "://" in target and not target.startswith(("dns://", "unix://")):
        scheme = target.split("://", 1)[0]
        raise CodecError(f"--server {target!r}: give HOST:PORT without {scheme}:// (gRPC is not a web URL)")
    if target.startswith(("ipv4:", "ipv6:", "unix:", "dns:", "unix-abstract:", "vsock:")):
        return
    host, sep, port = target.rpartition(":")
    if not sep or not host or (host.count(":") and not host.endswith("]")):
        raise CodecError(f"--server {target!r} has no port: give HOST:PORT (e.g. {target}:50051)")
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise CodecError(f"--server {target!r}: the port must be a number 1..65535")


def open_channel(target: str, security: Security | None = None, *, retry: bool = True) -> grpc.Channel:
    """Plaintext or TLS channel carrying the bearer token, with large messages allowed and, with retry=True,
    gRPC's own retries of safe calls and quick reconnects once the cloud is back. A target listing several
    addresses (gRPC's "ipv4:HOST:PORT,HOST:PORT" form) gets round-robin balancing: each call (an Ingest
    stream is one call) goes to the next address that is up, and calls skip an address that is down."""
    check_target(target)
    sec = security or Security()
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if retry:
        options += [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
    else:
        options.append(("grpc.enable_retries", 0))
    if "," in target:  # several addresses: spread the calls over all of them
        options.append(("grpc.lb_policy_name", "round_robin"))
    if sec.tls:
        if sec.server_name:
            options.append(("grpc.ssl_target_name_override", sec.server_name))
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(sec.root_certs), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, _BearerToken(sec.token)) if sec.token else channel


# What gRPC's UNAVAILABLE details say (lower case), and the cause a person can act on.
_CAUSES = (
    (
        "connection refused",
        "nothing listens on that port (connection refused): is the server running, is the port right?",
    ),
    ("dns resolution failed", "the host name does not resolve (DNS)"),
    ("name or service not known", "the host name does not resolve (DNS)"),
    ("domain name not found", "the host name does not resolve (DNS)"),
    ("hostname lookup", "the host name does not resolve (DNS)"),
    ("errors resolving", "the host name does not resolve (DNS)"),
    (
        "failed parsing http/2",
        "something answers there, but it does not speak gRPC (HTTP/1: the metrics port? a web server?)",
    ),
    ("http1", "something answers there, but it speaks HTTP/1, not gRPC (the metrics port? a web server?)"),
    ("ssl", "the TLS handshake failed (a plaintext server? the wrong --tls-ca or --tls-server-name?)"),
    ("handshake", "the TLS handshake failed (a plaintext server? the wrong --tls-ca or --tls-server-name?)"),
    ("tls", "the TLS handshake failed (a plaintext server? the wrong --tls-ca or --tls-server-name?)"),
    ("socket closed", "the connection was closed by the other side (a TLS server spoken to in plaintext?)"),
    ("connection reset", "the connection was reset by the other side"),
    ("no route to host", "there is no route to that host"),
    ("network is unreachable", "the network is unreachable"),
    ("timed out", "the connection attempt timed out (a firewall dropping packets? the wrong host?)"),
)


def cause(exc: grpc.RpcError) -> str:
    """Why a call could not reach the cloud, in words a person can act on."""
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            "no answer before the deadline (--timeout / --connect-timeout): the server is slow, or not there"
        )
    low = details.lower()
    for needle, why in _CAUSES:
        if needle in low:
            return why
    return details


def describe(exc: grpc.RpcError, target: str) -> str:
    """A failed call as one sentence for a person (status name and the server's message)."""
    code = exc.code()
    details = exc.details()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"cannot reach the cloud at {target}: {cause(exc)} ({code.name})"
    if code == grpc.StatusCode.UNIMPLEMENTED and "Storage" not in (details or ""):
        return (
            f"the server at {target} does not offer this call ({details}): is it an aecodec cloud server of this "
            f"version? (Ingest, Fetch and ListStored need a server started with --store)"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"cloud at {target} refused the credentials: {details} (pass --auth-token-file or set ${TOKEN_ENV})"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"cloud at {target} does not offer this ({details}); a server without --store has no Storage service"
    return f"cloud at {target} refused the request: {code.name}: {details}"
