"""Every RPC passes one wrapper, built once per method: metrics, then auth, then error translation, and for
streaming calls a slot among the threads they may hold. Methods that may wait (on Neo4j or on a stream) are
marked for the waiting pool (``server.pools``).

grpc runs each server interceptor on every call, and each of the three this used to have resolved the method's
handler and wrapped it again: together they cost more server CPU than the index search (bench.serving). One
interceptor now resolves a method once and reuses the wrapped handler; only the token check runs per call.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import grpc

from graphdb.errors import ResourceExhausted
from server.auth import OPEN_PREFIXES, TokenCheck
from server.errors import guard, tolerant, wrap_handler
from server.metrics import ServerMetrics
from server.pools import mark_waiting


class StreamSlots:
    """Caps the streaming calls running at once. Each holds a thread of the waiting pool for as long as its
    client keeps the stream open, so without a cap a few idle streams (health Watch needs no token) could take
    every thread the calls waiting on Neo4j need."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    def _refusal(self) -> str:
        return (
            f"this server process already runs {self.limit} streaming calls (IG_SERVER_STREAM_THREADS); "
            "retry later or on another connection"
        )

    def unary_response(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        """A client-streaming call (IngestEvents): refused with RESOURCE_EXHAUSTED when no slot is free."""

        def held(request: Any, context: grpc.ServicerContext) -> Any:
            if not self._free.acquire(blocking=False):
                raise ResourceExhausted(self._refusal())
            try:
                return behaviour(request, context)
            finally:
                self._free.release()

        return held

    def streaming_response(self, behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """A server-streaming call (health Watch, reflection), likewise."""

        def held(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if not self._free.acquire(blocking=False):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal())
            try:
                yield from behaviour(request, context)
            finally:
                self._free.release()

        return held


class CallInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (Any)
    def __init__(self, metrics: ServerMetrics, tokens: frozenset[str], stream_slots: int, waiting_methods: frozenset[str]) -> None:
        """``waiting_methods``: full names (``/package.Service/Method``) of the unary calls that may wait on
        Neo4j; every streaming call is taken to wait too."""
        self._metrics = metrics
        self._auth = TokenCheck(tokens, metrics.count_auth_failure) if tokens else None
        self._slots = StreamSlots(stream_slots)
        self._waiting = waiting_methods
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self, continuation: Callable[[Any], grpc.RpcMethodHandler | None], handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None:  # unknown method: not cached or counted (callers choose the names)
                return None
            wrapped = self.wrapped(method, handler)
        return wrapped

    def wrapped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` of ``method`` with this interceptor's wrappers (for the native front end's calls)."""
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        auth = None if method.startswith(OPEN_PREFIXES) else self._auth
        if handler.unary_unary or handler.stream_unary:

            def around(behaviour: Callable[..., Any]) -> Callable[..., Any]:
                inner = guard(self._slots.unary_response(behaviour) if handler.stream_unary else behaviour)
                observed = self._metrics.observe(method, auth.require(inner, method) if auth else inner)
                return mark_waiting(observed) if handler.stream_unary or method in self._waiting else observed

            wrapped = wrap_handler(handler, around)
            assert wrapped is not None  # so is the handler
            return wrapped._replace(request_deserializer=tolerant(wrapped.request_deserializer))

        # health Watch, reflection: their own error handling
        def streaming(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
            held = self._slots.streaming_response(behaviour)
            return mark_waiting(auth.require_streaming(held, method) if auth else held)

        return wrap_handler(handler, streaming, streaming_responses=True)
