"""RPCs backed by the real graph: ingestion, recommendations (cold start, seen items), embeddings, forgetting,
loading from Neo4j, the delta stream, model switches and snapshots. Real Neo4j and Redis (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from graphdb.embeddings import write_embeddings
from graphdb.model_state import UserSideCard, write_card
from graphdb.pseudonym import pseudonymise
from graphdb.schema import wipe
from proto.interest.v1 import interest_pb2 as pb
from server.delta import FIELD, encode_activate, encode_upsert
from server.lifecycle import stream_position
from tests.server.conftest import DIM, base_settings, item_vectors, start_harness

N_ITEMS = 60
STREAM = "ig:test-embeddings"


def _event(n: int, user: str, type_: int, item_id: str, ts: float, **kw) -> pb.Event:
    return pb.Event(event_id=f"ev-{n}", user_id=user, type=type_, item_id=item_id, ts=ts, **kw)


def _seed(stub, now: float) -> pb.IngestEventsResponse:
    """Items with categories/brands, via IngestEvents; alice bought item-0 and item-1; item-5 is popular."""
    events = []
    for j in range(N_ITEMS):
        cat = ["Electronics", "Audio"] if j % 2 == 0 else ["Fashion"]
        info = pb.ItemInfo(title=f"t{j}", brand=f"brand-{j % 3}", categories=[pb.CategoryPath(names=cat)])
        events.append(_event(j, "shop-bot", pb.EVENT_TYPE_VIEW, f"item-{j}", now - 100, item=info))
    events += [
        _event(100, "alice", pb.EVENT_TYPE_PURCHASE, "item-0", now - 50),
        _event(101, "alice", pb.EVENT_TYPE_PURCHASE, "item-1", now - 40),
    ]
    events += [_event(200 + u, f"fan-{u}", pb.EVENT_TYPE_PURCHASE, "item-5", now - 30) for u in range(4)]
    events += [_event(300 + u, f"fan-{u}", pb.EVENT_TYPE_ADD_TO_CART, "item-8", now - 20) for u in range(3)]
    bad = [
        pb.Event(event_id="bad-1", user_id="x", type=pb.EVENT_TYPE_VIEW, ts=now),  # no item
        pb.Event(event_id="bad-2", user_id="x", item_id="item-1", ts=now),
    ]  # no type
    dup = [_event(100, "alice", pb.EVENT_TYPE_PURCHASE, "item-0", now - 50)]
    msgs = [pb.IngestEventsRequest(events=events[:30]), pb.IngestEventsRequest(events=events[30:] + bad + dup)]
    return stub.IngestEvents(iter(msgs), timeout=60)


def _write_vectors(graph, graph_settings, version: str = "m1", seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Item vectors with their in_scale and the version's user-side card (sessions), and alice's vector."""
    ids, vecs = item_vectors(N_ITEMS, seed)
    write_embeddings(graph, "Item", zip(ids, vecs.tolist()), version, in_scales=dict.fromkeys(ids, 1.0))
    write_card(graph, UserSideCard(version, np.ones(DIM, np.float32), 500, graph_settings.half_life_days, 0.0, 2.0))
    key = graph_settings.pseudonym_key.get_secret_value()
    write_embeddings(graph, "User", [(pseudonymise(key, "alice"), vecs[0].tolist())], version)
    return ids, vecs


@pytest.fixture(scope="module")
def live(neo4j_driver, graph_settings, redis_url, tmp_path_factory):
    """A server started empty against a seeded graph (through its own IngestEvents), then loaded from Neo4j.

    Shared by the tests of this module, which run in order: read-only ones first, then those that change state.
    """
    graph = neo4j_driver
    wipe(graph)
    redis.Redis.from_url(redis_url).delete(STREAM)
    settings = base_settings(
        redis_url=redis_url,
        delta_stream=STREAM,
        snapshot_dir=tmp_path_factory.mktemp("snap"),
        max_stream_events=1000,
        delta_block_ms=20,
        popular_ttl_s=0,
        forget_snapshot_s=0.2,
    )
    seeder, stop = start_harness(settings, graph_settings, graph)
    summary = _seed(seeder.stub(), time.time())
    stop()
    _write_vectors(graph, graph_settings)
    harness, stop = start_harness(settings, graph_settings, graph, redis_url=redis_url, start_lifecycle=True)
    harness.summary = summary
    harness.settings = settings
    yield harness
    stop()


def test_ingest_summary_counts_rejections_and_duplicates(live) -> None:
    s = live.summary
    n = N_ITEMS + 2 + 4 + 3
    assert s.received == n + 3 and s.accepted == n and s.duplicates == 1
    assert [r.index for r in s.rejected] == [n, n + 1]  # indexes count across stream messages
    assert "item" in s.rejected[0].reason and "type" in s.rejected[1].reason


def test_recommend_excludes_purchases_unless_asked(live) -> None:
    stub = live.stub()
    _, vecs = item_vectors(N_ITEMS)
    resp = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=5), timeout=10)
    got = [i.item_id for i in resp.items]
    assert not resp.cold_start and resp.model_version == "m1" and len(got) == 5
    assert "item-0" not in got and "item-1" not in got
    seen = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=5, include_seen=True), timeout=10)
    assert seen.items[0].item_id == "item-0" and seen.items[0].score == pytest.approx(1.0, abs=1e-4)
    fashion = stub.RecommendForUser(
        pb.RecommendForUserRequest(user_id="alice", k=5, filter=pb.ItemFilter(category_ids=["Fashion"])), timeout=10
    )
    assert all(int(i.item_id.split("-")[1]) % 2 == 1 for i in fashion.items) and "item-1" not in [i.item_id for i in fashion.items]


def test_cold_start_for_unknown_and_vectorless_users(live) -> None:
    stub = live.stub()
    for user in ("never-seen", "fan-1"):  # fan-1 exists in the graph but has no vector
        resp = stub.RecommendForUser(pb.RecommendForUserRequest(user_id=user, k=3, include_seen=True), timeout=10)
        assert resp.cold_start and [i.item_id for i in resp.items][:2] == ["item-5", "item-8"]
        assert resp.items[0].score == pytest.approx(1.0)
    flt = pb.ItemFilter(category_ids=["Electronics"], exclude_item_ids=["item-8"])
    resp = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="never-seen", k=3, filter=flt), timeout=10)
    got = [i.item_id for i in resp.items]
    assert resp.cold_start and "item-5" not in got and "item-8" not in got and len(got) == 3
    assert all(int(i.split("-")[1]) % 2 == 0 for i in got)
    # a fan's own purchase is excluded from their cold-start answer too
    resp = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="fan-1", k=3), timeout=10)
    assert "item-5" not in [i.item_id for i in resp.items]


def test_cold_start_answers_follow_the_ranking_rules(live) -> None:
    """The popular items, re-ranked by the same rules: caps count the direct categories the graph files items
    under ("Electronics > Audio", "Fashion"), boosts scale the normalised popularity."""
    stub = live.stub()

    def ask(rules: pb.RankingRules, k: int) -> list[tuple[str, float]]:
        resp = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="never-seen", k=k, rules=rules), timeout=10)
        assert resp.cold_start
        return [(i.item_id, i.score) for i in resp.items]

    # item-5 (Fashion, 4 purchases + a view) and item-8 (Electronics > Audio, 3 carts + a view) lead; every other
    # item is in one of the two leaves, so one per category leaves two items however many are asked
    assert [i for i, _ in ask(pb.RankingRules(max_per_category=1), 5)] == ["item-5", "item-8"]
    # both leading items are brand-2; the rest (one view each) tie and follow by id
    assert [i for i, _ in ask(pb.RankingRules(max_per_brand=1), 3)] == ["item-5", "item-0", "item-1"]
    plain = dict(ask(pb.RankingRules(), 60))
    boosted = ask(pb.RankingRules(boosts=[pb.Boost(brand_id="brand-0", multiplier=5.0)]), 60)
    assert boosted[0][0] == "item-0"  # bought by alice besides its view: 5 x its popularity overtakes item-5
    assert boosted == sorted(boosted, key=lambda t: (-t[1], t[0]))  # by boosted score, ties by id
    for item_id, score in boosted:
        assert score == pytest.approx(plain[item_id] * (5.0 if int(item_id.split("-")[1]) % 3 == 0 else 1.0), rel=1e-5)


def test_get_embedding_of_a_user(live) -> None:
    stub = live.stub()
    _, vecs = item_vectors(N_ITEMS)
    resp = stub.GetEmbedding(pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_USER, id="alice"), timeout=10)
    assert np.allclose(np.asarray(resp.vector) / np.linalg.norm(resp.vector), vecs[0], atol=1e-5)
    assert resp.model_version == "m1" and resp.updated_at > 0
    with pytest.raises(grpc.RpcError) as err:
        stub.GetEmbedding(pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_USER, id="fan-2"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _wait(predicate, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_delta_stream_upserts_deletes_and_model_switch(live, neo4j_driver, graph_settings, redis_url) -> None:
    stub = live.stub()
    r = redis.Redis.from_url(redis_url)
    probe = np.zeros(DIM, np.float32)
    probe[3] = 1.0
    near = lambda: stub.NearestItems(pb.NearestItemsRequest(vector=probe.tolist(), k=1), timeout=10)  # noqa
    r.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, "fresh", probe, "m1")})
    _wait(lambda: near().items[0].item_id == "fresh")
    r.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, "ignored", probe, "other-model")})
    r.xadd(STREAM, {FIELD: b"not a protobuf"})
    r.xadd(
        STREAM, {FIELD: pb.EmbeddingDelta(op=pb.EmbeddingDelta.OP_DELETE, node_type=pb.NODE_TYPE_ITEM, id="fresh").SerializeToString()}
    )
    _wait(lambda: near().items[0].item_id not in ("fresh", "ignored"))
    # compaction folds the delta into the base without changing answers
    before = [i.item_id for i in stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-9", k=5), timeout=10).items]
    assert live.run(live.lifecycle.compact())
    assert live.engine.serving.index.delta_rows == 0
    after = [i.item_id for i in stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-9", k=5), timeout=10).items]
    assert before == after
    # a new model: vectors written to Neo4j, then announced; the server switches atomically
    ids, vecs2 = _write_vectors(neo4j_driver, graph_settings, version="m2", seed=7)
    r.xadd(STREAM, {FIELD: encode_activate("m2")})
    _wait(lambda: near().model_version == "m2", timeout=20)
    resp = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-3", k=1), timeout=10)
    assert resp.model_version == "m2"
    scores = vecs2 @ vecs2[3]
    scores[3] = -9
    assert resp.items[0].item_id == ids[int(np.argmax(scores))]
    assert not stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=1), timeout=10).cold_start


def test_snapshot_then_catch_up_from_the_stream(live, neo4j_driver, graph_settings, redis_url) -> None:
    r = redis.Redis.from_url(redis_url)
    probe = np.zeros(DIM, np.float32)
    probe[5] = 1.0
    version = live.engine.serving.index.model_version
    r.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, "before-snap", probe, version)})
    _wait(lambda: live.engine.serving.index.label_of("before-snap") is not None)
    live.run(live.lifecycle.save_snapshot())
    r.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, "after-snap", -probe, version)})
    saved = neo4j_driver.execute_query("MATCH (n:Item) WHERE n.embedding IS NOT NULL RETURN count(n) AS n")
    neo4j_driver.execute_query("MATCH (n:Item) SET n.emb_version = 'gone'")  # proves the restart reads the snapshot
    second, stop = start_harness(live.settings, graph_settings, neo4j_driver, redis_url=redis_url, start_lifecycle=True)
    try:
        stub = second.stub()
        top = lambda v: stub.NearestItems(pb.NearestItemsRequest(vector=v, k=1), timeout=10).items[0].item_id  # noqa
        assert top(probe.tolist()) == "before-snap"
        _wait(lambda: top((-probe).tolist()) == "after-snap")
        assert len(second.engine.serving.index) == N_ITEMS + 2 and saved.records[0]["n"] == N_ITEMS
        assert second.engine.serving.index.model_version == version
    finally:
        stop()


def test_the_api_guide_runs_as_written(live) -> None:
    """docs/api.md's Python walk-through, run as it is against this server (only its address changed)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = doc[doc.index("## A storefront's integration") :]
    code = section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]
    assert 'ADDRESS = "127.0.0.1:50051"' in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code.replace('ADDRESS = "127.0.0.1:50051"', f'ADDRESS = "127.0.0.1:{live.port}"'), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == "stored 2 already there 0 rejected []"
    assert lines[1] == "feedback stored 2 item-6 hidden: True"
    assert lines[2].startswith("like item-4: [('item-") and "'item-4'" not in lines[2]
    assert lines[3].startswith("for alice: ['item-") and lines[3].endswith(" personal")
    assert lines[4].startswith("why: [('item-")
    assert lines[5].startswith("for this session: ['item-") and lines[5].endswith(" personal")
    assert lines[6].startswith("ok: ['item-") and lines[7].startswith("ok: ['item-")
    assert lines[8].startswith("failed: True entries[2]: ") and "no-such-item" in lines[8]
    assert lines[9].startswith("ok: ['item-")
    assert lines[10].startswith("near item-4's vector: ['item-4'")
    assert lines[11].startswith("refused: INVALID_ARGUMENT k must be")
    assert lines[12] == "forgotten: True"
    assert lines[13].startswith("varied: [('item-") and len(lines) == 14


def test_forget_user_everywhere(live, neo4j_driver, graph_settings, redis_url) -> None:
    stub = live.stub()
    assert not stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=3), timeout=10).cold_start
    assert stub.ForgetUser(pb.ForgetUserRequest(user_id="alice"), timeout=10).existed
    pseudonym = pseudonymise(graph_settings.pseudonym_key.get_secret_value(), "alice")
    assert neo4j_driver.execute_query("MATCH (u:User {id: $id}) RETURN count(u) AS n", id=pseudonym).records[0]["n"] == 0
    resp = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=3), timeout=10)
    assert resp.cold_start  # no vector left in the cache or the graph
    with pytest.raises(grpc.RpcError) as err:
        stub.GetEmbedding(pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_USER, id="alice"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    entries = redis.Redis.from_url(redis_url).xrange(STREAM)
    deltas = [pb.EmbeddingDelta.FromString(f[FIELD]) for _, f in entries if f[FIELD] != b"not a protobuf"]
    assert any(d.op == pb.EmbeddingDelta.OP_DELETE and d.id == pseudonym for d in deltas)
    # an upsert computed before the forget and arriving late cannot bring the user back
    late = redis.Redis.from_url(redis_url).xadd(
        STREAM,
        {
            FIELD: encode_upsert(
                pb.NODE_TYPE_USER, pseudonym, np.ones(DIM), live.engine.serving.index.model_version, ts=time.time() - 60
            )
        },
    )
    _wait(lambda: stream_position(live.lifecycle.consumer.position) >= stream_position(late.decode()))  # applied
    assert stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=3), timeout=10).cold_start
    assert not stub.ForgetUser(pb.ForgetUserRequest(user_id="alice"), timeout=10).existed
    # the snapshot on disk is rewritten without the user shortly after
    from server.snapshot import load_snapshot

    def snapshot_clean() -> bool:
        try:
            snap = load_snapshot(live.settings.snapshot_dir, live.engine.params)
        except (OSError, ValueError):  # replaced while we read it
            return False
        return snap is not None and pseudonym not in snap.users and time.time() - snap.created_at < 5

    _wait(snapshot_clean, timeout=10)
