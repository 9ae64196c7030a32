"""Every RPC passes one wrapper, built once per method: metrics, then auth, then error translation.

grpc runs each server interceptor on every call, and each of the three this used to have resolved the method's
handler and wrapped it again: together they cost more server CPU than the index search (bench.serving). One
interceptor now resolves a method once and reuses the wrapped handler; only the token check runs per call.
"""

from __future__ import annotations

import grpc

from server.auth import OPEN_PREFIXES, TokenCheck
from server.errors import guard, tolerant, wrap_handler
from server.metrics import ServerMetrics


class CallInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: ServerMetrics, tokens: frozenset[str]) -> None:
        self._metrics = metrics
        self._auth = TokenCheck(tokens) if tokens else None
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None:  # unknown method: not cached or counted (callers choose the names)
                return None
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        auth = None if method.startswith(OPEN_PREFIXES) else self._auth
        if handler.unary_unary or handler.stream_unary:
            def around(behaviour):
                inner = guard(behaviour)
                return self._metrics.observe(method, auth.require(inner) if auth else inner)

            wrapped = wrap_handler(handler, around)
            return wrapped._replace(request_deserializer=tolerant(wrapped.request_deserializer))
        if auth is not None:  # streaming responses (reflection): their own error handling, but not unauthenticated
            return wrap_handler(handler, auth.require_streaming, streaming_responses=True)
        return handler
