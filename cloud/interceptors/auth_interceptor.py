"""Bearer-token auth, before anything is parsed: every RPC but health checks needs `authorization: Bearer <token>`.

Health stays open because load balancers (Envoy, Kubernetes, Docker) probe it without credentials.
A valid token's principal (cloud/tenancy.py: the devices it may touch) is set for the call, so the
storage service can refuse other devices' items. Tokens are compared with hmac.compare_digest
against every configured token, so timing does not reveal how much of a guess matched. A refused
call never reaches the parsing interceptor: its body is not even deserialised.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

import grpc

from .. import tenancy
from ..tenancy import Principal
from .wrapping import Call, wrap

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_SCHEME = "bearer "


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a valid bearer token; health stays open; the token's principal is set per call."""

    def __init__(
        self, tokens: dict[str, Principal] | Iterable[str], open_prefixes: tuple[str, ...] = OPEN_PREFIXES
    ):
        if not isinstance(tokens, dict):  # a plain list: tokens without scopes (Decoding only)
            tokens = {t: Principal(f"token #{i + 1}") for i, t in enumerate(tokens)}
        self._tokens = [(t.encode(), p) for t, p in tokens.items()]
        if not self._tokens:
            raise ValueError("AuthInterceptor needs at least one token")
        self._open = open_prefixes

    def principal(self, presented: bytes) -> Principal | None:
        found = None
        for token, p in self._tokens:  # no early exit: the time taken does not depend on which token matched
            if hmac.compare_digest(presented, token):
                found = p
        return found

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal | str:
        """The caller's principal, or why the call is refused (a sentence sent to the caller)."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return "missing authorization metadata: send 'authorization: Bearer <token>' (edge: --auth-token-file)"
        value = values[0] if isinstance(values[0], str) else values[0].decode("utf-8", "replace")
        if not value.lower().startswith(_SCHEME):
            return "authorization metadata must be 'Bearer <token>'"
        p = self.principal(value[len(_SCHEME) :].strip().encode())
        return p if p is not None else "invalid bearer token"

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._open):
            return handler
        who = self.check(handler_call_details.invocation_metadata)
        if isinstance(who, str):

            async def deny(call: Call, request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, who)

            return wrap(handler, deny)

        async def as_principal(call: Call, request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = tenancy.set_current(who)
            try:
                return await call(request, context)
            finally:
                tenancy.reset_current(token)

        return wrap(handler, as_principal)
