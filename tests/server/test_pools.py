"""Which pool a call runs on (pure: no services)."""

from __future__ import annotations

import threading

from server.pools import RpcPools, mark_waiting


def _thread_name() -> str:
    return threading.current_thread().name


def test_marked_behaviours_run_on_the_waiting_pool_and_the_rest_on_the_query_threads() -> None:
    pools = RpcPools(query_threads=1, wait_threads=2)
    try:

        def query(request, context):
            return "answer"

        waiting = mark_waiting(lambda request, context: "answer")
        # grpc's order: (context.run, handler, rpc_event, state, behaviour, request, deserializer, serializer)
        on_query = pools.submit(lambda *args: _thread_name(), object(), "state", query, b"req", None, None)
        on_wait = pools.submit(lambda *args: _thread_name(), object(), "state", waiting, b"req", None, None)
        assert on_query.result(5).startswith("rpc-query")
        assert on_wait.result(5).startswith("rpc-wait")
    finally:
        pools.shutdown()


def test_a_full_waiting_pool_leaves_the_query_threads_free() -> None:
    pools = RpcPools(query_threads=1, wait_threads=2)
    release = threading.Event()
    try:
        blocked = mark_waiting(lambda: release.wait(10))
        held = [pools.submit(lambda behaviour: behaviour(), blocked) for _ in range(3)]  # 2 run, 1 queues
        assert pools.submit(lambda: "answered").result(5) == "answered"
        assert not any(f.done() for f in held)
        release.set()
        assert all(f.result(5) for f in held)
    finally:
        release.set()
        pools.shutdown()
