"""The short-term interest through the real stack (Neo4j, Redis, the worker's training and rollout, the gRPC
server): a shopper's burst in another part of the shop, sent through IngestEvents, moves their RecommendForUser
top k at once while their standing items stay, and a session with the same events answers the same. A shopper
without a recent burst is answered as before. Real services (tests/conftest.py), no worker recompute needed: the
short-term interest is read from the graph at query time."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from graphdb.ingest import ingest_events
from graphdb.schema import wipe
from graphdb.settings import DataSettings
from ml.settings import ModelSettings, TrainSettings
from proto.interest.v1 import interest_pb2 as pb
from server.short_term import reserved_slots
from tests.server.conftest import base_settings, start_harness
from workers import jobs
from workers.settings import WorkerSettings

USERS, ITEMS, CLUSTERS = 48, 48, 4
PER = ITEMS // CLUSTERS
K = 8
STREAM = "ig:test-short-term"
DAY = 86400.0
SESSION_TWIN = "shopper-5"  # its burst is in the graph before training: its stored vector has every event
TYPES = {"click": pb.EVENT_TYPE_CLICK, "purchase": pb.EVENT_TYPE_PURCHASE}
NAMES = {v: k for k, v in TYPES.items()}


def _item(j: int) -> str:
    return f"item-{j:02d}"


def _cluster(item_id: str) -> int:
    return int(item_id.split("-")[1]) // PER


def _history(t0: float) -> list[dict]:
    """Each shopper buys 5 to 7 items of their cluster, one a day (no short-term interest: one item a window)."""
    rng = np.random.default_rng(16)
    out = []
    for u in range(USERS):
        c = u % CLUSTERS
        own = rng.choice(np.arange(c * PER, (c + 1) * PER), size=int(rng.integers(5, 8)), replace=False).tolist()
        for n, j in enumerate(own):
            ev = {"event_id": f"h{u}-{n}", "user_id": f"shopper-{u}", "type": "purchase", "item_id": _item(j), "ts": t0 + n * DAY}
            out.append({**ev, "item": {"categories": [["Shop", f"Cluster {c}"]], "brand": f"brand-{c}"}})
    return out


def _burst(user: str, cluster: int, now: float) -> list[pb.Event]:
    """Clicks on 4 items of another cluster and a purchase of one, within a minute."""
    items = [_item(cluster * PER + j) for j in range(4)]
    out = [
        pb.Event(event_id=f"{user}-burst-{n}", user_id=user, type=pb.EVENT_TYPE_CLICK, item_id=i, ts=now - 50 + 10 * n)
        for n, i in enumerate(items)
    ]
    return out + [pb.Event(event_id=f"{user}-burst-buy", user_id=user, type=pb.EVENT_TYPE_PURCHASE, item_id=items[0], ts=now)]


def _top(stub, user: str) -> list[str]:
    reply = stub.RecommendForUser(pb.RecommendForUserRequest(user_id=user, k=K), timeout=30)
    assert not reply.cold_start
    return [i.item_id for i in reply.items]


@pytest.fixture(scope="module")
def served(neo4j_driver, neo4j_settings, graph_settings, redis_url, tmp_path_factory):
    wipe(neo4j_driver)
    redis.Redis.from_url(redis_url).delete(STREAM)
    t0 = time.time() - 30 * DAY
    burst = [
        {"event_id": e.event_id, "user_id": e.user_id, "type": NAMES[e.type], "item_id": e.item_id, "ts": e.ts}
        for e in _burst(SESSION_TWIN, 3, time.time() - 120)
    ]
    events = _history(t0) + burst
    assert not ingest_events(neo4j_driver, graph_settings, events).rejected
    tmp = tmp_path_factory.mktemp("short-term")
    ws = WorkerSettings(model_dir=tmp / "models", text_cache_dir=tmp / "text", redis_url=redis_url, delta_stream=STREAM)
    rt = jobs.Runtime(
        neo4j_settings, graph_settings, ModelSettings(dim=graph_settings.embedding_dim), TrainSettings(threads=1), ws, DataSettings()
    )
    version = jobs.train_from_graph(rt)["version"]
    jobs.rebuild_version(rt, version)
    settings = base_settings(redis_url=redis_url, delta_stream=STREAM, delta_block_ms=20)
    harness, stop = start_harness(settings, graph_settings, neo4j_driver, redis_url=redis_url, start_lifecycle=True)
    harness.settings_, harness.events = settings, events
    yield harness
    stop()
    rt.close()


def test_a_burst_moves_the_answer_at_once_and_standing_items_stay(served) -> None:
    stub = served.stub()
    user, home, new = "shopper-0", 0, 2
    before = _top(stub, user)
    reserved = reserved_slots(K, served.settings_.short_term_share)
    assert reserved >= 2 and sum(_cluster(i) == home for i in before) >= K // 2
    assert sum(_cluster(i) == new for i in before) < reserved
    reply = stub.IngestEvents(iter([pb.IngestEventsRequest(events=_burst(user, new, time.time()))]), timeout=30)
    assert reply.accepted == 5
    after = _top(stub, user)  # at once: the graph holds the burst when the events are acknowledged
    assert sum(_cluster(i) == new for i in after) >= reserved
    # the standing interest keeps the other slots: the long-term answer's best items, in their order
    assert [i for i in after if i in before] == before[: K - reserved]
    assert "item-24" not in after  # bought in the burst: left out as purchases are


def test_a_session_with_the_same_events_answers_as_the_stored_shopper(served) -> None:
    """shopper-5's burst was in the graph when the model was rolled out, so their stored vector has every event."""
    stub = served.stub()
    events = [e for e in served.events if e["user_id"] == SESSION_TWIN]
    session = [pb.SessionEvent(item_id=e["item_id"], type=TYPES[e["type"]], ts=e["ts"]) for e in events]
    for include_seen in (False, True):
        got = stub.RecommendForSession(pb.RecommendForSessionRequest(events=session, k=K, include_seen=include_seen), timeout=30)
        want = stub.RecommendForUser(pb.RecommendForUserRequest(user_id=SESSION_TWIN, k=K, include_seen=include_seen), timeout=30)
        assert not got.cold_start and [i.item_id for i in got.items] == [i.item_id for i in want.items]
        assert np.allclose([i.score for i in got.items], [i.score for i in want.items], atol=1e-5, rtol=0)
        # the short-term interest is in both: the burst's cluster holds its reserved slots
        assert sum(_cluster(i.item_id) == 3 for i in got.items) >= reserved_slots(K, served.settings_.short_term_share)


def test_a_shopper_without_a_burst_is_answered_from_the_long_term_vector_alone(served) -> None:
    """One recent click is no short-term interest (fewer than IG_SERVER_SHORT_TERM_MIN_ITEMS items)."""
    stub = served.stub()
    user = "shopper-2"
    before = _top(stub, user)
    odd = pb.Event(event_id=f"{user}-odd", user_id=user, type=pb.EVENT_TYPE_CLICK, item_id=_item(PER * 3 + 5), ts=time.time())
    assert stub.IngestEvents(iter([pb.IngestEventsRequest(events=[odd])]), timeout=30).accepted == 1
    assert _top(stub, user) == before
