"""Prometheus metrics of a real server, scraped over HTTP: RPC counts and latencies by method and status, index
size, model version, delta-stream freshness and ingestion outcomes reflect exactly what the test did."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from proto.interest.v1 import interest_pb2 as pb
from server.delta import FIELD, encode_delete, encode_upsert
from tests.server.conftest import DIM, base_settings, item_vectors, seed_graph_items, start_harness

N_ITEMS = 40
STREAM = "ig:test-metrics"
SERVICE = "interest.v1.InterestService"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def handled(samples) -> dict[tuple[str, str], float]:
    """(method, code) -> count, over every method of the InterestService."""
    return {
        (dict(lab)["grpc_method"], dict(lab)["grpc_code"]): v
        for (name, lab), v in samples.items()
        if name == "grpc_server_handled_total" and dict(lab)["grpc_service"] == SERVICE
    }


@pytest.fixture
def metered(neo4j_driver, graph_settings, redis_url):
    """A server loaded from Neo4j (N_ITEMS item vectors of model m1), following the delta stream, metrics on a
    free port: (harness, metrics port, item vectors)."""
    ids, vecs = seed_graph_items(neo4j_driver, graph_settings, redis_url, STREAM, N_ITEMS)
    settings = base_settings(redis_url=redis_url, delta_stream=STREAM, delta_block_ms=20, metrics_port=0)
    harness, stop = start_harness(settings, graph_settings, neo4j_driver, redis_url=redis_url, start_lifecycle=True)
    metrics = harness.engine.metrics
    metrics.follow(harness.lifecycle)
    port = metrics.start_http(settings.metrics_host, settings.metrics_port)
    try:
        yield harness, port, vecs
    finally:
        metrics.stop_http()
        stop()


def _fails(fn, request, code: grpc.StatusCode, **kw) -> None:
    with pytest.raises(grpc.RpcError) as err:
        fn(request, timeout=10, **kw)
    assert err.value.code() == code


def test_requests_are_counted_and_timed_by_method_and_code(metered) -> None:
    harness, port, vecs = metered
    assert handled(scrape(port)) == {}
    stub = harness.stub()
    for j in range(3):
        assert stub.SimilarItems(pb.SimilarItemsRequest(item_id=f"item-{j}", k=5), timeout=10).items
    _fails(stub.SimilarItems, pb.SimilarItemsRequest(item_id="no-such-item", k=5), grpc.StatusCode.NOT_FOUND)
    assert stub.NearestItems(pb.NearestItemsRequest(vector=vecs[0].tolist(), k=3), timeout=10).items
    for _ in range(2):
        _fails(stub.NearestItems, pb.NearestItemsRequest(vector=vecs[0].tolist(), k=0), grpc.StatusCode.INVALID_ARGUMENT)
    health = health_pb2_grpc.HealthStub(harness.channel())
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == health_pb2.HealthCheckResponse.SERVING

    samples = scrape(port)
    assert handled(samples) == {
        ("SimilarItems", "OK"): 3,
        ("SimilarItems", "NOT_FOUND"): 1,
        ("NearestItems", "OK"): 1,
        ("NearestItems", "INVALID_ARGUMENT"): 2,
    }
    assert value(samples, "grpc_server_handled_total", grpc_service="grpc.health.v1.Health", grpc_method="Check", grpc_code="OK") == 1
    for method, n in (("SimilarItems", 4), ("NearestItems", 3)):
        labels = dict(grpc_service=SERVICE, grpc_method=method)
        assert value(samples, "grpc_server_handling_seconds_count", **labels) == n
        total = value(samples, "grpc_server_handling_seconds_sum", **labels)
        assert 0 < total < 10
        buckets = sorted(
            (float(dict(lab)["le"]), v)
            for (name, lab), v in samples.items()
            if name == "grpc_server_handling_seconds_bucket" and dict(lab)["grpc_method"] == method
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1] == (float("inf"), n)
    # an unknown method is not counted (its name is the caller's choice)
    unknown = harness.channel().unary_unary(f"/{SERVICE}/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as err:
        unknown(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "NoSuchMethod" not in str(scrape(port).keys())


def test_index_size_model_version_and_delta_freshness(metered, redis_url) -> None:
    harness, port, vecs = metered
    samples = scrape(port)
    assert value(samples, "ig_ready") == 1
    assert value(samples, "ig_index_items") == N_ITEMS
    assert value(samples, "ig_index_delta_rows") == 0 and value(samples, "ig_index_tombstones") == 0
    assert value(samples, "ig_index_user_vectors") == 0
    assert value(samples, "ig_model_info", model_version="m1") == 1
    assert value(samples, "ig_delta_applied_total") == 0 and value(samples, "ig_delta_stale_total") == 0
    assert value(samples, "ig_delta_freshness_lag_seconds") is None  # nothing applied yet

    r = redis.Redis.from_url(redis_url)
    ts = time.time() - 30.0  # vectors computed half a minute ago
    rng = np.random.default_rng(5)
    for payload in (
        encode_upsert(pb.NODE_TYPE_ITEM, "fresh-item", rng.standard_normal(DIM), "m1", ts=ts - 5),
        encode_delete(pb.NODE_TYPE_ITEM, "item-3", "m1", ts=ts - 4),
        encode_upsert(pb.NODE_TYPE_ITEM, "item-4", rng.standard_normal(DIM), "m0", ts=ts - 3),
        encode_upsert(pb.NODE_TYPE_USER, "u_pseudonym", rng.standard_normal(DIM), "m1", ts=ts),
    ):
        r.xadd(STREAM, {FIELD: payload})
    r.xadd(STREAM, {b"junk": b"x"})  # no delta field: skipped as malformed

    deadline = time.monotonic() + 10
    while value(samples := scrape(port), "ig_delta_malformed_total") != 1:
        assert time.monotonic() < deadline, samples
        time.sleep(0.05)
    assert value(samples, "ig_delta_applied_total") == 4
    assert value(samples, "ig_delta_stale_total") == 1  # the m0 upsert
    assert value(samples, "ig_index_items") == N_ITEMS  # one in, one out
    assert value(samples, "ig_index_delta_rows") == 1 and value(samples, "ig_index_tombstones") == 1
    assert value(samples, "ig_index_user_vectors") == 1
    assert value(samples, "ig_delta_last_ts_seconds") == pytest.approx(ts, abs=1e-3)
    assert 30.0 <= value(samples, "ig_delta_freshness_lag_seconds") < 45.0
    assert 0.0 <= value(samples, "ig_delta_stream_lag_seconds") < 5.0  # at the tail


def test_freshness_observes_only_served_vectors_that_answer_a_change(metered, redis_url) -> None:
    """ig_freshness_seconds: mark time (``changed_at``) -> delta applied, for upserts of the served version."""
    harness, port, _vecs = metered
    assert value(scrape(port), "ig_freshness_seconds_count") == 0
    marked = time.time() - 20.0  # the change was written 20 s ago
    rng = np.random.default_rng(6)

    def upsert(node_id: str, version: str, changed_at: float) -> bytes:
        return pb.EmbeddingDelta(
            op=pb.EmbeddingDelta.OP_UPSERT,
            node_type=pb.NODE_TYPE_USER,
            id=node_id,
            model_version=version,
            vector=rng.standard_normal(DIM).tolist(),
            ts=time.time(),
            changed_at=changed_at,
        ).SerializeToString()

    r = redis.Redis.from_url(redis_url)
    for payload in (
        upsert("u_changed", "m1", marked),  # observed
        upsert("u_neighbour", "m1", 0.0),  # recomputed for a neighbour's change: no own mark
        upsert("u_other_model", "m0", marked),
    ):  # stale version: never served
        r.xadd(STREAM, {FIELD: payload})
    deadline = time.monotonic() + 10
    while value(samples := scrape(port), "ig_delta_applied_total") != 3:
        assert time.monotonic() < deadline, samples
        time.sleep(0.05)
    assert value(samples, "ig_freshness_seconds_count") == 1
    assert 20.0 <= value(samples, "ig_freshness_seconds_sum") <= time.time() - marked
    assert value(samples, "ig_freshness_seconds_bucket", le="10.0") == 0
    assert value(samples, "ig_freshness_seconds_bucket", le="30.0") == 1


def test_ingestion_outcomes(metered) -> None:
    harness, port, _ = metered
    samples = scrape(port)
    assert [value(samples, "ig_ingest_events_total", outcome=o) for o in ("accepted", "duplicate", "rejected")] == [0, 0, 0]
    now = time.time()
    events = [pb.Event(event_id=f"ev-{j}", user_id="alice", type=pb.EVENT_TYPE_VIEW, item_id=f"item-{j}", ts=now) for j in range(3)]
    events.append(pb.Event(event_id="ev-0", user_id="alice", type=pb.EVENT_TYPE_VIEW, item_id="item-0", ts=now))
    events.append(pb.Event(event_id="bad", user_id="alice", type=pb.EVENT_TYPE_VIEW, ts=now))  # no item
    resp = harness.stub().IngestEvents(iter([pb.IngestEventsRequest(events=events)]), timeout=60)
    assert (resp.accepted, resp.duplicates, len(resp.rejected)) == (3, 1, 1)
    # replaying the valid ones: all duplicates now
    harness.stub().IngestEvents(iter([pb.IngestEventsRequest(events=events[:3])]), timeout=60)
    samples = scrape(port)
    assert [value(samples, "ig_ingest_events_total", outcome=o) for o in ("accepted", "duplicate", "rejected")] == [3, 4, 1]
    assert handled(samples) == {("IngestEvents", "OK"): 2}


def test_each_server_has_its_own_registry_and_sees_refused_calls(metered, graph_settings) -> None:
    """A second server in the same process, with auth: its unauthenticated and timed-out calls are counted
    there and nowhere else."""
    first, first_port, _ = metered
    settings = base_settings(auth_tokens="s3cret", metrics_port=0)
    second, stop = start_harness(settings, graph_settings, setup=lambda e: e.install(e.load_vectors(*item_vectors(N_ITEMS), "m9")))
    port = second.engine.metrics.start_http("127.0.0.1", 0)
    try:
        stub = second.stub()
        auth = [("authorization", "Bearer s3cret")]
        _fails(stub.SimilarItems, pb.SimilarItemsRequest(item_id="item-1", k=3), grpc.StatusCode.UNAUTHENTICATED)
        assert stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=3), timeout=10, metadata=auth).items

        release = threading.Event()

        def held_open():  # a client stream that stays open until its call is over: only the deadline ends it
            yield pb.IngestEventsRequest()
            release.wait(60)
            yield pb.IngestEventsRequest()

        try:
            with pytest.raises(grpc.RpcError) as err:
                stub.IngestEvents(held_open(), timeout=0.3, metadata=auth)
        finally:
            release.set()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10  # the server notices the deadline on its own schedule
        while ("IngestEvents", "DEADLINE_EXCEEDED") not in handled(samples := scrape(port)):
            assert time.monotonic() < deadline, handled(samples)
            time.sleep(0.05)
        assert handled(samples) == {
            ("SimilarItems", "UNAUTHENTICATED"): 1,
            ("SimilarItems", "OK"): 1,
            ("IngestEvents", "DEADLINE_EXCEEDED"): 1,
        }
        assert value(samples, "ig_model_info", model_version="m9") == 1
        assert value(samples, "ig_delta_applied_total") is None  # follows no stream
        first_samples = scrape(first_port)
        assert handled(first_samples) == {} and value(first_samples, "ig_model_info", model_version="m1") == 1
    finally:
        second.engine.metrics.stop_http()
        stop()
