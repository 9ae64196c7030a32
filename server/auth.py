"""Bearer-token authentication: ``authorization: Bearer <token>`` metadata, checked in constant time.

Enforced only when tokens are configured (IG_SERVER_AUTH_TOKENS). Health checks stay open so load balancers
and orchestrators can probe without credentials; everything else, reflection included, needs a token.
"""

from __future__ import annotations

import hmac
from typing import Iterable

import grpc
from grpc import aio

from server.errors import wrap_handler

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class AuthInterceptor(aio.ServerInterceptor):
    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("AuthInterceptor needs at least one token")

    def _valid(self, metadata) -> bool:
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer "):].strip().encode()
        # compare against every token (no early exit) so timing reveals nothing
        return sum(hmac.compare_digest(given, t) for t in self._tokens) > 0

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        if self._valid(handler_call_details.invocation_metadata):
            return handler

        def deny(_behaviour):
            async def denied(_request, context: aio.ServicerContext):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

            return denied

        return wrap_handler(handler, deny, streaming_responses=True)
