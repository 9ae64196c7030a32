"""Bearer-token authentication: ``authorization: Bearer <token>`` metadata, checked in constant time.

Enforced only when tokens are configured (IG_SERVER_AUTH_TOKENS). Health checks stay open so load balancers
and orchestrators can probe without credentials; everything else, reflection included, needs a token.
``server.calls`` wraps each method's behaviour with ``require`` once; the check itself runs per call. Each refusal
is reported to ``on_failure(method, reason)`` (the server counts them in ``ig_auth_failures_total``); the reason
is one of `REASONS`, never the token.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Iterable, Iterator

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
DENIED = "missing or invalid bearer token"
# Why a call was refused: no authorization header, one that is not "Bearer <token>", or a token not configured.
REASONS = ("missing", "malformed", "invalid")


def _ignore(method: str, reason: str) -> None:
    pass


class TokenCheck:
    def __init__(self, tokens: Iterable[str], on_failure: Callable[[str, str], None] = _ignore) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise ValueError("TokenCheck needs at least one token")
        self._on_failure = on_failure

    def failure(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """Why the call's credentials are refused (one of `REASONS`), or None when they are valid."""
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            return "missing"
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return "malformed"
        given = header[len("Bearer ") :].strip().encode()
        # hmac.compare_digest takes the same time wherever the bytes differ, and every token is compared (no early
        # exit), so the time taken reveals neither a token's prefix nor which token matched
        return None if sum(hmac.compare_digest(given, t) for t in self._tokens) > 0 else "invalid"

    def valid(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        return self.failure(metadata) is None

    def _check(self, method: str, context: grpc.ServicerContext) -> None:
        reason = self.failure(context.invocation_metadata())
        if reason is not None:
            self._on_failure(method, reason)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

    def require(self, behaviour: Callable[..., Any], method: str = "") -> Callable[..., Any]:
        """``behaviour`` (unary response) of ``method`` refused with UNAUTHENTICATED unless the call carries a
        valid token."""

        def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
            self._check(method, context)
            return behaviour(request, context)

        return authenticated

    def require_streaming(self, behaviour: Callable[..., Iterator[Any]], method: str = "") -> Callable[..., Iterator[Any]]:
        """The same for a streaming-response behaviour (a generator of responses)."""

        def authenticated(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self._check(method, context)
            yield from behaviour(request, context)

        return authenticated
