"""gzip-compressed calls on the native front end (tonic reads ``grpc-encoding: gzip`` itself): every method of the
API through the generated stubs -- unary, IngestEvents' client stream, health Check and Watch, reflection --
answers alike with ``grpc.Compression.Gzip`` and without (bench.interop's check), against the real server on
Neo4j."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.interop import check
from graphdb.embeddings import write_embeddings
from proto.interest.v1 import interest_pb2 as pb
from server import front
from tests.server.conftest import DIM, base_settings, item_vectors, load_items, start_harness

pytestmark = pytest.mark.skipif(not front.available(), reason="the native front end is not built (`make setup`)")


def test_every_method_answers_alike_with_gzip_requests_and_without(graph, graph_settings) -> None:
    ids, vecs = item_vectors()
    write_embeddings(graph, "Item", zip(ids, vecs.tolist()), "m1")
    harness, stop = start_harness(base_settings(front="native"), graph_settings, graph, setup=load_items)
    try:
        assert isinstance(harness.server, front.FrontedServer)
        report = check(harness.channel(), "item-7", "shopper-1", DIM)
        assert report["differ"] == [], report["differ"]
        codes = report["codes"]
        for name in (
            "SimilarItems",
            "NearestItems",
            "RecommendForUser",
            "GetEmbedding",
            "ForgetUser",
            "BatchRecommend",
            "IngestEvents (client stream)",
            "health Check",
            "health Watch (server stream)",
            "reflection (bidirectional stream)",
        ):
            assert codes[name] == "OK", (name, codes[name])
        assert (codes["SimilarItems unknown item"], codes["SimilarItems k=0"]) == ("NOT_FOUND", "INVALID_ARGUMENT")
        answers = {name: answer for name, _, answer in report["gzip"]}
        assert len(answers["SimilarItems"].items) == 5
        assert list(answers["GetEmbedding"].vector) == pytest.approx(vecs[7].tolist())
        ingest = answers["IngestEvents (client stream)"]
        assert (ingest.received, ingest.accepted, [r.index for r in ingest.rejected]) == (2, 1, [1])
        services, _ = answers["reflection (bidirectional stream)"]
        assert "interest.v1.InterestService" in services
    finally:
        stop()


def test_a_gzip_call_through_the_stub_is_answered_by_the_native_front_end(graph_settings) -> None:
    """The compressed call and health checks are answered by the front end itself, not forwarded: grpc's server
    behind it is stopped first, so only the front end can answer."""
    harness, stop = start_harness(base_settings(front="native"), graph_settings, setup=load_items)
    try:
        harness.server.backend.stop(0).wait()
        stub = harness.stub()
        similar = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=4), timeout=10, compression=grpc.Compression.Gzip)
        assert len(similar.items) == 4 and "item-7" not in [i.item_id for i in similar.items]
        # Health checks too are answered by the front end itself (from the statuses Python sets), without Python.
        health = health_pb2_grpc.HealthStub(harness.channel())
        for service in ("", "interest.v1.InterestService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10, compression=grpc.Compression.Gzip)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # as grpc's health servicer answers
        with pytest.raises(grpc.RpcError) as err:  # a forwarded call has no one to answer it now
            stub.IngestEvents(iter([pb.IngestEventsRequest()]), timeout=10, compression=grpc.Compression.Gzip)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop()
