"""gRPC channel to the cloud, with errors a person can read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from latent_codec.errors import CodecError
from latent_codec.pem import read_pem
from latent_codec.wire.aecodec.v1 import codec_pb2 as pb
from latent_codec.wire.aecodec.v1 import codec_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TOKEN_ENV = "AECODEC_TOKEN"


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
    def from_args(cls, args) -> Security:
        """From --auth-token-file (else $AECODEC_TOKEN), --tls, --tls-ca, --tls-server-name; missing flags = off."""
        token = None
        path = getattr(args, "auth_token_file", None)
        if path:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise CodecError(
                    f"--auth-token-file: cannot read {path} ({getattr(exc, 'strerror', None) or exc})"
                ) from None
            token = next((t.strip() for t in lines if t.strip() and not t.strip().startswith("#")), None)
            if token is None:
                raise CodecError(f"--auth-token-file: {path} holds no token")
        elif os.environ.get(TOKEN_ENV, "").strip():
            token = os.environ[TOKEN_ENV].strip()
        ca_path = getattr(args, "tls_ca", None)
        roots = None
        if ca_path:
            roots = read_pem(ca_path, "--tls-ca", b"-----BEGIN CERTIFICATE", "PEM certificate")
        return cls(
            token, bool(getattr(args, "tls", False) or roots), roots, getattr(args, "tls_server_name", None)
        )


def add_connection_arguments(p) -> None:
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
    """Adds the authorization metadata to every call (one place for the CLI, ingest and benchmarks)."""

    def __init__(self, token: str):
        self._pair = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            d.method,
            d.timeout,
            list(d.metadata or []) + [self._pair],
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


def make_channel(
    target: str, options: list[tuple[str, object]], security: Security | None = None
) -> grpc.Channel:
    """Plaintext or TLS channel with `options`, carrying the bearer token when there is one."""
    sec = security or Security()
    if sec.tls:
        opts = list(options) + (
            [("grpc.ssl_target_name_override", sec.server_name)] if sec.server_name else []
        )
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(sec.root_certs), options=opts)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, _BearerToken(sec.token)) if sec.token else channel


def open_channel(target: str, security: Security | None = None) -> grpc.Channel:
    return make_channel(
        target,
        [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
        security,
    )


def describe(exc: grpc.RpcError, target: str) -> str:
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"cannot reach the cloud at {target} ({code.name}: {exc.details()})"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            f"cloud at {target} refused the credentials: {exc.details()} "
            f"(pass --auth-token-file or set ${TOKEN_ENV})"
        )
    return f"cloud at {target} refused the request: {code.name}: {exc.details()}"


class CloudClient:
    def __init__(self, target: str, connect_timeout: float = 10.0, security: Security | None = None):
        self.target = target
        self.channel = open_channel(target, security)
        self.stub = pb_grpc.CodecStub(self.channel)
        self.connect_timeout = connect_timeout

    def wait_ready(self) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            raise CloudError(
                f"cannot reach the cloud at {self.target} (no connection within {self.connect_timeout:g} s)"
            ) from None

    def model_info(self) -> dict[str, str]:
        try:
            resp = self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=self.connect_timeout)
        except grpc.RpcError as exc:
            raise CloudError(describe(exc, self.target)) from None
        return {b.bundle_id: b.manifest_json for b in resp.bundles}

    def decode_stream(self, requests, timeout: float | None = None):
        """Yield one DecodeResponse per request, in order; CloudError on failure."""
        try:
            yield from self.stub.DecodeStream(requests, timeout=timeout)
        except grpc.RpcError as exc:
            raise CloudError(describe(exc, self.target)) from None

    def close(self) -> None:
        self.channel.close()
