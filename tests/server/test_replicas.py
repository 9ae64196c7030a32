"""Two server replicas on the same Neo4j and the same Redis delta stream: an update published once is served by
both within seconds (every replica reads every entry with plain XREAD; no consumer group shares them out)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from proto.interest.v1 import interest_pb2 as pb
from server.delta import connect_redis, encode_delete, encode_upsert, publish
from server.index import normalise
from tests.server.conftest import DIM, base_settings, seed_graph_items, start_harness

N_ITEMS = 50
STREAM = "ig:test-replicas"
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def replicas(neo4j_driver, graph_settings, redis_url):
    """Two servers loaded from the same graph (model m1) and following the same stream."""
    ids, vecs = seed_graph_items(neo4j_driver, graph_settings, redis_url, STREAM, N_ITEMS)
    settings = base_settings(redis_url=redis_url, delta_stream=STREAM, delta_block_ms=50)
    started = [start_harness(settings, graph_settings, neo4j_driver, redis_url=redis_url, start_lifecycle=True) for _ in range(2)]
    try:
        yield [h for h, _ in started], vecs
    finally:
        for _, stop in started:
            stop()


def _publish(harness, redis_url: str, payload: bytes) -> None:
    """Publishes like a worker does (server.delta.publish, its own client)."""

    async def go():
        client = connect_redis(redis_url)
        try:
            await publish(client, STREAM, payload)
        finally:
            await client.aclose()

    harness.run(go())


def _wait_for(check, what: str):
    """Polls ``check`` until it returns something truthy, up to DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_S:.0f} s: {what}")
        time.sleep(0.05)


def _nearest(stub, vector, k: int = 3) -> list[str]:
    return [i.item_id for i in stub.NearestItems(pb.NearestItemsRequest(vector=list(vector), k=k), timeout=10).items]


def _similar(stub, item_id: str, k: int = 5) -> list[str] | None:
    try:
        resp = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id, k=k), timeout=10)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    assert resp.model_version == "m1"
    return [i.item_id for i in resp.items]


def test_both_replicas_serve_a_new_item_vector(replicas, redis_url) -> None:
    servers, vecs = replicas
    stubs = [h.stub() for h in servers]
    # the new item sits right next to item-7 (a small step away from it), far from everything else
    rng = np.random.default_rng(11)
    # (unit length like the others: the index ranks by inner product, so a longer vector would also rank higher)
    new_vec = normalise((vecs[7] + 0.05 * rng.standard_normal(DIM).astype(np.float32))[None, :])[0]
    for stub in stubs:  # before: unknown everywhere
        assert _similar(stub, "new-item") is None
        assert "new-item" not in _nearest(stub, new_vec)

    _publish(servers[0], redis_url, encode_upsert(pb.NODE_TYPE_ITEM, "new-item", new_vec, "m1"))
    for n, stub in enumerate(stubs):
        top = _wait_for(
            lambda: (lambda got: got if got[0] == "new-item" else None)(_nearest(stub, new_vec)),
            f"replica {n} answering NearestItems with new-item",
        )
        assert top[1] == "item-7"
        similar = _wait_for(lambda: _similar(stub, "new-item"), f"replica {n} knowing new-item")
        assert similar[0] == "item-7" and "new-item" not in similar
        assert "new-item" in _similar(stub, "item-7")  # each replica within DEADLINE_S: _wait_for's deadline


def test_both_replicas_drop_a_deleted_item(replicas, redis_url) -> None:
    servers, vecs = replicas
    stubs = [h.stub() for h in servers]
    for stub in stubs:
        assert _nearest(stub, vecs[12], k=1) == ["item-12"]
    _publish(servers[1], redis_url, encode_delete(pb.NODE_TYPE_ITEM, "item-12", "m1"))
    for n, stub in enumerate(stubs):
        _wait_for(lambda: _similar(stub, "item-12") is None, f"replica {n} dropping item-12")
        assert "item-12" not in _nearest(stub, vecs[12], k=10)
