"""Invariant 3 on the real Neo4j: incremental recompute after random event batches equals a full recompute.

The model is trained on the live graph (tiny, spectral start only) and rolled out with ``rebuild``; then random
batches add events of known and new users on known and new items (new items with metadata, some of it changed
later), searches, and catalogue edits. After each batch the incremental path runs until no mark is left; at the
end every stored vector is compared with a full recompute of the final graph.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import redis

from graphdb import catalog, subgraph
from graphdb.changes import count_marks
from graphdb.ingest import ingest_events
from graphdb.items import ItemRecord, upsert_items
from graphdb.marks import new_token
from graphdb.model_state import active_model, read_card
from graphdb.pseudonym import pseudonymise
from graphdb.schema import ITEM, QUERY, USER
from graphdb.settings import DataSettings
from ml.settings import ModelSettings, TrainSettings
from proto.interest.v1 import interest_pb2 as pb
from workers import jobs
from workers.recompute import full_vectors, recompute_marked
from workers.settings import WorkerSettings

T0 = 1_700_000_000.0
# negative feedback too: returns void earlier purchases (graphdb.feedback), hides count for nothing
TYPES = ["view", "click", "add_to_cart", "purchase", "rate", "return", "not_interested"]
CATEGORIES = [("Office", "Paper"), ("Office", "Pens"), ("Office", "Desks"), ("Home", "Lamps")]
WORDS = ["blue", "pen", "paper", "ream", "desk", "lamp", "stapler", "ink", "gel", "oak", "steel", "notebook"]


def _title(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, 3))


def _seed_history(rng: random.Random) -> list[dict]:
    """The history a model is trained on: 30 users with 6 purchases each of a catalogue of 40 items."""
    meta = {i: _meta(rng) for i in range(40)}
    first = [
        {
            "event_id": f"seed-{k}",
            "user_id": f"user-{u}",
            "type": "purchase",
            "ts": T0 - 86400 * rng.random(),
            "item_id": f"item-{i}",
            "item": meta[i],
        }
        for k, (u, i) in enumerate((u, rng.randrange(40)) for u in range(30) for _ in range(6))
    ]
    return first


def _meta(rng: random.Random) -> dict:
    return {"title": _title(rng), "brand": rng.choice(["acme", "zenith", "orbit"]), "categories": [list(rng.choice(CATEGORIES))]}


def _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, **model) -> jobs.Runtime:
    ws = WorkerSettings(model_dir=tmp_path / "models", text_cache_dir=tmp_path / "text", redis_url=redis_url, lock_timeout_s=30)
    # recency weights on: a user's vector weighs their capped items by the rank of their latest times
    ms = ModelSettings(dim=graph_settings.embedding_dim, user_cap=6, recency_boost=10.0, select_filter=False, **model)
    return jobs.Runtime(neo4j_settings, graph_settings, ms, TrainSettings(max_epochs=0, threads=1), ws, DataSettings())


@pytest.fixture
def runtime(graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path)
    yield rt
    rt.close()


def _events(rng: random.Random, batch: int, n: int, users: int, items: int, new_item_meta: dict) -> list[dict]:
    out = []
    for k in range(n):
        e = {
            "event_id": f"b{batch}-{k}",
            "user_id": f"user-{rng.randrange(users)}",
            "type": rng.choice(TYPES),
            "ts": T0 + batch * 3600 + rng.uniform(-7200, 3600),
        }
        if e["type"] == "rate":
            e["rating"] = float(rng.randint(1, 5))
        item = rng.randrange(items)
        e["item_id"] = f"item-{item}"
        if item in new_item_meta and rng.random() < 0.5:
            e["item"] = new_item_meta[item]
        if rng.random() < 0.08:
            e = {
                "event_id": f"b{batch}-{k}",
                "user_id": e["user_id"],
                "type": "search",
                "ts": e["ts"],
                "query": rng.choice(WORDS) + " " + rng.choice(WORDS),
            }
        out.append(e)
    return out


def _drain(ctx) -> list:
    rounds = []
    while True:
        # small rounds: marks arrive and clear in several passes; every other one takes the newest marks first, as
        # rounds under a backlog do (workers.round_size)
        res = recompute_marked(ctx, limit=40, newest=20 if len(rounds) % 2 else 0)
        rounds.append(res)
        if res.marks == 0:
            return rounds


# at the defaults (typed behaviour weights), with untyped behaviour strength and time decay (ml.signals), with
# typed weights that name ratings too, and with searches in the user vector: the edge rows carry their type on every read
TYPED = {
    "behaviour_power": 1.0,
    "decay_half_life_days": 0.5,
    "behaviour_weights": {"view": 1, "click": 2, "add_to_cart": 4, "purchase": 8, "rate": 3},
}


@pytest.mark.parametrize(
    "signals",
    [
        {},
        {"behaviour_power": 1.0, "behaviour_weights": {}, "decay_half_life_days": 0.5},
        TYPED,
        {"search_weight": 1.0, "search_cap": 2},
    ],
    ids=["plain", "signals", "typed", "searches"],
)
def test_incremental_equals_full_after_random_batches(graph, neo4j_settings, graph_settings, redis_url, tmp_path, signals):
    runtime = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, **signals)
    try:
        _incremental_equals_full(runtime, graph_settings)
    finally:
        runtime.close()


def _incremental_equals_full(runtime, graph_settings):
    rng = random.Random(7)
    driver = runtime.driver
    # the catalogue and history the model is trained on
    first = _seed_history(rng)
    assert not ingest_events(driver, graph_settings, first).rejected
    trained = jobs.train_from_graph(runtime)
    marked = count_marks(driver)
    out = jobs.rebuild_version(runtime, trained["version"])
    assert out["active"] == trained["version"]
    # the roll-out embedded the whole graph: the marks of the loaded events are cleared, not recomputed again
    assert marked > 0 and out["marks_cleared"] == marked and count_marks(driver) == 0
    # the version's user side carries the behaviour type weights it was trained with (servers read them there)
    card = read_card(driver, trained["version"])
    assert card is not None and dict(card.behaviour_weights) == runtime.model.typed_weights()
    ctx = runtime.context(trained["version"])
    _drain(ctx)

    # random batches: new users (30..44), new items (40..54) with metadata, searches, catalogue edits
    new_meta = {i: _meta(rng) for i in range(40, 55)}
    for batch in range(5):
        events = _events(rng, batch, 120, users=45, items=55, new_item_meta=new_meta)
        result = ingest_events(driver, graph_settings, events)
        assert not result.rejected
        if batch in (2, 3):  # edit the catalogue of some new items: their users must follow
            edits = [
                ItemRecord(id=f"item-{i}", title=_title(rng), categories=(rng.choice(CATEGORIES),))
                for i in rng.sample(range(40, 55), 5)
            ]
            with driver.session() as s:
                s.execute_write(lambda tx: upsert_items(tx, edits, token=new_token(), now=T0))
        rounds = _drain(ctx)
        assert sum(r.cleared for r in rounds) > 0
    assert count_marks(driver) == 0

    full = full_vectors(ctx)
    assert len(full.vectors[USER]) == 45 and len(full.vectors[ITEM]) == 55 and full.vectors[QUERY]
    worst = 0.0
    for label, vectors in full.vectors.items():
        stored = subgraph.stored_vectors(driver, label, vectors)
        assert set(stored) == set(vectors)
        for node_id, vec in vectors.items():
            s = stored[node_id]
            assert s.version == trained["version"], (label, node_id)
            worst = max(worst, float(np.max(np.abs(np.asarray(s.vector) - vec))))
    assert worst <= 1e-4
    # and the vectors are not trivially equal: users differ from one another
    users = np.stack(list(full.vectors[USER].values()))
    assert np.linalg.matrix_rank(users) > 5


def test_a_return_removes_the_purchase_from_the_shoppers_vector(runtime, graph_settings):
    """ann bought item-1 and item-2; twin bought item-2 alone, at the same time. Once ann returns item-1, her
    vector is recomputed at once from the marks and equals twin's (the purchase no longer counts), a full recompute
    agrees, and item-1 is no longer excluded as bought; solo returns her only purchase and keeps a vector that
    the full recompute agrees with."""
    driver = runtime.driver
    rng = random.Random(11)
    events = [
        {"event_id": f"bg-{k}", "user_id": f"user-{k % 12}", "type": "purchase", "ts": T0 - k, "item_id": f"item-{rng.randrange(20)}"}
        for k in range(120)
    ]
    events += [
        {"event_id": "ann-1", "user_id": "ann", "type": "purchase", "ts": T0, "item_id": "item-1"},
        {"event_id": "ann-2", "user_id": "ann", "type": "purchase", "ts": T0, "item_id": "item-2"},
        {"event_id": "twin-2", "user_id": "twin", "type": "purchase", "ts": T0, "item_id": "item-2"},
        {"event_id": "solo-3", "user_id": "solo", "type": "purchase", "ts": T0, "item_id": "item-3"},
    ]
    assert not ingest_events(driver, graph_settings, events).rejected
    version = jobs.train_from_graph(runtime)["version"]
    jobs.rebuild_version(runtime, version)
    ctx = runtime.context(version)
    _drain(ctx)
    key = graph_settings.pseudonym_key.get_secret_value()
    ann, twin, solo = (pseudonymise(key, u) for u in ("ann", "twin", "solo"))

    def vectors() -> dict[str, np.ndarray]:
        return {k: np.asarray(v.vector) for k, v in subgraph.stored_vectors(driver, USER, [ann, twin, solo]).items()}

    before = vectors()
    assert catalog.shopper_exclusions(driver, ann).bought == ("item-1", "item-2")
    assert np.max(np.abs(before[ann] - before[twin])) > 1e-3  # the purchase of item-1 shows in her vector

    returns = [
        {"event_id": "ann-r1", "user_id": "ann", "type": "return", "ts": T0 + 60, "item_id": "item-1"},
        {"event_id": "solo-r3", "user_id": "solo", "type": "return", "ts": T0 + 60, "item_id": "item-3"},
    ]
    assert ingest_events(driver, graph_settings, returns).accepted == 2
    res = recompute_marked(ctx)  # the return marked both shoppers: one round recomputes them
    assert res.users >= 2
    after = vectors()
    assert np.max(np.abs(after[ann] - before[ann])) > 1e-3
    assert np.max(np.abs(after[ann] - after[twin])) <= 1e-4
    assert catalog.shopper_exclusions(driver, ann).bought == ("item-2",)
    full = full_vectors(ctx).vectors[USER]
    for user in (ann, twin, solo):
        assert np.max(np.abs(after[user] - full[user])) <= 1e-4, user


def test_event_on_hub_item_recomputes_only_its_user(runtime, graph_settings):
    driver = runtime.driver
    rng = random.Random(3)
    # item-0 is a hub: every one of 200 users bought it
    events = [{"event_id": f"h-{u}", "user_id": f"user-{u}", "type": "purchase", "ts": T0, "item_id": "item-0"} for u in range(200)]
    events += [
        {"event_id": f"o-{u}-{k}", "user_id": f"user-{u}", "type": "view", "ts": T0 + k, "item_id": f"item-{rng.randrange(1, 30)}"}
        for u in range(200)
        for k in range(3)
    ]
    ingest_events(driver, graph_settings, events)
    version = jobs.train_from_graph(runtime)["version"]
    jobs.rebuild_version(runtime, version)
    ctx = runtime.context(version)
    _drain(ctx)

    ingest_events(
        driver, graph_settings, [{"event_id": "late", "user_id": "user-5", "type": "purchase", "ts": T0 + 99, "item_id": "item-0"}]
    )
    res = recompute_marked(ctx)
    assert res.marks == 2  # the user and the hub item
    assert res.users == 1 and res.propagated_users == 0
    assert res.items == 0  # the hub's vector is fixed for the version: nothing to rewrite
    assert res.published == 1
    key = graph_settings.pseudonym_key.get_secret_value()
    stored = subgraph.stored_vectors(driver, USER, [pseudonymise(key, "user-5")])
    assert next(iter(stored.values())).version == version


def test_a_shopper_active_now_is_recomputed_before_an_older_backlog(runtime, graph_settings):
    """Under a backlog (more marks than a round takes) the round after a shopper's event takes that shopper with the
    newest marks while older marks wait; draining the rest leaves every vector equal to a full recompute."""
    driver = runtime.driver
    ctx = _trained_on_purchases(runtime, graph_settings)
    rng = random.Random(11)
    older = [
        {"event_id": f"b-{u}", "user_id": f"user-{u}", "type": "view", "ts": T0 + 100 + u, "item_id": f"item-{rng.randrange(20)}"}
        for u in range(20)
    ]
    assert not ingest_events(driver, graph_settings, older, now=T0 + 100).rejected
    now = {"event_id": "now", "user_id": "user-25", "type": "purchase", "ts": T0 + 200, "item_id": "item-3"}
    assert not ingest_events(driver, graph_settings, [now], now=T0 + 200).rejected
    waiting = count_marks(driver)
    assert waiting > 12
    shopper = pseudonymise(graph_settings.pseudonym_key.get_secret_value(), "user-25")

    def marked(user: str) -> bool:
        return driver.execute_query("MATCH (u:User {id: $id}) RETURN u:Dirty AS m", id=user).records[0]["m"]

    res = recompute_marked(ctx, limit=6, newest=4)
    assert res.marks == 6 and res.users >= 1
    assert not marked(shopper)  # recomputed, its vector written and its mark cleared
    assert count_marks(driver) == waiting - 6  # the older marks but the 2 oldest wait
    assert subgraph.stored_vectors(driver, USER, [shopper])[shopper].version == ctx.encoder.version
    _drain(ctx)
    full = full_vectors(ctx)
    assert full.vectors[USER] and full.vectors[ITEM]
    for label, vectors in full.vectors.items():
        stored = subgraph.stored_vectors(driver, label, vectors)
        worst = max((float(np.max(np.abs(np.asarray(stored[i].vector) - v))) for i, v in vectors.items()), default=0.0)
        assert worst <= 1e-4, label


def _trained_on_purchases(rt, graph_settings):
    """30 shoppers with 4 purchases each among 20 items, a version trained and rolled out on them, no mark left."""
    rng = random.Random(5)
    history = [
        {"event_id": f"h-{u}-{k}", "user_id": f"user-{u}", "type": "purchase", "ts": T0 + k, "item_id": f"item-{rng.randrange(20)}"}
        for u in range(30)
        for k in range(4)
    ]
    ingest_events(rt.driver, graph_settings, history)
    version = jobs.train_from_graph(rt)["version"]
    jobs.rebuild_version(rt, version)
    ctx = rt.context(version)
    _drain(ctx)
    return ctx


def test_a_new_item_settles_after_its_first_shoppers(graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    """A new item's vector follows its first ``fold_users`` shoppers: each of them moves it and its users follow;
    a later shopper moves neither it nor anyone else (the deterministic cap on a new hub's fan-out)."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, fold_users=3)
    try:
        driver = rt.driver
        ctx = _trained_on_purchases(rt, graph_settings)
        item = "item-new"
        key = graph_settings.pseudonym_key.get_secret_value()
        vectors, propagated = [], []
        for u in range(6):  # shoppers 0, 1, 2 are its first three
            buy = {"event_id": f"n-{u}", "user_id": f"user-{u}", "type": "purchase", "ts": T0 + 100 + u, "item_id": item}
            ingest_events(driver, graph_settings, [buy])
            res = recompute_marked(ctx)
            propagated.append(res.propagated_users)
            vectors.append(np.asarray(subgraph.stored_vectors(driver, ITEM, [item])[item].vector))
            assert count_marks(driver) == 0
        moved = [float(np.max(np.abs(b - a))) for a, b in zip(vectors, vectors[1:])]
        assert all(m > 1e-4 for m in moved[:2]), moved  # the 2nd and 3rd shoppers move it
        assert all(m == 0.0 for m in moved[2:]), moved  # the 4th, 5th and 6th do not
        assert propagated == [0, 1, 2, 0, 0, 0]  # its earlier shoppers follow each move, nobody after
        # and the stored vectors are the full recompute's
        full = full_vectors(ctx).vectors
        assert np.allclose(vectors[-1], full[ITEM][item], atol=1e-5)
        for u in range(6):
            pid = pseudonymise(key, f"user-{u}")
            assert np.allclose(subgraph.stored_vectors(driver, USER, [pid])[pid].vector, full[USER][pid], atol=1e-5)
    finally:
        rt.close()


def test_a_changed_new_item_is_published_before_the_shoppers_it_reaches(graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    """In the recompute after a new item's second shopper, the item's vector is the first delta on the stream, before
    its two shoppers' (the earlier one reached by propagation): what shoppers like its buyers wait for does not wait
    for the fan-out. Each vector of the round is published once."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, fold_users=3)
    try:
        driver = rt.driver
        ctx = _trained_on_purchases(rt, graph_settings)
        assert ctx.redis is not None
        buy = {"event_id": "n-0", "user_id": "user-0", "type": "purchase", "ts": T0 + 100, "item_id": "item-new"}
        ingest_events(driver, graph_settings, [buy])
        recompute_marked(ctx)
        start = ctx.redis.xrevrange(ctx.stream, count=1)[0][0]
        ingest_events(driver, graph_settings, [{**buy, "event_id": "n-1", "user_id": "user-1", "ts": T0 + 101}])
        res = recompute_marked(ctx)
        deltas = [pb.EmbeddingDelta.FromString(f[b"d"]) for _, f in ctx.redis.xrange(ctx.stream, min=b"(" + start)]
        key = graph_settings.pseudonym_key.get_secret_value()
        assert res.propagated_users == 1
        assert (deltas[0].node_type, deltas[0].id) == (pb.NODE_TYPE_ITEM, "item-new")
        assert {d.id for d in deltas[1:] if d.node_type == pb.NODE_TYPE_USER} == {pseudonymise(key, f"user-{u}") for u in (0, 1)}
        assert len(deltas) == len({(d.node_type, d.id) for d in deltas}) == res.published
    finally:
        rt.close()


def test_a_trending_new_item_takes_its_shoppers_rate_as_its_prior(graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    """With ``fold_trend_horizon_days`` set, a new item bought by its first shoppers within seconds is served with
    the version's largest degree as its popularity prior (`ml.trend`), one bought as often over months with
    its count; the stored vectors are the full recompute's, and below ``fold_trend_min_shoppers`` nothing changes."""
    rt = _runtime(
        neo4j_settings, graph_settings, redis_url, tmp_path, fold_users=3, fold_trend_horizon_days=30.0, fold_trend_min_shoppers=2
    )
    try:
        driver = rt.driver
        ctx = _trained_on_purchases(rt, graph_settings)
        counted = dataclasses.replace(ctx.encoder, fold_trend_horizon_days=0.0)  # the same version, prior from counts
        day = 86400.0

        def buy(item: str, u: int, ts: float) -> np.ndarray:
            ingest_events(
                driver,
                graph_settings,
                [{"event_id": f"{item}-{u}", "user_id": f"user-{u}", "type": "purchase", "ts": ts, "item_id": item}],
            )
            recompute_marked(ctx)
            return np.asarray(subgraph.stored_vectors(driver, ITEM, [item])[item].vector)

        def count_prior(item: str) -> np.ndarray:
            rows = [r for r in subgraph.all_items(driver) if r.id == item]
            return counted.new_items(rows, subgraph.all_edges(driver))[0][0].cpu().numpy()

        first = buy("item-hot", 0, T0 + 100)
        assert np.allclose(first, count_prior("item-hot"), atol=1e-6)  # one shopper is no trend
        buy("item-hot", 1, T0 + 101)
        hot = buy("item-hot", 2, T0 + 102)
        for u in range(3, 6):
            slow = buy("item-slow", u, T0 + 100 + 60 * day * (u - 3))
        b, cap = ctx.encoder.ck.model.item_norm, float(ctx.encoder.ck.model.item_degree.max())
        assert cap > 3.0
        base = count_prior("item-hot")
        # same direction, scaled by the prior: (largest degree / 3 shoppers)^b
        assert np.linalg.norm(hot) / np.linalg.norm(base) == pytest.approx((cap / 3.0) ** b, rel=1e-4)
        assert float(hot @ base) / (np.linalg.norm(hot) * np.linalg.norm(base)) == pytest.approx(1.0, abs=1e-5)
        assert np.allclose(slow, count_prior("item-slow"), atol=1e-6)  # 3 shoppers over 120 days: their count
        full = full_vectors(ctx).vectors
        assert np.allclose(hot, full[ITEM]["item-hot"], atol=1e-5) and np.allclose(slow, full[ITEM]["item-slow"], atol=1e-5)
        key = graph_settings.pseudonym_key.get_secret_value()
        for u in range(6):  # its shoppers read it with the same degree (what it sends them)
            pid = pseudonymise(key, f"user-{u}")
            assert np.allclose(subgraph.stored_vectors(driver, USER, [pid])[pid].vector, full[USER][pid], atol=1e-5)
    finally:
        rt.close()


def test_a_search_moves_the_shoppers_vector_toward_items_of_its_text(graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    """With ``search_weight`` on, a shopper's search adds its text's vector to theirs: the vector moves toward the
    items whose titles hold the query's words more than toward the others, equals a full recompute, and with the
    weight at 0 the same graph gives the vector from before the search."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, search_weight=1.0, search_cap=3)
    try:
        driver = rt.driver
        assert not ingest_events(driver, graph_settings, _seed_history(random.Random(7))).rejected
        version = jobs.train_from_graph(rt)["version"]
        jobs.rebuild_version(rt, version)
        ctx = rt.context(version)
        _drain(ctx)
        pid = pseudonymise(graph_settings.pseudonym_key.get_secret_value(), "user-0")

        def stored() -> np.ndarray:
            return np.asarray(subgraph.stored_vectors(driver, USER, [pid])[pid].vector)

        before = stored()
        search = {"event_id": "s-0", "user_id": "user-0", "type": "search", "ts": T0 + 10, "query": "oak desk"}
        assert not ingest_events(driver, graph_settings, [search]).rejected
        _drain(ctx)
        after = stored()
        items = subgraph.all_items(driver)
        z = subgraph.stored_vectors(driver, ITEM, [r.id for r in items])
        gain = {r.id: float((after - before) @ np.asarray(z[r.id].vector)) for r in items}
        named = [gain[r.id] for r in items if {"oak", "desk"} & set((r.title or "").split())]
        others = [gain[r.id] for r in items if not {"oak", "desk"} & set((r.title or "").split())]
        assert named and others and np.mean(named) > np.mean(others) + 1e-3, (np.mean(named), np.mean(others))
        assert np.allclose(after, full_vectors(ctx).vectors[USER][pid], atol=1e-5)
        off = dataclasses.replace(ctx, encoder=dataclasses.replace(ctx.encoder, search_weight=0.0))
        assert np.allclose(full_vectors(off).vectors[USER][pid], before, atol=1e-5)
    finally:
        rt.close()


def test_rollback_switches_the_active_version(runtime, graph_settings, redis_url):
    driver = runtime.driver
    ingest_events(
        driver,
        graph_settings,
        [{"event_id": f"e{k}", "user_id": f"u{k % 7}", "type": "click", "ts": T0 + k, "item_id": f"i{k % 11}"} for k in range(80)],
    )
    v1 = jobs.train_from_graph(runtime)["version"]
    jobs.rebuild_version(runtime, v1)
    v2 = jobs.train_from_graph(runtime)["version"]
    assert v2 != v1
    stream = runtime.worker.delta_stream
    r = redis.Redis.from_url(redis_url)
    before = r.xlen(stream)
    out = jobs.rebuild_version(runtime, v2)
    assert (out["active"], out["previous"]) == (v2, v1)
    assert r.xlen(stream) == before + 1  # one ACTIVATE_MODEL delta
    back = jobs.rebuild_version(runtime, v1)  # roll-back: v1 embedded again and active
    assert (back["active"], back["previous"]) == (v1, v2)
    assert active_model(driver).version == v1
    versions = {s.version for s in subgraph.stored_vectors(driver, ITEM, [f"i{k}" for k in range(11)]).values()}
    assert versions == {v1}
