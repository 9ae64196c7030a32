"""The threads RPCs run on: a few for queries, more for the calls that may wait.

grpc's threaded server runs every call on the one executor it is given. A query holds a thread for well under a
millisecond and needs few of them (more only add thread switches: 8 instead of 4 cost ~25 % of the throughput,
bench.serving), while a call waiting on Neo4j or on a client's stream holds one for as long as that takes. Given
one pool, slow calls would take the threads queries need; given two, they cannot. ``server.calls`` marks the
behaviours of the waiting methods (``mark_waiting``), and grpc passes a call's behaviour to ``submit``.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any, Callable

# ids of the marked behaviours (they live as long as the server's cached handlers): looking an id up costs less
# than getattr on grpc's arguments, which raises and catches AttributeError for most of them.
_WAITING: set[int] = set()
_KEEP: list[Callable[..., Any]] = []  # keeps marked behaviours alive, so their ids are never reused


def mark_waiting(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """Runs ``behaviour`` on the waiting pool (returns it, marked)."""
    _KEEP.append(behaviour)
    _WAITING.add(id(behaviour))
    return behaviour


class RpcPools(futures.Executor):
    def __init__(self, query_threads: int, wait_threads: int) -> None:
        self.queries = futures.ThreadPoolExecutor(query_threads, thread_name_prefix="rpc-query")
        self.waiting = futures.ThreadPoolExecutor(wait_threads, thread_name_prefix="rpc-wait")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        # grpc's server submits (context.run, its handler, rpc_event, state, the method's behaviour, ...):
        # whatever the order, a marked behaviour sends the call to the waiting pool.
        waits = any(id(arg) in _WAITING for arg in args)
        return (self.waiting if waits else self.queries).submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.queries.shutdown(wait, cancel_futures=cancel_futures)
        self.waiting.shutdown(wait, cancel_futures=cancel_futures)
