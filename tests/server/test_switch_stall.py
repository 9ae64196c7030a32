"""No stall on the port during a model switch (issue 20): a server behind the native front end serves model m1
over 150k items while the rollout path (OP_ACTIVATE_MODEL on the delta stream -> Lifecycle._switch: every m2
vector read from Neo4j, the index built beside m1, installed under the engine's lock) runs; meanwhile health
checks and SimilarItems, at a steady rate with their deadlines, keep being answered. Real Neo4j and Redis.
``python -m bench.switch_stall`` measures the same at 1M items."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graphdb.embeddings import write_embeddings
from graphdb.items import ItemRecord, upsert_items
from graphdb.marks import new_token
from graphdb.schema import wipe
from proto.interest.v1 import interest_pb2 as pb
from server import front
from server.delta import FIELD, encode_activate
from server.engine import index_params
from server.index import ItemIndex, LabelMap
from server.snapshot import save_snapshot
from tests.server.conftest import DIM, base_settings, item_vectors, start_harness

pytestmark = pytest.mark.skipif(not front.available(), reason="the native front end is not built (`make setup`)")

N_ITEMS = 150_000
STREAM = "ig:test-switch-stall"
HEALTH_DEADLINE_S = 0.1
SIMILAR_DEADLINE_S = 0.25
EVERY_S = 0.02  # each client's pace: a call of each kind every 20 ms


def _seed_version(driver, ids: list[str], vecs: np.ndarray, version: str, chunk: int = 10_000) -> None:
    """``ids`` as catalogue items carrying ``version``'s vectors, written as a worker writes them."""
    now = time.time()
    with driver.session() as session:
        for start in range(0, len(ids), chunk):
            records = [ItemRecord(i) for i in ids[start : start + chunk]]
            session.execute_write(lambda tx: upsert_items(tx, records, token=new_token(), now=now))
    written = write_embeddings(driver, "Item", zip(ids, vecs.tolist()), version, in_scales=dict.fromkeys(ids, 1.0))
    assert written == len(ids)


class Pacer:
    """One kind of call at a steady pace on its own channel, from ``start()`` until ``stop``; each call is kept
    with its status and whether the switch was in progress both before it was sent and after it was answered."""

    def __init__(self, call, switching, stop: threading.Event) -> None:
        self.call, self.switching, self.stop = call, switching, stop
        self.calls: list[tuple[bool, grpc.StatusCode, str]] = []
        self.latencies_ms: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            before = self.switching()
            sent = time.perf_counter()
            try:
                detail = self.call()
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code, detail = err.code(), err.details() or ""
            self.latencies_ms.append((time.perf_counter() - sent) * 1e3)  # for the failure message only
            self.calls.append((before and self.switching(), code, detail))
            self.stop.wait(EVERY_S)

    def missed(self) -> str:
        """What went wrong inside the switch, for the failure message."""
        bad = [
            (code.name, round(ms, 1))
            for (inside, code, _), ms in zip(self.calls, self.latencies_ms)
            if inside and code != grpc.StatusCode.OK
        ]
        inside = sorted(ms for (flag, _, _), ms in zip(self.calls, self.latencies_ms) if flag)
        return f"{len(bad)} of {len(inside)} failed: {bad[:5]}; slowest {inside[-5:]}"

    def during(self) -> list[tuple[grpc.StatusCode, str]]:
        return [(code, detail) for inside, code, detail in self.calls if inside]


@pytest.fixture
def serving_m1(neo4j_driver, graph_settings, redis_url, tmp_path: Path):
    """m1 loaded from a snapshot at start; m2's vectors of the same items in Neo4j, not yet announced."""
    wipe(neo4j_driver)
    redis.Redis.from_url(redis_url).delete(STREAM)
    ids, m1 = item_vectors(N_ITEMS, seed=0)
    _, m2 = item_vectors(N_ITEMS, seed=7)
    _seed_version(neo4j_driver, ids, m2, "m2")
    settings = base_settings(
        front="native",
        redis_url=redis_url,
        delta_stream=STREAM,
        delta_block_ms=20,
        snapshot_dir=tmp_path,
        snapshot_writer=False,
        ann_min_items=10_000,
    )
    index = ItemIndex.build(DIM, "m1", LabelMap(), index_params(settings), ids, m1, None, np.ones(N_ITEMS, np.float32))
    save_snapshot(tmp_path, index, {}, stream_id="0-0")
    del index
    harness, stop = start_harness(settings, graph_settings, neo4j_driver, redis_url=redis_url, start_lifecycle=True)
    try:
        yield harness, ids
    finally:
        stop()
        wipe(neo4j_driver)


def test_health_and_similar_items_answer_within_deadlines_during_a_switch(serving_m1, redis_url) -> None:
    harness, ids = serving_m1
    lifecycle, engine = harness.lifecycle, harness.engine
    assert engine.serving.index.model_version == "m1" and len(engine.serving.index) == N_ITEMS
    stub = harness.stub()
    health = health_pb2_grpc.HealthStub(harness.channel())
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING

    def switching() -> bool:  # m2 is being built and m1 still served
        return "m2" in lifecycle.switching and engine.serving.index.model_version == "m1"

    def check() -> str:
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S).status
        return health_pb2.HealthCheckResponse.ServingStatus.Name(status)

    def similar() -> str:
        answer = stub.SimilarItems(pb.SimilarItemsRequest(item_id=ids[17], k=10), timeout=SIMILAR_DEADLINE_S)
        return f"{answer.model_version}:{len(answer.items)}"

    stop = threading.Event()
    pacers = [Pacer(check, switching, stop), Pacer(similar, switching, stop)]
    for pacer in pacers:
        pacer.thread.start()
    try:
        redis.Redis.from_url(redis_url).xadd(STREAM, {FIELD: encode_activate("m2")})
        deadline = time.monotonic() + 300
        while engine.serving.index.model_version != "m2":  # the switch ends when m2 is installed
            assert time.monotonic() < deadline, f"no switch to m2 in 300 s (building: {lifecycle.switching})"
            stop.wait(0.05)
    finally:
        stop.set()
        for pacer in pacers:
            pacer.thread.join(10)
    checks, similars = pacers[0].during(), pacers[1].during()
    # The switch was observed in progress long enough for many calls of each kind to run wholly inside it.
    assert len(checks) >= 20 and len(similars) >= 20, (len(checks), len(similars))
    print("health:", pacers[0].missed(), "similar:", pacers[1].missed())
    assert checks == [(grpc.StatusCode.OK, "SERVING")] * len(checks), pacers[0].missed()
    assert similars == [(grpc.StatusCode.OK, "m1:10")] * len(similars), pacers[1].missed()
    assert not lifecycle.switching and len(engine.serving.index) == N_ITEMS
    assert stub.SimilarItems(pb.SimilarItemsRequest(item_id=ids[17], k=10), timeout=10).model_version == "m2"
