"""The project's one error hierarchy.

Every error names the gRPC status it maps to (as a string, so this module needs no grpc); the server's
interceptor turns them into statuses, the CLI into messages. Driver errors are translated at the boundary.
"""

from __future__ import annotations


class InterestError(Exception):
    """Base of every error this project raises on purpose."""

    grpc_status = "INTERNAL"


class InvalidInput(InterestError):
    """The caller sent something malformed; the message says what."""

    grpc_status = "INVALID_ARGUMENT"


class NotFound(InterestError):
    grpc_status = "NOT_FOUND"


class Unavailable(InterestError):
    """A backing service (Neo4j, Redis, the index) cannot answer now; retrying later may succeed."""

    grpc_status = "UNAVAILABLE"


class Unauthenticated(InterestError):
    grpc_status = "UNAUTHENTICATED"


class FailedPrecondition(InterestError):
    """The system is not in a state where this request can run (e.g. schema mismatch)."""

    grpc_status = "FAILED_PRECONDITION"


class ResourceExhausted(InterestError):
    grpc_status = "RESOURCE_EXHAUSTED"
