"""The one place exceptions become gRPC statuses: ``guard`` wraps every unary-response behaviour (``server.calls``).

Project errors (graphdb.errors) carry the status name they map to; anything else is a bug and becomes INTERNAL
with a generic message, the traceback going to the server log only (never to the client).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator

import grpc
from google.protobuf.message import Message
from neo4j.exceptions import ConnectionAcquisitionTimeoutError, ServiceUnavailable, SessionExpired, TransientError

from graphdb.errors import InterestError, InvalidInput

log = logging.getLogger(__name__)
# Driver errors that mean "Neo4j cannot answer now" (IncompleteCommit is a ServiceUnavailable: the write may or
# may not have landed, which idempotent event ids make safe to retry).
GRAPH_UNAVAILABLE = (ServiceUnavailable, SessionExpired, TransientError, ConnectionAcquisitionTimeoutError)


def _status(exc: InterestError) -> grpc.StatusCode:
    try:
        return grpc.StatusCode[exc.grpc_status]
    except KeyError:
        return grpc.StatusCode.INTERNAL


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The status and message an answerable failure gives its caller (what ``guard`` aborts with), or None for a
    bug (guard's INTERNAL): for a batch's entries, which fail one by one."""
    if isinstance(exc, InterestError):
        return _status(exc), str(exc)
    if isinstance(exc, GRAPH_UNAVAILABLE):
        return grpc.StatusCode.UNAVAILABLE, "the graph database is unavailable; retry later"
    return None


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    around: Callable[[Callable[..., Any]], Callable[..., Any]],
    *,
    streaming_responses: bool = False,
) -> grpc.RpcMethodHandler | None:
    """``handler`` with its behaviour wrapped by ``around(behaviour) -> behaviour``.

    Server-streaming methods (health Watch, reflection) keep their own handling unless
    ``streaming_responses`` is set (the wrapper must then yield the responses).
    """
    if handler is None:
        return None
    kinds = ("unary_unary", "stream_unary") + (("unary_stream", "stream_stream") if streaming_responses else ())
    for kind in kinds:
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return handler._replace(**{kind: around(behaviour)})
    return handler


class _Malformed:
    """Stands for a request message whose bytes did not parse; the guard turns it into INVALID_ARGUMENT
    (grpc itself would answer UNKNOWN, or fail inside the servicer for streamed requests)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> InvalidInput:
        return InvalidInput(f"malformed request message: {self.reason}")


def tolerant(deserializer: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> object:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError (and anything a parser may raise)
            return _Malformed(str(exc))

    return deserialize


def _checked(messages: Iterable[Any]) -> Iterator[Any]:
    """A streamed request whose malformed messages raise InvalidInput where the servicer reads them."""
    for message in messages:
        if isinstance(message, _Malformed):
            raise message.error()
        yield message


def guard(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if isinstance(request, _Malformed):
                raise request.error()
            if not isinstance(request, Message):  # client-streaming: an iterator of messages
                request = _checked(request)
            return behaviour(request, context)
        except InterestError as exc:
            context.abort(_status(exc), str(exc))
        except grpc.RpcError:  # the call ended under us (deadline, cancellation): nobody to answer
            raise
        except GRAPH_UNAVAILABLE as exc:  # a driver error a graphdb call did not translate: retryable all the same
            log.warning("Neo4j error in %s: %s", getattr(behaviour, "__qualname__", behaviour), exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the graph database is unavailable; retry later")
        except Exception:  # noqa: BLE001 - last line of defence: log, answer generically
            log.exception("unexpected error in %s", getattr(behaviour, "__qualname__", behaviour))
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")

    return guarded
