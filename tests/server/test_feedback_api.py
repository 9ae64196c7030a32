"""Negative feedback end to end through the generated stubs: a real server over a real graph (tests/conftest.py).

Items come in 6 clusters (item j in cluster j % 6, tests/server/conftest.item_vectors), so an item's close
neighbours are known: its cluster mates. Each test ingests through IngestEvents and asks again at once (the
next call after the acknowledgement), without waiting for anything.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from graphdb.embeddings import write_embeddings
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from proto.interest.v1 import interest_pb2 as pb
from tests.server.conftest import base_settings, load_items, seed_graph_items, start_harness

N_ITEMS = 60
STREAM = "ig:test-feedback"


@pytest.fixture(scope="module")
def served(neo4j_driver, graph_settings, redis_url):
    """60 viewed items with vectors of m1 in the graph and the index; item-5 is the most popular (4 purchases).
    Shoppers with stored vectors: alice (= item-0's vector, bought item-0), bob (between items 0 and 1),
    carol (= item-2's vector); newbie has none (cold start)."""
    ids, vecs = seed_graph_items(neo4j_driver, graph_settings, redis_url, STREAM, N_ITEMS)
    seed = [("alice", "purchase", "item-0"), ("bob", "view", "item-40"), ("carol", "view", "item-40")]
    seed += [(f"fan-{u}", "purchase", "item-5") for u in range(4)]
    events = [
        {"event_id": f"seed-u{n}", "user_id": u, "type": t, "item_id": i, "ts": time.time() - 60} for n, (u, t, i) in enumerate(seed)
    ]
    assert ingest_events(neo4j_driver, graph_settings, events).accepted == len(seed)
    key = graph_settings.pseudonym_key.get_secret_value()
    users = {"alice": vecs[0], "bob": vecs[0] + 0.9 * vecs[1], "carol": vecs[2]}
    assert write_embeddings(neo4j_driver, "User", [(pseudonymise(key, u), v.tolist()) for u, v in users.items()], "m1") == 3
    harness, stop = start_harness(
        base_settings(popular_ttl_s=0, max_stream_events=100), graph_settings, neo4j_driver, setup=lambda e: load_items(e, ids, vecs)
    )
    harness.vecs, harness.users = vecs, users
    yield harness
    stop()


_counter = iter(range(10**6))


def ingest(stub, events: list[tuple[str, int, str]], ts: float | None = None) -> pb.IngestEventsResponse:
    ts = time.time() - 1 if ts is None else ts
    msg = pb.IngestEventsRequest(
        events=[pb.Event(event_id=f"fb-{next(_counter)}", user_id=u, type=t, item_id=i, ts=ts) for u, t, i in events]
    )
    resp = stub.IngestEvents(iter([msg]), timeout=30)
    assert resp.accepted == len(events), resp.rejected
    return resp


def recommend(stub, user: str, k: int, include_seen: bool = False) -> pb.RecommendForUserResponse:
    return stub.RecommendForUser(pb.RecommendForUserRequest(user_id=user, k=k, include_seen=include_seen), timeout=10)


def ids(resp) -> list[str]:
    return [i.item_id for i in resp.items]


def test_negative_events_without_an_item_are_rejected(served) -> None:
    stub = served.stub()
    bad = [
        pb.Event(event_id="bad-ni", user_id="alice", type=pb.EVENT_TYPE_NOT_INTERESTED, ts=time.time()),
        pb.Event(event_id="bad-ret", user_id="alice", type=pb.EVENT_TYPE_RETURN, query="mug", ts=time.time()),
    ]
    resp = stub.IngestEvents(iter([pb.IngestEventsRequest(events=bad)]), timeout=30)
    assert resp.accepted == 0 and [r.index for r in resp.rejected] == [0, 1]
    assert "not_interested event needs an item_id" in resp.rejected[0].reason
    assert "return event needs an item_id" in resp.rejected[1].reason


def test_a_hidden_item_never_comes_back(served) -> None:
    stub = served.stub()
    assert ids(recommend(stub, "carol", 5, include_seen=True))[0] == "item-2"
    ingest(stub, [("carol", pb.EVENT_TYPE_NOT_INTERESTED, "item-2")])
    for include_seen in (False, True):
        assert "item-2" not in ids(recommend(stub, "carol", N_ITEMS - 1, include_seen))
    batch = stub.BatchRecommend(
        pb.BatchRecommendRequest(
            entries=[pb.BatchEntry(user=pb.RecommendForUserRequest(user_id="carol", k=N_ITEMS - 1, include_seen=True))]
        ),
        timeout=10,
    )
    assert batch.results[0].code == 0 and "item-2" not in ids(batch.results[0].user)
    # still a recommendation for others
    assert ids(recommend(stub, "alice", 5))[0] != "item-0" and "item-2" in ids(recommend(stub, "alice", N_ITEMS - 1))


def test_a_hidden_item_leaves_cold_start_answers(served) -> None:
    stub = served.stub()
    before = recommend(stub, "newbie", 3)
    assert before.cold_start and ids(before)[0] == "item-5"
    ingest(stub, [("newbie", pb.EVENT_TYPE_NOT_INTERESTED, "item-5")])
    after = recommend(stub, "newbie", 3, include_seen=True)
    assert after.cold_start and "item-5" not in ids(after) and len(after.items) == 3


def _rule(vecs: np.ndarray, user: np.ndarray, hidden: list[int], excluded: set[int], k: int, strength: float, threshold: float):
    """The documented rule (docs/api.md), written out independently of server.feedback."""
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    user = user / np.linalg.norm(user)  # the server serves user vectors at unit length
    out = []
    for j in range(len(vecs)):
        if j in excluded:
            continue
        s = float(vecs[j] @ user)
        m = max(float(unit[j] @ unit[h]) for h in hidden)
        p = min(max((m - threshold) / (1 - threshold), 0.0), 1.0)
        out.append((-(s - strength * p * abs(s)), f"item-{j}"))
    return [(name, -neg) for neg, name in sorted(out)[:k]]


def test_close_neighbours_of_a_hidden_item_move_down_by_the_rule(served) -> None:
    stub = served.stub()
    vecs, settings = served.vecs, served.engine.settings
    before = recommend(stub, "bob", 10)
    first = ids(before)[0]
    cluster = int(first.split("-")[1]) % 6
    mates_before = [i for i in ids(before)[1:] if int(i.split("-")[1]) % 6 == cluster]
    assert len(mates_before) >= 3  # bob sits between two clusters: the hidden item's mates share his top 10

    ingest(stub, [("bob", pb.EVENT_TYPE_NOT_INTERESTED, first)])
    after = recommend(stub, "bob", 10)
    hidden = int(first.split("-")[1])
    expected = _rule(vecs, served.users["bob"], [hidden], {hidden}, 10, settings.feedback_strength, settings.feedback_threshold)
    assert ids(after) == [name for name, _ in expected]
    assert [i.score for i in after.items] == pytest.approx([s for _, s in expected], abs=1e-4)
    # the neighbours moved down: fewer of them in the top 10
    mates_after = [i for i in ids(after) if int(i.split("-")[1]) % 6 == cluster]
    assert len(mates_after) < len(mates_before)
    # exclusion alone (strength 0) would have kept every one of them, each a place higher
    plain = [name for name, _ in _rule(vecs, served.users["bob"], [hidden], {hidden}, 10, 0.0, settings.feedback_threshold)]
    assert plain[:9] == ids(before)[1:]


def test_a_returned_purchase_is_no_longer_excluded(served) -> None:
    stub = served.stub()
    assert "item-0" not in ids(recommend(stub, "alice", 5))
    ingest(stub, [("alice", pb.EVENT_TYPE_RETURN, "item-0")])
    assert ids(recommend(stub, "alice", 5))[0] == "item-0"
    ingest(stub, [("alice", pb.EVENT_TYPE_PURCHASE, "item-0")], time.time())  # bought again, after the return
    assert "item-0" not in ids(recommend(stub, "alice", 5))
