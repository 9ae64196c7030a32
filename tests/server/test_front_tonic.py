"""The native front end on tonic (``ig_front.TonicFront``) on its own, with a Python dispatch that records what
reaches it: request metadata, the HTTP checks before any gRPC handling, and deadlines that hold while a call
queues for the waiting pool. Through the whole server: a client's x-request-id in the log line of its call."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time

import grpc
import pytest

from proto.interest.v1 import interest_pb2 as pb
from server import front
from tests.server.conftest import base_settings, load_items, start_harness

pytestmark = pytest.mark.skipif(not front.available(), reason="the native front end is not built (`make setup`)")

QUERY, WAIT = "/test.v1.T/Query", "/test.v1.T/Wait"


class Recorder:
    """The dispatch: records each call it runs; a ``hold`` request waits until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes, tuple]] = []
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, index: int, data: bytes, metadata: tuple, timeout_s: float | None) -> tuple[int, str, bytes | None]:
        self.calls.append((index, data, metadata))
        if data == b"hold":
            self.holding.set()
            assert self.release.wait(30)
        return 0, "", b"answer:" + data


@pytest.fixture
def tonic():
    recorder = Recorder()
    methods = [(QUERY, False, 0), (WAIT, True, 0)]
    # backend_port 9: nothing is forwarded in these tests
    server = front.ig_front.TonicFront("127.0.0.1", 0, False, 9, recorder, methods, 1, 64, 1 << 20, 2)
    server.start()
    try:
        yield server, recorder
    finally:
        recorder.release.set()
        server.stop(1.0)


def _call(port: int, method: str):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, channel.unary_unary(method)  # bytes in, bytes out


def test_every_request_metadata_key_reaches_the_handler(tonic) -> None:
    server, recorder = tonic
    channel, call = _call(server.port, QUERY)
    with channel:
        metadata = (
            ("x-request-id", "req-1"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("x-tag", "a"),
            ("x-tag", "b"),
            ("trace-bin", b"\x00\x01\xff"),
            ("authorization", "Bearer t"),
        )
        assert call(b"q", metadata=metadata, timeout=10) == b"answer:q"
    (_, data, got), *_ = recorder.calls
    assert data == b"q"
    keys = [key for key, _ in got]
    for pair in metadata:
        assert pair in got, (pair, got)
    assert keys.index("x-tag") < len(keys) - 1 - keys[::-1].index("x-tag")  # both values, in order
    assert not {"content-type", "te", "grpc-timeout", "grpc-accept-encoding"} & set(keys), keys
    assert not any(key.startswith(":") for key in keys)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl (with HTTP/2) sends the non-gRPC requests")
def test_a_request_that_is_not_a_grpc_post_is_refused_with_its_http_status(tonic) -> None:
    server, recorder = tonic

    def status(*args: str) -> str:
        url = f"http://127.0.0.1:{server.port}{QUERY}"
        command = ["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", *args, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout

    # Without a body: the refusal comes before any body is read, and a stream reset under an upload fails curl.
    assert status("-X", "POST", "-H", "content-type: application/json") == "415"
    assert status("-X", "GET", "-H", "content-type: application/grpc") == "405"
    assert recorder.calls == []
    # The same request as gRPC is answered (one framed empty message): the checks refuse only what they name.
    grpc_call = ["-X", "POST", "-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", "@-"]
    url = f"http://127.0.0.1:{server.port}{QUERY}"
    command = ["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", *grpc_call, url]
    done = subprocess.run(command, input=b"\x00\x00\x00\x00\x00", capture_output=True, timeout=30, check=True)
    assert done.stdout == b"200"
    assert [data for _, data, _ in recorder.calls] == [b""]


def test_a_call_whose_deadline_passes_in_the_queue_is_not_run(tonic) -> None:
    """One waiting thread: a held call takes it; a second call's deadline passes while it queues, so it is
    answered DEADLINE_EXCEEDED and never runs, and the thread then serves the next call."""
    server, recorder = tonic
    channel, call = _call(server.port, WAIT)
    with channel:
        held = call.future(b"hold", timeout=30)
        assert recorder.holding.wait(10)
        with pytest.raises(grpc.RpcError) as err:
            call(b"late", timeout=0.2)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server gave up on it too: only the held call is left in flight (the client's clock may run out first).
        deadline = time.monotonic() + 10
        while server.in_flight != 1:
            assert time.monotonic() < deadline, server.in_flight
            time.sleep(0.01)
        recorder.release.set()
        assert held.result() == b"answer:hold"
        assert call(b"next", timeout=10) == b"answer:next"
    assert [data for _, data, _ in recorder.calls] == [b"hold", b"next"]


def test_a_clients_request_id_is_in_the_log_line_of_its_call(server_graph_settings, caplog) -> None:
    harness, stop = start_harness(base_settings(front="native"), server_graph_settings, setup=load_items)
    try:
        stub = harness.stub()
        with caplog.at_level(logging.DEBUG, logger="server.front"):
            stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=3), metadata=(("x-request-id", "req-42"),), timeout=10)
            with pytest.raises(grpc.RpcError):
                stub.SimilarItems(pb.SimilarItemsRequest(item_id="nope", k=3), metadata=(("x-request-id", "req-43"),), timeout=10)
        lines = [r.getMessage() for r in caplog.records if r.name == "server.front"]
        assert "/interest.v1.InterestService/SimilarItems: OK [x-request-id=req-42]" in lines, lines
        assert "/interest.v1.InterestService/SimilarItems: NOT_FOUND [x-request-id=req-43]" in lines, lines
    finally:
        stop()


def test_health_is_answered_while_queries_wait_on_the_engine_lock(server_graph_settings) -> None:
    """More queries than I/O threads held up by the engine lock (as a model switch holds it): the port does not
    stall, health checks (forwarded to grpc's server) are answered within their deadline, and once the lock is
    released every held query is answered."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    harness, stop = start_harness(base_settings(front="native", io_threads=2), server_graph_settings, setup=load_items)
    try:
        stub = harness.stub()
        request = pb.SimilarItemsRequest(item_id="item-7", k=3)
        with harness.engine.lock:
            held = [stub.SimilarItems.future(request, timeout=60) for _ in range(6)]
            deadline = time.monotonic() + 10
            while harness.server.front.in_flight < len(held):  # every one has reached the server and waits
                assert time.monotonic() < deadline, harness.server.front.in_flight
                time.sleep(0.01)
            # On a connection of their own and on the held queries' own connection (their channel).
            with grpc.insecure_channel(f"127.0.0.1:{harness.port}", options=[("grpc.use_local_subchannel_pool", 1)]) as own:
                for channel in (own, harness.channels[-1]):
                    health = health_pb2_grpc.HealthStub(channel)
                    for _ in range(3):
                        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                        assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert not any(call.done() for call in held)  # still held: the health checks did not wait for them
        assert all(call.result().items for call in held)
    finally:
        stop()
