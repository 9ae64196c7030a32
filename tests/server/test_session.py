"""RecommendForSession against a real server, graph and worker: a session embedded at request time answers as a
stored user with exactly those events (within 1e-5), writes nothing, rejects bad input and works as a batch
entry. The worker trains the served model on a small live graph and rolls it out (the item vectors, their
in_scale and the version's user-side card go to Neo4j); a user and an item added after that reach the server
through the incremental recompute and the delta stream. Real Neo4j, Redis, gRPC (tests/conftest.py)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import redis

from graphdb.ingest import ingest_events
from graphdb.model_state import read_card
from graphdb.schema import wipe
from graphdb.settings import DataSettings
from ml.settings import ModelSettings, TrainSettings
from proto.interest.v1 import interest_pb2 as pb
from tests.server.conftest import base_settings, start_harness
from workers import jobs
from workers.settings import WorkerSettings

USERS, ITEMS, CLUSTERS = 40, 48, 4
STREAM = "ig:test-session"
TYPES = {"view": pb.EVENT_TYPE_VIEW, "click": pb.EVENT_TYPE_CLICK, "add_to_cart": pb.EVENT_TYPE_ADD_TO_CART}
TYPES.update(purchase=pb.EVENT_TYPE_PURCHASE, rate=pb.EVENT_TYPE_RATE)


def _item(j: int) -> str:
    return f"item-{j:02d}"


def _info(j: int) -> dict:
    """Categories and brands only (no text): the model embeds them, so an item new since training has a vector."""
    return {"categories": [["Shop", f"Cluster {j * CLUSTERS // ITEMS}"]], "brand": f"brand-{j % 5}"}


def _shoppers(t0: float) -> list[dict]:
    rng = np.random.default_rng(7)
    out = []
    per = ITEMS // CLUSTERS
    for u in range(USERS):
        c = u % CLUSTERS
        own = rng.choice(np.arange(c * per, (c + 1) * per), size=int(rng.integers(4, 8)), replace=False).tolist()
        for k, j in enumerate(dict.fromkeys([*own, int(rng.integers(ITEMS))])):
            out.append(
                {
                    "event_id": f"e{u}-{k}",
                    "user_id": f"shopper-{u}",
                    "type": "purchase",
                    "item_id": _item(j),
                    "ts": t0 + 60 * k,
                    "item": _info(j),
                }
            )
    return out


def _twin(user: str, t0: float, items: list[str]) -> list[dict]:
    """Mixed behaviour: repeated views, clicks, a cart, purchases and a rating, at different times (the cap of 4 and
    the recency weights both matter: more items than the cap, and ties in time)."""
    kinds = ["view", "click", "view", "add_to_cart", "purchase", "view", "rate", "purchase", "view", "click"]
    out = []
    for n, kind in enumerate(kinds):
        ev = {"event_id": f"{user}-{n}", "user_id": user, "type": kind, "item_id": items[n % len(items)], "ts": t0 + 30 * (n // 2)}
        if kind == "rate":
            ev["rating"] = 4
        out.append(ev)
    return out


def _session(events: list[dict]) -> list[pb.SessionEvent]:
    return [pb.SessionEvent(item_id=e["item_id"], type=TYPES[e["type"]], ts=e["ts"], rating=e.get("rating", 0)) for e in events]


def _scored(response) -> list[tuple[str, float]]:
    return [(i.item_id, i.score) for i in response.items]


def _same_answer(session, user) -> None:
    assert not session.cold_start and not user.cold_start and session.model_version == user.model_version
    assert [i for i, _ in _scored(session)] == [i for i, _ in _scored(user)]
    assert np.allclose([s for _, s in _scored(session)], [s for _, s in _scored(user)], atol=1e-5, rtol=0)


def _twin_matches(stub, session: list[pb.SessionEvent], version: str) -> None:
    """The twin's session answers as the stored twin, with and without the items bought, with and without a filter."""
    for include_seen in (False, True):
        for flt in (pb.ItemFilter(), pb.ItemFilter(category_ids=["Shop > Cluster 1"])):
            got = stub.RecommendForSession(
                pb.RecommendForSessionRequest(events=session, k=10, include_seen=include_seen, filter=flt), timeout=30
            )
            want = stub.RecommendForUser(
                pb.RecommendForUserRequest(user_id="twin", k=10, include_seen=include_seen, filter=flt), timeout=30
            )
            _same_answer(got, want)
            assert got.model_version == version and len(got.items) > 0


def _shoppers_match(stub, t0: float) -> None:
    """Every seventh stored shopper's session answers as that shopper."""
    events = _shoppers(t0)
    for u in range(0, USERS, 7):
        mine = [e for e in events if e["user_id"] == f"shopper-{u}"]
        got = stub.RecommendForSession(pb.RecommendForSessionRequest(events=_session(mine), k=8), timeout=30)
        _same_answer(got, stub.RecommendForUser(pb.RecommendForUserRequest(user_id=f"shopper-{u}", k=8), timeout=30))


def _graph_size(driver) -> tuple[int, int, int]:
    rec = driver.execute_query(
        "MATCH (n) WITH count(n) AS nodes OPTIONAL MATCH ()-[r]->() "
        "RETURN nodes, count(r) AS rels, sum(coalesce(r.count, 0)) AS events"
    ).records[0]
    return rec["nodes"], rec["rels"], rec["events"]


def _seeded(driver, graph_settings, redis_url: str, *keys: str) -> tuple[float, list[dict]]:
    """An empty graph (and these Redis keys gone) filled with the shoppers and the twin: (t0, the events)."""
    wipe(driver)
    redis.Redis.from_url(redis_url).delete(*keys)
    t0 = time.time() - 3600
    twin_items = [_item(j) for j in (0, 1, 2, 13, 14, 25)]
    events = _shoppers(t0) + _twin("twin", t0 + 1000, twin_items)
    assert not ingest_events(driver, graph_settings, events).rejected
    return t0, events


@pytest.fixture(scope="module")
def served(neo4j_driver, neo4j_settings, graph_settings, redis_url, tmp_path_factory):
    """The model trained on the graph and rolled out; a server loaded from Neo4j following the delta stream."""
    t0, events = _seeded(neo4j_driver, graph_settings, redis_url, STREAM)
    tmp = tmp_path_factory.mktemp("session")
    ws = WorkerSettings(model_dir=tmp / "models", text_cache_dir=tmp / "text", redis_url=redis_url, delta_stream=STREAM)
    ms = ModelSettings(dim=graph_settings.embedding_dim, recency_boost=30.0, select_filter=False, user_cap=4)
    rt = jobs.Runtime(neo4j_settings, graph_settings, ms, TrainSettings(threads=1), ws, DataSettings())
    version = jobs.train_from_graph(rt)["version"]
    jobs.rebuild_version(rt, version)
    settings = base_settings(redis_url=redis_url, delta_stream=STREAM, delta_block_ms=20, max_session_events=30, max_batch=4)
    harness, stop = start_harness(settings, graph_settings, neo4j_driver, redis_url=redis_url, start_lifecycle=True)
    harness.version, harness.rt, harness.t0, harness.twin = version, rt, t0, events[-10:]
    yield harness
    stop()
    rt.close()


def test_the_rollout_records_the_versions_user_side(served, neo4j_driver) -> None:
    card = read_card(neo4j_driver, served.version)
    assert card is not None and card.user_cap == 4 and card.recency_boost == 30.0 and len(card.sign) == 16
    assert set(card.sign.tolist()) <= {-1.0, 0.0, 1.0}


def test_a_session_answers_as_the_stored_user_with_the_same_events(served) -> None:
    stub = served.stub()
    session = _session(served.twin)
    _twin_matches(stub, session, served.version)
    bought = {e["item_id"] for e in served.twin if e["type"] == "purchase"}
    unseen = stub.RecommendForSession(pb.RecommendForSessionRequest(events=session, k=10), timeout=30)
    assert not bought & {i.item_id for i in unseen.items}
    # the order events arrive in does not matter, as for a stored user
    shuffled = stub.RecommendForSession(pb.RecommendForSessionRequest(events=session[::-1], k=10), timeout=30)
    assert _scored(shuffled) == _scored(unseen)


def test_every_stored_shopper_is_matched_by_their_session(served) -> None:
    _shoppers_match(served.stub(), served.t0)


def test_a_session_writes_nothing_to_the_graph(served, neo4j_driver) -> None:
    stub = served.stub()
    before = _graph_size(neo4j_driver)
    new_item = [pb.SessionEvent(item_id="never-in-the-graph", type=pb.EVENT_TYPE_PURCHASE, ts=time.time() - 5)]
    resp = stub.RecommendForSession(pb.RecommendForSessionRequest(events=_session(served.twin) + new_item, k=5), timeout=30)
    assert not resp.cold_start and len(resp.items) == 5
    assert _graph_size(neo4j_driver) == before
    dirty = neo4j_driver.execute_query("MATCH (n) WHERE n.id IN ['never-in-the-graph', 'session'] RETURN count(n) AS n").records
    assert dirty[0]["n"] == 0


def test_an_empty_or_unknown_session_gets_popular_items(served) -> None:
    stub = served.stub()
    cold_user = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="nobody-at-all", k=5), timeout=30)
    assert cold_user.cold_start
    empty = stub.RecommendForSession(pb.RecommendForSessionRequest(k=5), timeout=30)
    unknown = stub.RecommendForSession(
        pb.RecommendForSessionRequest(events=[pb.SessionEvent(item_id="no-such-item", type=pb.EVENT_TYPE_VIEW, ts=time.time())], k=5),
        timeout=30,
    )
    for resp in (empty, unknown):
        assert resp.cold_start and resp.model_version == served.version
        assert _scored(resp) == _scored(cold_user)


def test_a_user_and_an_item_added_after_the_rollout_match_too(served, neo4j_driver, graph_settings) -> None:
    """The new item's vector and in_scale reach the server on the delta stream (the worker's incremental
    recompute); the new user's vector is computed by the same recompute."""
    stub = served.stub()
    now = time.time() - 60
    late = [
        {"event_id": "late-0", "user_id": "late", "type": "view", "item_id": "brand-new", "ts": now, "item": _info(3)},
        {"event_id": "late-1", "user_id": "late", "type": "purchase", "item_id": "brand-new", "ts": now + 1},
        *[
            {"event_id": f"late-{n}", "user_id": "late", "type": "click", "item_id": _item(j), "ts": now + 2 + n}
            for n, j in enumerate((3, 4, 17, 30), start=2)
        ],
    ]
    assert not ingest_events(neo4j_driver, graph_settings, late).rejected
    result = jobs.recompute(served.rt)
    assert result["users"] >= 1 and result["items"] >= 1
    deadline = time.monotonic() + 30
    while True:  # the delta stream brings the new item to the server
        try:
            stub.GetEmbedding(pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_ITEM, id="brand-new"), timeout=10)
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline
            time.sleep(0.05)
    session = [pb.SessionEvent(item_id=e["item_id"], type=TYPES[e["type"]], ts=e["ts"]) for e in late]
    for include_seen in (False, True):
        got = stub.RecommendForSession(pb.RecommendForSessionRequest(events=session, k=10, include_seen=include_seen), timeout=30)
        _same_answer(
            got, stub.RecommendForUser(pb.RecommendForUserRequest(user_id="late", k=10, include_seen=include_seen), timeout=30)
        )


@pytest.mark.parametrize(
    "request_, reason",
    [
        (pb.RecommendForSessionRequest(k=0), "k must be between 1 and 100"),
        (
            pb.RecommendForSessionRequest(k=3, events=[pb.SessionEvent(item_id="item-01", type=pb.EVENT_TYPE_VIEW, ts=1.7e9)] * 31),
            "at most 30 events",
        ),
        (
            pb.RecommendForSessionRequest(k=3, events=[pb.SessionEvent(item_id="item-01", type=pb.EVENT_TYPE_SEARCH, ts=1.7e9)]),
            "events[0].type",
        ),
        (pb.RecommendForSessionRequest(k=3, events=[pb.SessionEvent(item_id="item-01", ts=1.7e9)]), "events[0].type"),
        (
            pb.RecommendForSessionRequest(k=3, events=[pb.SessionEvent(item_id=" ", type=pb.EVENT_TYPE_VIEW, ts=1.7e9)]),
            "events[0].item_id",
        ),
        (pb.RecommendForSessionRequest(k=3, events=[pb.SessionEvent(item_id="item-01", type=pb.EVENT_TYPE_VIEW)]), "events[0].ts"),
        (
            pb.RecommendForSessionRequest(k=3, events=[pb.SessionEvent(item_id="item-01", type=pb.EVENT_TYPE_VIEW, ts=-5)]),
            "events[0]: ts -5.0 is not a valid unix time",
        ),
        (
            pb.RecommendForSessionRequest(k=3, events=[pb.SessionEvent(item_id="item-01", type=pb.EVENT_TYPE_VIEW, ts=4e9)]),
            "in the future",
        ),
        (
            pb.RecommendForSessionRequest(k=3, events=[pb.SessionEvent(item_id="item-01", type=pb.EVENT_TYPE_RATE, ts=1.7e9)]),
            "needs a rating",
        ),
        (pb.RecommendForSessionRequest(k=3, filter=pb.ItemFilter(exclude_item_ids=[""])), "filter.exclude_item_ids[0]"),
    ],
)
def test_bad_sessions_are_rejected_with_what_was_wrong(served, request_, reason) -> None:
    with pytest.raises(grpc.RpcError) as err:
        served.stub().RecommendForSession(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in err.value.details()


def test_a_session_entry_in_a_batch_is_answered_as_its_own_call(served) -> None:
    stub = served.stub()
    request = pb.RecommendForSessionRequest(events=_session(served.twin), k=6)
    bad = pb.RecommendForSessionRequest(events=[pb.SessionEvent(item_id="item-01", type=pb.EVENT_TYPE_SEARCH, ts=1.7e9)], k=6)
    user = pb.RecommendForUserRequest(user_id="twin", k=6)
    out = stub.BatchRecommend(
        pb.BatchRecommendRequest(entries=[pb.BatchEntry(session=request), pb.BatchEntry(session=bad), pb.BatchEntry(user=user)]),
        timeout=30,
    )
    assert [r.WhichOneof("response") for r in out.results] == ["session", None, "user"]
    assert _scored(out.results[0].session) == _scored(stub.RecommendForSession(request, timeout=30))
    assert out.results[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "entries[1]: events[0].type" in out.results[1].message
    _same_answer(out.results[0].session, out.results[2].user)
