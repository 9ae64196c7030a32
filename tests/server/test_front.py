"""The native front end (server/native, Rust): it owns the port, answers the unary calls as grpc's Python server
does (same codes, details and answers), compressed calls and health Check included, and forwards what it does
not answer itself (streams, health Watch, reflection) to that server."""

from __future__ import annotations

import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from proto.interest.v1 import interest_pb2 as pb
from server import front
from server.app import use_native_front
from tests.server.conftest import base_settings, load_items, start_harness

# Where cargo exists, `make setup` builds the front end: a missing build there is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    not front.available() and shutil.which("cargo") is None, reason="no Rust toolchain: the native front end cannot be built here"
)

CALLS = [
    ("SimilarItems", pb.SimilarItemsRequest(item_id="item-7", k=5)),
    (
        "SimilarItems",
        pb.SimilarItemsRequest(item_id="item-7", k=5, filter=pb.ItemFilter(category_ids=["Fashion"], exclude_item_ids=["item-13"])),
    ),
    ("SimilarItems", pb.SimilarItemsRequest(item_id="no-such-item", k=5)),
    ("SimilarItems", pb.SimilarItemsRequest(item_id="größe-€", k=5)),  # non-ASCII details travel percent-encoded
    ("SimilarItems", pb.SimilarItemsRequest(item_id="item-7", k=0)),
    ("SimilarItems", pb.SimilarItemsRequest(item_id="", k=5)),
    ("NearestItems", pb.NearestItemsRequest(vector=[0.5] * 16, k=3)),
    ("NearestItems", pb.NearestItemsRequest(vector=[0.5] * 5, k=3)),
    ("NearestItems", pb.NearestItemsRequest(vector=[float("nan")] * 16, k=3)),
    ("RecommendForUser", pb.RecommendForUserRequest(user_id="u-1", k=3)),  # on the pool for calls that wait
    ("GetEmbedding", pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_ITEM, id="item-3")),
]


def _outcomes(port: int, token: str | None = None, compression=None) -> list[tuple]:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    out = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method, request in CALLS:
            call = channel.unary_unary(
                f"/interest.v1.InterestService/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=lambda b: b,
            )
            try:
                answer = call(request, timeout=10, metadata=metadata, compression=compression)
                out.append((method, "OK", answer))
            except grpc.RpcError as err:
                out.append((method, err.code().name, err.details()))
    return out


def _serve(server_graph_settings, **settings):
    return start_harness(base_settings(**settings), server_graph_settings, setup=load_items)


def test_the_native_front_end_owns_the_port_when_built(server_graph_settings) -> None:
    assert front.available(), "cargo is here but the native front end is not built: run `make setup`"
    harness, stop = _serve(server_graph_settings, front="auto")
    try:
        assert isinstance(harness.server, front.FrontedServer)
        assert harness.stub().SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=3), timeout=10).items
    finally:
        stop()


def test_the_front_is_chosen_by_the_settings() -> None:
    tls = dict(tls_cert_file="cert.pem", tls_key_file="key.pem")
    assert use_native_front(base_settings(front="auto")) == front.available()
    assert use_native_front(base_settings(front="native"))
    assert not use_native_front(base_settings(front="grpc"))
    assert use_native_front(base_settings(front="auto", **tls)) == front.available()  # the tonic one terminates TLS
    assert use_native_front(base_settings(front="native", **tls))
    with pytest.raises(ValidationError, match="front"):  # the first native front end is gone
        base_settings(front="native-legacy")


@pytest.mark.parametrize("tokens", ["", "s3cret"])
def test_both_fronts_answer_every_call_alike(server_graph_settings, tokens) -> None:
    """Same answers, codes and details, with and without auth; the native front's are not all OK or all errors."""
    outcomes = {}
    for name in ("native", "grpc"):
        harness, stop = _serve(server_graph_settings, front=name, auth_tokens=tokens)
        try:
            outcomes[name] = _outcomes(harness.port, token=tokens or None)
            if tokens:  # a wrong token is refused alike too
                outcomes[name] += _outcomes(harness.port, token="wrong")
        finally:
            stop()
    assert outcomes["native"] == outcomes["grpc"]
    codes = {code for _, code, _ in outcomes["native"]}
    assert {"OK", "NOT_FOUND", "INVALID_ARGUMENT"} <= codes
    assert ("SimilarItems", "NOT_FOUND", "item 'größe-€' has no vector in model 'm1'") in outcomes["native"]
    if tokens:
        assert sum(code == "UNAUTHENTICATED" for _, code, _ in outcomes["native"]) == len(CALLS)


def test_compressed_calls_and_health_are_answered_alike(server_graph_settings) -> None:
    harness, stop = _serve(server_graph_settings, front="native")
    try:
        plain = _outcomes(harness.port)
        assert _outcomes(harness.port, compression=grpc.Compression.Gzip) == plain
        with grpc.insecure_channel(f"127.0.0.1:{harness.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stop()


def test_a_query_past_its_deadline_is_answered_and_counted_as_such(server_graph_settings) -> None:
    """The client's grpc-timeout reaches the behaviour: a query held up (here by the engine lock, as a model
    switch would) past its deadline fails with DEADLINE_EXCEEDED, is counted so, and the server serves on."""
    import time

    from tests.server.test_metrics import handled, scrape

    harness, stop = _serve(server_graph_settings, front="native")
    port = harness.engine.metrics.start_http("127.0.0.1", 0)
    try:
        stub = harness.stub()
        request = pb.SimilarItemsRequest(item_id="item-7", k=3)
        with harness.engine.lock:
            with pytest.raises(grpc.RpcError) as err:
                stub.SimilarItems(request, timeout=0.3)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # Part of what is tested, not a wait for a state: the server measures the call's grpc-timeout in wall
            # time from when the call reached it, a little after the client's clock started, so its deadline may
            # still be ahead when the client gives up. Hold the lock past it; the query is still waiting for it.
            time.sleep(0.3)
        assert stub.SimilarItems(request, timeout=10).items
        deadline = time.monotonic() + 10
        while handled(samples := scrape(port)) != {("SimilarItems", "DEADLINE_EXCEEDED"): 1, ("SimilarItems", "OK"): 1}:
            assert time.monotonic() < deadline, handled(samples)
            time.sleep(0.05)
    finally:
        harness.engine.metrics.stop_http()
        stop()


def test_answers_over_the_message_limit_are_refused_by_both_fronts(server_graph_settings) -> None:
    for name in ("native", "grpc"):
        harness, stop = _serve(server_graph_settings, front=name, max_message_bytes=1024)
        try:
            stub = harness.stub()
            assert len(stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=5), timeout=10).items) == 5
            with pytest.raises(grpc.RpcError) as err:  # 100 scored items: ~1.7 kB
                stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=100), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, name
        finally:
            stop()
