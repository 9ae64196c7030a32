"""The native front end (``ig_front``, a Rust extension built from ``server/native``): it owns the public port,
answers the unary InterestService calls through ``Dispatcher`` and forwards everything else (IngestEvents,
health, reflection) to grpc's Python server on a loopback port.

The calls run the very behaviours grpc's server would run (``server.calls`` wrappers: metrics, auth, error
translation, then the servicer), with a ``NativeContext`` in place of grpc's. Only the transport changes: on
two cores it cost ~275 us of server CPU per call in grpc's Python server, more than the search itself
(bench.serving). ``IG_SERVER_FRONT`` chooses: ``auto`` (native when built, the default), ``native`` or ``grpc``.
The front end is ``ig_front.TonicFront``: gRPC on tonic over hyper's HTTP/2, TLS through rustls, every request
metadata key passed on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, NamedTuple, NoReturn, Sequence

import grpc

from graphdb.errors import FailedPrecondition

try:
    import ig_front
except ImportError:  # not built: `make setup` builds it where a Rust toolchain is present
    ig_front = None

log = logging.getLogger(__name__)
INTERNAL_ERROR = (grpc.StatusCode.INTERNAL.value[0], "internal error; the server log has the details", None)


class Http2Limits(NamedTuple):
    """Per-connection HTTP/2 limits of the front end on tonic (IG_SERVER_H2_*, server.settings)."""

    max_concurrent_streams: int = 256
    max_header_list_bytes: int = 16384
    keepalive_interval_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_pending_accept_reset_streams: int = 20
    max_local_error_reset_streams: int = 1024


def available() -> bool:
    return ig_front is not None


class _Aborted(Exception):
    """Raised by ``NativeContext.abort``, as grpc's context raises once the status is set."""


class NativeContext:
    """The part of ``grpc.ServicerContext`` the unary behaviours use."""

    __slots__ = ("_metadata", "_deadline", "_code", "_details")

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]], timeout_s: float | None) -> None:
        self._metadata = metadata
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        # as grpc: aborting with OK is a bug of the caller
        self._code = grpc.StatusCode.UNKNOWN if code is grpc.StatusCode.OK else code
        self._details = details
        raise _Aborted(details)

    def code(self) -> grpc.StatusCode | None:
        return self._code


class Dispatcher:
    """Runs a method's behaviour on a request's bytes; what the front end calls, one method per list index, with
    the request's metadata (every key but pseudo-, hop-by-hop and transport headers; ``-bin`` values decoded)."""

    def __init__(self, names: Sequence[str], handlers: Sequence[grpc.RpcMethodHandler]) -> None:
        self._names = list(names)
        self._calls = [(h.request_deserializer, h.unary_unary, h.response_serializer) for h in handlers]

    def __call__(
        self, index: int, data: bytes, metadata: Sequence[tuple[str, str | bytes]], timeout_s: float | None
    ) -> tuple[int, str, bytes | None]:
        deserialize, behaviour, serialize = self._calls[index]
        context = NativeContext(metadata, timeout_s)
        try:
            response = behaviour(deserialize(data), context)
        except _Aborted:  # the status is in the context
            response = None
        except Exception:  # noqa: BLE001 - the wrappers translate errors; this is the last line of defence
            log.exception("unexpected error answering %s%s", self._names[index], request_id(metadata))
            return INTERNAL_ERROR
        code = context._code
        if log.isEnabledFor(logging.DEBUG):  # one line per call, with the client's request id to find it by
            log.debug("%s: %s%s", self._names[index], "OK" if code is None else code.name, request_id(metadata))
        if code is not None:
            return code.value[0], context._details, None
        return 0, "", serialize(response)


def request_id(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    """`` [x-request-id=...]`` for a log line when the client sent one, else empty."""
    for key, value in metadata:
        if key == "x-request-id":
            return f" [x-request-id={value!s}]"
    return ""


class FrontedServer:
    """The native front end and grpc's server behind it, started and stopped as one (grpc.Server's calls)."""

    def __init__(self, backend: grpc.Server, front: Any) -> None:
        self.backend = backend
        self.front = front

    def start(self) -> None:
        self.backend.start()
        self.front.start()

    def reload_tls(self, cert_pem: bytes, key_pem: bytes) -> None:
        """New handshakes present this certificate; ValueError (what was wrong) leaves the current one."""
        self.front.reload_tls(cert_pem, key_pem)

    def stop(self, grace: float | None) -> threading.Event:
        """Stops taking calls, lets those in flight finish within ``grace`` seconds; the event is set when done."""
        self.front.stop(grace or 0.0)
        done: threading.Event = self.backend.stop(grace)
        return done


def native_front(
    host: str,
    port: int,
    reuse_port: bool,
    backend_port: int,
    methods: Sequence[tuple[str, grpc.RpcMethodHandler, bool, int]],
    *,
    wait_threads: int,
    max_concurrent_rpcs: int,
    max_message_bytes: int,
    io_threads: int = 2,
    tls: tuple[bytes, bytes] | None = None,
    http2: Http2Limits | None = None,
) -> Any:
    """A bound, not yet started front end answering ``methods`` (full name, wrapped handler, may wait, number of
    the request's bool field that makes a call wait or 0): queries on its ``io_threads``, calls that may wait on
    up to ``wait_threads`` threads of their own, so a slow graph read never holds up an I/O thread. ``tls``:
    (certificate chain PEM, key PEM)."""
    if ig_front is None:
        raise FailedPrecondition(
            "IG_SERVER_FRONT=native, but the native front end is not built: run `make setup` "
            "(it needs a Rust toolchain) or set IG_SERVER_FRONT=grpc"
        )
    names = [name for name, _, _, _ in methods]
    handlers = [handler for _, handler, _, _ in methods]
    table = [(name, waits, waits_if) for name, _, waits, waits_if in methods]
    limits = http2 or Http2Limits()
    return ig_front.TonicFront(
        host,
        port,
        reuse_port,
        backend_port,
        Dispatcher(names, handlers),
        table,
        wait_threads,
        max_concurrent_rpcs,
        max_message_bytes,
        io_threads,
        tls=tls,
        max_concurrent_streams=limits.max_concurrent_streams,
        max_header_list_bytes=limits.max_header_list_bytes,
        keepalive_interval_s=limits.keepalive_interval_s,
        keepalive_timeout_s=limits.keepalive_timeout_s,
        max_pending_accept_reset_streams=limits.max_pending_accept_reset_streams,
        max_local_error_reset_streams=limits.max_local_error_reset_streams,
    )
