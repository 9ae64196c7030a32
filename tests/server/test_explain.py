"""Explanations (explain: true) through the generated stubs against a real server and graph: the reasons the
seeded graph implies, none without explain, and every reason given checked by its docs/analysts.md query."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import grpc
import neo4j
import numpy as np
import pytest
import redis

from graphdb.driver import connect
from graphdb.embeddings import write_embeddings
from graphdb.model_state import UserSideCard, write_card
from graphdb.pseudonym import pseudonymise
from graphdb.schema import wipe
from proto.interest.v1 import interest_pb2 as pb
from server.app import use_native_front
from server.engine import Answer, ItemFilter
from tests.graphdb.test_analyst_queries import doc_queries
from tests.relay import Relay
from tests.server.conftest import base_settings, item_vectors, start_harness

N_ITEMS = 36  # item_vectors: item j in cluster j % 6, so alice (item-0's vector) is nearest 6, 12, 18, 24, 30
STREAM = "ig:test-explain"
AUDIO = "Electronics > Audio"
TITLES = {12: "Wireless Speaker", 18: "Desk Lamp"}


def _category(j: int) -> list[str]:
    if j == 30:
        return ["Electronics", "Video"]
    return ["Electronics", "Audio"] if j % 2 == 0 else ["Fashion"]


def _events(now: float) -> list[pb.Event]:
    n = iter(range(10_000))

    def ev(user: str, type_: int, ts: float, item_id: str = "", **kw) -> pb.Event:
        return pb.Event(event_id=f"ex-{next(n)}", user_id=user, type=type_, item_id=item_id, ts=ts, **kw)

    out = [
        ev(
            "shop-bot",
            pb.EVENT_TYPE_VIEW,
            now - 500,
            f"item-{j}",
            item=pb.ItemInfo(title=TITLES.get(j, f"Gadget {j}"), categories=[pb.CategoryPath(names=_category(j))]),
        )
        for j in range(N_ITEMS)
    ]
    buy = pb.EVENT_TYPE_PURCHASE
    out += [
        ev("alice", buy, now - 50, "item-0"),
        ev("alice", buy, now - 40, "item-2"),
        ev("alice", pb.EVENT_TYPE_VIEW, now - 30, "item-4"),
        ev("alice", pb.EVENT_TYPE_SEARCH, now - 20, query="Wireless  Headphones"),
    ]
    for user in ("bob", "carol", "dan"):  # item-6 with alice's item-0: 3 shoppers
        out += [ev(user, buy, now - 100, "item-0"), ev(user, buy, now - 90, "item-6")]
    for user in ("ivy", "jack"):  # item-12 with alice's item-2: 2 shoppers
        out += [ev(user, buy, now - 100, "item-2"), ev(user, buy, now - 90, "item-12")]
    for user in ("frank", "gina"):  # item-24 with item-4, which alice only viewed: 2 shoppers
        out += [ev(user, buy, now - 100, "item-4"), ev(user, buy, now - 90, "item-24")]
    out += [ev("erin", buy, now - 100, "item-4"), ev("erin", buy, now - 90, "item-18")]  # one shopper: no reason
    return out


@pytest.fixture(scope="module")
def live(neo4j_driver, graph_settings, redis_url):
    wipe(neo4j_driver)
    redis.Redis.from_url(redis_url).delete(STREAM)
    settings = base_settings(redis_url=redis_url, delta_stream=STREAM, max_stream_events=1000, delta_block_ms=20)
    seeder, stop = start_harness(settings, graph_settings, neo4j_driver)
    events = _events(time.time())
    ack = seeder.stub().IngestEvents(iter([pb.IngestEventsRequest(events=events)]), timeout=60)
    assert (ack.accepted, list(ack.rejected)) == (len(events), [])
    stop()
    ids, vecs = item_vectors(N_ITEMS)
    # in_scales and a user-side card make sessions answerable: items 2 and 4 weigh next to nothing, so a session of
    # alice's item events embeds as her stored vector (item-0's) and gets her answer
    scales = {i: 1e-9 if i in ("item-2", "item-4") else 1.0 for i in ids}
    write_embeddings(neo4j_driver, "Item", zip(ids, vecs.tolist()), "m1", in_scales=scales)
    write_card(neo4j_driver, UserSideCard("m1", np.ones(vecs.shape[1]), 500, graph_settings.half_life_days, 0.0, 1.0))
    alice = pseudonymise(graph_settings.pseudonym_key.get_secret_value(), "alice")
    write_embeddings(neo4j_driver, "User", [(alice, vecs[0].tolist())], "m1")
    harness, stop = start_harness(settings, graph_settings, neo4j_driver, redis_url=redis_url, start_lifecycle=True)
    harness.alice = alice
    yield harness
    stop()


def _reasons(item: pb.ScoredItem) -> list[tuple]:
    return [(r.kind, r.item_id, r.count, r.category_id, r.query) for r in item.reasons]


BT, CAT, SEARCH, SAME = pb.REASON_KIND_BOUGHT_TOGETHER, pb.REASON_KIND_CATEGORY, pb.REASON_KIND_SEARCH, pb.REASON_KIND_SAME_CATEGORY


def test_recommendations_carry_the_reasons_the_graph_implies(live) -> None:
    stub = live.stub()
    resp = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=5, explain=True), timeout=10)
    got = {i.item_id: _reasons(i) for i in resp.items}
    assert not resp.cold_start and sorted(got) == ["item-12", "item-18", "item-24", "item-30", "item-6"]
    assert got == {
        "item-6": [(BT, "item-0", 3, "", ""), (CAT, "", 2, AUDIO, "")],
        "item-12": [(BT, "item-2", 2, "", ""), (CAT, "", 2, AUDIO, ""), (SEARCH, "", 0, "", "wireless headphones")],
        "item-18": [(CAT, "", 2, AUDIO, "")],  # bought with item-4 by one shopper only: below the minimum
        "item-24": [(BT, "item-4", 2, "", ""), (CAT, "", 2, AUDIO, "")],
        "item-30": [(CAT, "", 2, "Electronics", "")],  # Electronics > Video: only the parent is shared
    }
    texts = {i.item_id: [r.text for r in i.reasons] for i in resp.items}
    assert texts["item-12"] == [
        "bought together with Gadget 2 by 2 shoppers",
        f"in category {AUDIO} you often buy (2 of your purchases)",
        'similar to your recent search "wireless headphones"',
    ]
    # the same items and scores as without explain, which adds no reasons
    plain = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=5), timeout=10)
    assert [(i.item_id, i.score) for i in plain.items] == [(i.item_id, i.score) for i in resp.items]
    assert all(not i.reasons for i in plain.items)


def test_similar_items_reasons_are_relative_to_the_asked_item(live) -> None:
    stub = live.stub()
    resp = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-0", k=5, explain=True), timeout=10)
    got = {i.item_id: _reasons(i) for i in resp.items}
    assert got == {
        "item-6": [(BT, "item-0", 3, "", ""), (SAME, "item-0", 0, AUDIO, "")],
        "item-12": [(SAME, "item-0", 0, AUDIO, "")],
        "item-18": [(SAME, "item-0", 0, AUDIO, "")],
        "item-24": [(SAME, "item-0", 0, AUDIO, "")],
        "item-30": [(SAME, "item-0", 0, "Electronics", "")],
    }
    assert [r.text for r in resp.items[[i.item_id for i in resp.items].index("item-6")].reasons] == [
        "bought together with Gadget 0 by 3 shoppers",
        f"in {AUDIO}, like Gadget 0",
    ]
    plain = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-0", k=5), timeout=10)
    assert [i.item_id for i in plain.items] == [i.item_id for i in resp.items] and all(not i.reasons for i in plain.items)


def test_batch_entries_and_unknown_shoppers(live) -> None:
    stub = live.stub()
    batch = stub.BatchRecommend(
        pb.BatchRecommendRequest(
            entries=[
                pb.BatchEntry(user=pb.RecommendForUserRequest(user_id="alice", k=5, explain=True)),
                pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id="item-0", k=5, explain=True)),
                pb.BatchEntry(user=pb.RecommendForUserRequest(user_id="alice", k=5)),
            ]
        ),
        timeout=10,
    )
    assert [r.code for r in batch.results] == [0, 0, 0]
    assert sum(len(i.reasons) for i in batch.results[0].user.items) == 9
    assert sum(len(i.reasons) for i in batch.results[1].similar.items) == 6
    assert all(not i.reasons for i in batch.results[2].user.items)
    # a shopper the graph does not know: popular items, nothing of theirs to explain them by
    cold = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="nobody", k=5, explain=True), timeout=10)
    assert cold.cold_start and len(cold.items) == 5 and all(not i.reasons for i in cold.items)
    with pytest.raises(grpc.RpcError) as err:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-0", k=0, explain=True), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_session_explained_by_its_items_gets_the_stored_shoppers_reasons(live) -> None:
    """What RecommendForSession will call: alice's items and search given instead of read from her edges."""
    answer = live.engine.recommend_for_user("alice", 5, ItemFilter(), include_seen=False, explained=True)
    session = live.engine.explain_session(
        Answer(answer.items, answer.model_version),
        own=["item-4", "item-2", "item-0"],
        bought=["item-2", "item-0"],
        queries=["wireless headphones"],
    )
    assert session.reasons == answer.reasons and len(answer.reasons) == 5


def test_a_session_is_explained_through_the_stubs_by_its_own_items(live) -> None:
    """RecommendForSession with explain: alice's item events as a session get her answer and her reasons, but for
    her search (a session carries none)."""
    stub = live.stub()
    now = time.time()
    events = [
        pb.SessionEvent(item_id="item-0", type=pb.EVENT_TYPE_PURCHASE, ts=now - 50),
        pb.SessionEvent(item_id="item-2", type=pb.EVENT_TYPE_PURCHASE, ts=now - 40),
        pb.SessionEvent(item_id="item-4", type=pb.EVENT_TYPE_VIEW, ts=now - 30),
    ]
    got = stub.RecommendForSession(pb.RecommendForSessionRequest(events=events, k=5, explain=True), timeout=10)
    want = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=5, explain=True), timeout=10)
    assert not got.cold_start and [i.item_id for i in got.items] == [i.item_id for i in want.items]
    assert {i.item_id: _reasons(i) for i in got.items} == {i.item_id: [r for r in _reasons(i) if r[0] != SEARCH] for i in want.items}
    assert sum(len(i.reasons) for i in got.items) == 8  # alice's 9 but her search reason
    plain = stub.RecommendForSession(pb.RecommendForSessionRequest(events=events, k=5), timeout=10)
    assert [i.item_id for i in plain.items] == [i.item_id for i in got.items] and all(not i.reasons for i in plain.items)


def _holds(driver: neo4j.Driver, heading: str, params: dict) -> dict:
    rows = driver.execute_query(doc_queries()[heading], params, routing_=neo4j.RoutingControl.READ).records
    assert len(rows) == 1, heading
    return rows[0].data()


def test_every_reason_given_holds_in_the_graph(live, neo4j_driver) -> None:
    """Each reason of every answer (several shoppers, items and k), checked by its documented query."""
    stub = live.stub()
    checked: list[int] = []
    for k in (5, 20, 30):
        for user in ("alice", "bob", "ivy", "erin"):
            for include_seen in (False, True):
                resp = stub.RecommendForUser(
                    pb.RecommendForUserRequest(user_id=user, k=k, include_seen=include_seen, explain=True), timeout=10
                )
                p = pseudonymise(live.engine._key, user)
                for item in resp.items:
                    for r in item.reasons:
                        base = {"user": p, "item": item.item_id}
                        if r.kind == BT:
                            row = _holds(neo4j_driver, "Explanation: bought together with one of your items", {**base, "x": r.item_id})
                            assert row["shoppers"] == r.count >= 2, (user, item.item_id, r)
                        elif r.kind == CAT:
                            row = _holds(neo4j_driver, "Explanation: a category you often buy", {**base, "category": r.category_id})
                            assert row["bought"] == r.count >= 2, (user, item.item_id, r)
                        else:
                            assert r.kind == SEARCH
                            row = _holds(neo4j_driver, "Explanation: your recent search", {**base, "query": r.query})
                            assert row["matches"] == 1, (user, item.item_id, r)
                        checked.append(r.kind)
        for asked in ("item-0", "item-2", "item-4", "item-7"):
            resp = stub.SimilarItems(pb.SimilarItemsRequest(item_id=asked, k=k, explain=True), timeout=10)
            for item in resp.items:
                for r in item.reasons:
                    base = {"asked": r.item_id, "item": item.item_id}
                    assert r.item_id == asked
                    if r.kind == BT:
                        row = _holds(neo4j_driver, "Explanation: bought together with the asked item", base)
                        assert row["shoppers"] == r.count >= 2
                    else:
                        assert r.kind == SAME
                        row = _holds(
                            neo4j_driver, "Explanation: in the same category as the asked item", {**base, "category": r.category_id}
                        )
                        assert row["shared"] == 1
                    checked.append(r.kind)
    assert len(checked) > 100 and set(checked) == {BT, CAT, SEARCH, SAME}  # many reasons, of every kind


def test_an_explained_similar_items_call_waiting_on_the_graph_leaves_the_port_answering(
    live, neo4j_settings, graph_settings, redis_url
) -> None:
    """SimilarItems with explain reads the graph; without, only the index. A server whose graph stops answering
    (its Bolt bytes held back by a relay) keeps answering plain calls while more explained calls than the native
    front end has I/O threads wait, and the explained ones get their reasons once the graph answers again."""
    settings = base_settings(redis_url=redis_url, delta_stream=STREAM, delta_block_ms=20)
    if not use_native_front(settings):  # what it routes by is the request's explain field, read in Rust
        pytest.skip("grpc's Python server runs SimilarItems on its query threads, explained or not")
    bolt = urlsplit(neo4j_settings.uri)
    relay = Relay(bolt.hostname or "127.0.0.1", bolt.port or 7687)
    driver = connect(neo4j_settings.model_copy(update={"uri": f"bolt://127.0.0.1:{relay.port}"}))
    harness, stop = start_harness(settings, graph_settings, driver, redis_url=redis_url, start_lifecycle=True)
    try:
        stub = harness.stub()
        asked = [f"item-{j}" for j in range(settings.io_threads + 2)]
        want = {i: stub.SimilarItems(pb.SimilarItemsRequest(item_id=i, k=5, explain=True), timeout=10) for i in asked}
        plain = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=5), timeout=10)
        relay.hold()
        try:
            waiting = [stub.SimilarItems.future(pb.SimilarItemsRequest(item_id=i, k=5, explain=True), timeout=60) for i in asked]
            # as many explained calls as there are I/O threads are inside their graph read
            assert relay.wait_held(settings.io_threads, timeout_s=30)
            again = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=5), timeout=10)
            assert again == plain
            assert not any(f.done() for f in waiting)
        finally:
            relay.release()
        assert [f.result() for f in waiting] == [want[i] for i in asked]
        assert any(i.reasons for i in want["item-0"].items)
    finally:
        stop()
        driver.close()
        relay.close()
