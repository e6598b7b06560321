"""Bearer-token auth: every RPC but health checks needs `authorization: Bearer <token>` metadata.

Health stays open because load balancers (Envoy, Kubernetes, Docker) probe it
without credentials. Tokens are compared with hmac.compare_digest against every
configured token so that timing does not reveal how much of a guess matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from latent_codec.errors import CodecError

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_SCHEME = "bearer "


def load_tokens(path: Path | str) -> list[str]:
    """Read tokens one per line (blank lines and #-comments ignored); a file with none is an error."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CodecError(f"cannot read the auth token file {p} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise CodecError(f"the auth token file {p} is not UTF-8 text") from None
    tokens = [t.strip() for t in text.splitlines() if t.strip() and not t.strip().startswith("#")]
    if not tokens:
        raise CodecError(f"the auth token file {p} holds no token (one per line)")
    bad = [i for i, t in enumerate(tokens) if any(c.isspace() for c in t)]
    if bad:
        raise CodecError(f"the auth token file {p}: token {bad[0] + 1} contains whitespace")
    return tokens


def _rejecting(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """The same kind of handler as `handler`, aborting with UNAUTHENTICATED before running anything."""

    def deny(_request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.unary_unary:
        return handler._replace(unary_unary=deny)
    if handler.stream_unary:
        return handler._replace(stream_unary=deny)
    if handler.unary_stream:
        return handler._replace(unary_stream=deny)
    return handler._replace(stream_stream=deny)


class AuthInterceptor(grpc.ServerInterceptor):
    """Reject calls without a valid bearer token with UNAUTHENTICATED; the health service stays open."""

    def __init__(self, tokens: Iterable[str], open_prefixes: tuple[str, ...] = OPEN_PREFIXES):
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("AuthInterceptor needs at least one token")
        self._open = open_prefixes

    def _valid(self, presented: bytes) -> bool:
        ok = False
        for t in self._tokens:  # no early exit: the time taken does not depend on which token matched
            ok |= hmac.compare_digest(presented, t)
        return ok

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """None when the metadata carries a valid token, else why not (sent to the caller)."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return "missing authorization metadata: send 'authorization: Bearer <token>' (edge: --auth-token-file)"
        value = values[0] if isinstance(values[0], str) else values[0].decode("utf-8", "replace")
        if not value.lower().startswith(_SCHEME):
            return "authorization metadata must be 'Bearer <token>'"
        if not self._valid(value[len(_SCHEME) :].strip().encode()):
            return "invalid bearer token"
        return None

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._open):
            return handler
        problem = self.check(handler_call_details.invocation_metadata)
        return handler if problem is None else _rejecting(handler, problem)
