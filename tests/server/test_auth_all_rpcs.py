"""Bearer-token auth on every RPC of the service (taken from the proto, so a new RPC is covered the day it is
added), the open health service, reflection behind the token, and the refusal to listen beyond loopback
without auth. tests/server/test_security.py covers the token formats on one RPC, TLS and the limits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from graphdb import localstack
from graphdb.errors import FailedPrecondition
from proto.interest.v1 import interest_pb2 as pb
from server.app import check_exposure
from server.settings import ServerSettings
from tests.server.conftest import DIM, base_settings, load_items, start_harness

ROOT = Path(__file__).resolve().parents[2]
SERVICE = pb.DESCRIPTOR.services_by_name["InterestService"]
TOKENS = "tok-a, tok-b"

# A request each RPC would answer (OK, or a domain status) once authenticated; unary and streaming alike.
REQUESTS = {
    "SimilarItems": pb.SimilarItemsRequest(item_id="item-1", k=3),
    "RecommendForUser": pb.RecommendForUserRequest(user_id="alice", k=3),
    "NearestItems": pb.NearestItemsRequest(vector=[1.0] * DIM, k=3),
    "IngestEvents": pb.IngestEventsRequest(
        events=[pb.Event(event_id="e1", user_id="u", type=pb.EVENT_TYPE_VIEW, item_id="item-1", ts=1.0)]
    ),
    "GetEmbedding": pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_ITEM, id="item-1"),
    "ForgetUser": pb.ForgetUserRequest(user_id="alice"),
    "BatchRecommend": pb.BatchRecommendRequest(entries=[pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id="item-1", k=3))]),
    "RecommendForSession": pb.RecommendForSessionRequest(k=3),
    "SimilarUsers": pb.SimilarUsersRequest(user_id="alice", k=3),
}


def _call(channel: grpc.Channel, method, metadata) -> grpc.StatusCode:
    """Calls one RPC generically (by descriptor) and returns its status code."""
    path = f"/{SERVICE.full_name}/{method.name}"
    response_cls = message_factory.GetMessageClass(method.output_type)
    request = REQUESTS[method.name]
    kw = dict(request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_cls.FromString)
    try:
        if method.client_streaming:
            channel.stream_unary(path, **kw)(iter([request]), metadata=metadata, timeout=10)
        else:
            channel.unary_unary(path, **kw)(request, metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def auth_server(server_graph_settings):
    harness, stop = start_harness(base_settings(auth_tokens=TOKENS), server_graph_settings, setup=load_items)
    yield harness
    stop()


def test_the_request_table_covers_every_rpc() -> None:
    assert set(REQUESTS) == {m.name for m in SERVICE.methods}


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_every_rpc_needs_a_valid_token(auth_server, method) -> None:
    ch = auth_server.channel()
    for metadata in (
        None,
        [("authorization", "Bearer wrong")],
        [("authorization", "Bearer ")],
        [("authorization", "Bearer tok-a-but-longer")],
        [("authorization", "tok-a")],
        [("x-api-key", "tok-a")],
    ):
        assert _call(ch, method, metadata) == grpc.StatusCode.UNAUTHENTICATED, (method.name, metadata)
    # with either configured token the call gets past auth and gets its normal answer (this server has no graph
    # database: ingestion and SimilarUsers (which asks the graph's index) answer UNAVAILABLE, the other graph-backed
    # calls degrade to empty/cold-start answers)
    want = grpc.StatusCode.UNAVAILABLE if method.name in ("IngestEvents", "SimilarUsers") else grpc.StatusCode.OK
    for token in ("tok-a", "tok-b"):
        assert _call(ch, method, [("authorization", f"Bearer {token}")]) == want, (method.name, token)


def test_health_check_and_watch_are_open(auth_server) -> None:
    stub = health_pb2_grpc.HealthStub(auth_server.channel())
    for service in ("", SERVICE.full_name):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_reflection_needs_a_token(auth_server) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(auth_server.channel())
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    for metadata in (None, [("authorization", "Bearer wrong")]):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ServerReflectionInfo(iter([ask]), metadata=metadata, timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answers = list(stub.ServerReflectionInfo(iter([ask]), metadata=[("authorization", "Bearer tok-b")], timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert SERVICE.full_name in names


# -- listening beyond loopback ----------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_token(host) -> None:
    settings = ServerSettings(host=host, port=0)
    assert settings.loopback_only
    check_exposure(settings)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "server.example.com"])
def test_public_address_without_token_is_refused(host) -> None:
    settings = ServerSettings(host=host, port=0)
    assert not settings.loopback_only
    with pytest.raises(FailedPrecondition) as err:
        check_exposure(settings)
    assert host in str(err.value) and "IG_SERVER_AUTH_TOKENS" in str(err.value)
    assert "IG_SERVER_ALLOW_INSECURE_PUBLIC" in str(err.value)
    check_exposure(ServerSettings(host=host, port=0, auth_tokens="t"))  # with auth: fine
    check_exposure(ServerSettings(host=host, port=0, allow_insecure_public=True))  # explicitly allowed


def test_create_server_refuses_a_public_address_without_token(server_graph_settings) -> None:
    with pytest.raises(FailedPrecondition):
        start_harness(base_settings(host="0.0.0.0"), server_graph_settings, setup=load_items)
    # with a token it listens on every interface, loopback included, and enforces the token
    harness, stop = start_harness(base_settings(host="0.0.0.0", auth_tokens="t"), server_graph_settings, setup=load_items)
    try:
        stub = harness.stub()
        req = pb.SimilarItemsRequest(item_id="item-1", k=2)
        assert len(stub.SimilarItems(req, metadata=[("authorization", "Bearer t")], timeout=10).items) == 2
        with pytest.raises(grpc.RpcError) as err:
            stub.SimilarItems(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop()


def test_python_m_server_exits_with_a_clear_error_on_a_public_address_without_token() -> None:
    port = localstack.free_port()
    env = dict(
        os.environ,
        IG_SERVER_HOST="0.0.0.0",
        IG_SERVER_PORT=str(port),
        IG_SERVER_AUTH_TOKENS="",
        IG_SERVER_SNAPSHOT_DIR="",
        IG_SERVER_REDIS_URL="",
        NEO4J_URI=f"bolt://127.0.0.1:{port}",
    )
    env.pop("IG_SERVER_ALLOW_INSECURE_PUBLIC", None)
    proc = subprocess.run([sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "refusing to listen on 0.0.0.0" in out and "IG_SERVER_ALLOW_INSECURE_PUBLIC=true" in out
    # it fails before trying to reach Neo4j (nothing listens there): no connection error reported
    assert "not reachable" not in out and "ServiceUnavailable" not in out
    assert not localstack.port_open(port)


def test_allow_insecure_public_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("IG_SERVER_ALLOW_INSECURE_PUBLIC", "true")
    monkeypatch.setenv("IG_SERVER_HOST", "0.0.0.0")
    settings = ServerSettings()
    assert settings.allow_insecure_public
    check_exposure(settings)
