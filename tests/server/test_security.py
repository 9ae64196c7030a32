"""Health, reflection, bearer-token auth, TLS and the message-size limit, on real servers."""

from __future__ import annotations

import subprocess
import time

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from tests.server.conftest import base_settings, load_items, start_harness

SERVICE = "interest.v1.InterestService"


def _health(channel, service: str = SERVICE):
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_not_serving_until_the_index_is_loaded(server_graph_settings) -> None:
    harness, stop = start_harness(base_settings(), server_graph_settings)
    try:
        ch = harness.channel()
        assert _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(ch, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.InterestServiceStub(ch).SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=1), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "not loaded" in err.value.details()
        harness.call(load_items, harness.engine)
        # the health service is told on the server's event loop: poll it rather than guess when that has run
        deadline = time.monotonic() + 10
        while _health(ch) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "still NOT_SERVING after the index was loaded"
            time.sleep(0.02)
        assert pb_grpc.InterestServiceStub(ch).SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=1), timeout=10).items
    finally:
        stop()


def test_reflection_describes_the_service(plain_server) -> None:
    db = ProtoReflectionDescriptorDatabase(plain_server.channel())
    assert SERVICE in db.get_services() and "grpc.health.v1.Health" in db.get_services()
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName(SERVICE)
    methods = {m.name for m in svc.methods}
    assert methods == {
        "SimilarItems",
        "RecommendForUser",
        "NearestItems",
        "IngestEvents",
        "GetEmbedding",
        "ForgetUser",
        "BatchRecommend",
        "RecommendForSession",
        "SimilarUsers",
    }
    assert pool.FindMessageTypeByName("interest.v1.EmbeddingDelta").fields_by_name["vector"]


@pytest.fixture(scope="module")
def auth_server(server_graph_settings):
    harness, stop = start_harness(base_settings(auth_tokens="tok-a, tok-b"), server_graph_settings, setup=load_items)
    yield harness
    stop()


def test_bearer_token_is_enforced(auth_server) -> None:
    stub = auth_server.stub()
    req = pb.SimilarItemsRequest(item_id="item-1", k=3)
    for metadata in (None, [("authorization", "Bearer nope")], [("authorization", "tok-a")], [("authorization", "Basic tok-a")]):
        with pytest.raises(grpc.RpcError) as err:
            stub.SimilarItems(req, metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
    for token in ("tok-a", "tok-b"):
        assert len(stub.SimilarItems(req, metadata=[("authorization", f"Bearer {token}")], timeout=10).items) == 3
    # client-streaming methods are guarded too
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestEvents(iter([pb.IngestEventsRequest()]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_is_open_and_reflection_needs_a_token(auth_server) -> None:
    ch = auth_server.channel()
    assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        ProtoReflectionDescriptorDatabase(ch).get_services()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_message_size_limit(server_graph_settings) -> None:
    harness, stop = start_harness(base_settings(max_message_bytes=2048), server_graph_settings, setup=load_items)
    try:
        with pytest.raises(grpc.RpcError) as err:
            harness.stub().NearestItems(pb.NearestItemsRequest(vector=[1.0] * 1000, k=1), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stop()


def test_tls(tmp_path, server_graph_settings) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    harness, stop = start_harness(
        base_settings(tls_cert_file=cert, tls_key_file=key, host="localhost"), server_graph_settings, setup=load_items
    )
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{harness.port}", creds) as ch:
            resp = pb_grpc.InterestServiceStub(ch).SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=2), timeout=10)
            assert len(resp.items) == 2
        with grpc.insecure_channel(f"localhost:{harness.port}") as ch:
            with pytest.raises(grpc.RpcError):
                pb_grpc.InterestServiceStub(ch).SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=2), timeout=3)
    finally:
        stop()


def test_concurrent_rpc_limit(server_graph_settings) -> None:
    import threading

    harness, stop = start_harness(base_settings(max_concurrent_rpcs=1), server_graph_settings, setup=load_items)
    release = threading.Event()

    def held_open():
        yield pb.IngestEventsRequest()
        release.wait(10)

    try:
        stub = harness.stub()
        holder = stub.IngestEvents.future(held_open(), timeout=15)
        # Until the held call reaches the server a query may still get through; once it does, queries are refused.
        # A query in flight when the held call arrives gets the held call refused instead (the same limit, seen
        # from the other side): then it is opened again.
        deadline = time.monotonic() + 10
        while True:
            try:
                stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=1), timeout=5)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                break
            if holder.done():
                assert holder.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED, holder.exception()
                holder = stub.IngestEvents.future(held_open(), timeout=15)
            assert time.monotonic() < deadline, "a query was never refused while a call was in flight"
            time.sleep(0.02)
        assert not holder.done()  # refused while the one allowed call was (still) in flight
        release.set()
        with pytest.raises(grpc.RpcError):
            holder.result()  # no graph here: UNAVAILABLE, but it ran
        assert stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=1), timeout=5).items
    finally:
        release.set()
        stop()


def test_streams_cannot_take_the_threads_queries_need(server_graph_settings) -> None:
    """Streaming calls hold a thread while their client keeps the stream open: they run on the waiting pool, never
    on the query threads, and past IG_SERVER_STREAM_THREADS they are refused (RESOURCE_EXHAUSTED, saying why);
    queries keep answering, and a slot frees when a stream ends. Health Watch needs no token, so it is the
    stream anyone could open."""
    import threading

    # Two query threads: were the two held Watch streams on them, no query could be answered.
    settings = base_settings(rpc_threads=2, wait_threads=3, stream_threads=2)
    harness, stop = start_harness(settings, server_graph_settings, setup=load_items)
    release = threading.Event()

    def held_open():
        yield pb.IngestEventsRequest()
        release.wait(15)

    try:
        health = health_pb2_grpc.HealthStub(harness.channel())
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=20) for _ in range(2)]
        for watch in watches:  # both are running: each has sent the current status
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            next(health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "streaming calls" in err.value.details()
        stub = harness.stub()
        with pytest.raises(grpc.RpcError) as err:
            stub.IngestEvents(held_open(), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "STREAM_THREADS" in err.value.details()
        for j in range(20):  # the query threads answer
            assert stub.SimilarItems(pb.SimilarItemsRequest(item_id=f"item-{j}", k=3), timeout=5).items
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status == health_pb2.HealthCheckResponse.SERVING

        watches[0].cancel()  # a slot frees: a stream is accepted again
        # A Watch that runs answers the current status at once: that, not time, shows the slot was given back.
        deadline = time.monotonic() + 10
        while True:
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=20)
            try:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert time.monotonic() < deadline, "the cancelled Watch never gave its slot back"
            time.sleep(0.02)
        watch.cancel()  # and once that one ends too, a client stream runs in the slot
        release.set()
        deadline = time.monotonic() + 10
        while True:
            with pytest.raises(grpc.RpcError) as err:
                stub.IngestEvents(iter([pb.IngestEventsRequest()]), timeout=10)
            if err.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
            assert time.monotonic() < deadline, "the second cancelled Watch never gave its slot back"
            time.sleep(0.02)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # it ran: no graph database behind this server
    finally:
        release.set()
        stop()


def test_stream_threads_must_leave_threads_for_calls_waiting_on_the_graph() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be below IG_SERVER_WAIT_THREADS"):
        base_settings(wait_threads=4, stream_threads=4)
