"""Bearer-token authentication: ``authorization: Bearer <token>`` metadata, checked in constant time.

Enforced only when tokens are configured (IG_SERVER_AUTH_TOKENS). Health checks stay open so load balancers
and orchestrators can probe without credentials; everything else, reflection included, needs a token.
``server.calls`` wraps each method's behaviour with ``require`` once; the check itself runs per call.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Iterable, Iterator

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
DENIED = "missing or invalid bearer token"


class TokenCheck:
    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("TokenCheck needs at least one token")

    def valid(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer ") :].strip().encode()
        # compare against every token (no early exit) so timing reveals nothing
        return sum(hmac.compare_digest(given, t) for t in self._tokens) > 0

    def require(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        """``behaviour`` (unary response) refused with UNAUTHENTICATED unless the call carries a valid token."""

        def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
            if not self.valid(context.invocation_metadata()):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
            return behaviour(request, context)

        return authenticated

    def require_streaming(self, behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """The same for a streaming-response behaviour (a generator of responses)."""

        def authenticated(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if not self.valid(context.invocation_metadata()):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
            yield from behaviour(request, context)

        return authenticated
