"""The pending set of a K-layer encoder's rounds (`workers.hetero_recompute.PendingSet`): a round publishes and
writes its users and leaves the items that keep a moved node to chunks of the pending set; the event users are on
the stream before those items, the marks are cleared while the items are still stale, and once the marks and the
pending set drain every vector equals a full recompute, with changes arriving between the round and its chunks,
and after a round or a chunk that failed half-way. On the amazon-hin slice loaded through the importer, with the
real Neo4j, Redis and worker code."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import redis
from redis import Redis
from test_hetero_live import _HUB, T0, _events, _rolled_out, _runtime, _worst

from graphdb import subgraph
from graphdb.changes import count_marks
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from graphdb.schema import ITEM, USER
from workers import hetero_recompute
from workers.publish import FIELD, NODE_TYPES, Delta


def _clicks(slices, seed: int, n: int) -> tuple[list[str], list[dict]]:
    lines = (slices / "amazon-hin" / "user_item.dat").read_text().splitlines()
    rng = random.Random(seed)
    users = rng.sample(sorted({f"hin:{line.split()[0]}" for line in lines}), n)
    items = sorted({f"hin:{line.split()[1]}" for line in lines})
    # each user's newest event: its recency re-ranks the user's edges, so every user's capped in-list changes
    events = [
        {"event_id": f"p{seed}-{k}", "user_id": u, "type": "click", "item_id": rng.choice(items), "ts": T0 + 86400 * 365 + k}
        for k, u in enumerate(users)
    ]
    return users, events


def _stale(driver, full, label: str) -> set[str]:
    stored = subgraph.stored_vectors(driver, label, full.vectors[label])
    return {i for i, v in full.vectors[label].items() if float(np.max(np.abs(np.asarray(stored[i].vector) - v))) > 1e-4}


def test_users_are_published_before_the_pending_items_and_the_drained_graph_equals_full(
    graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices
):
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, "sage")
    driver = rt.driver
    version = _rolled_out(rt, graph_settings, slices)
    ctx = rt.hetero_context(version)
    pending = hetero_recompute.PendingSet(ctx)
    users, events = _clicks(slices, 7, 12)
    assert ingest_events(driver, graph_settings, events).accepted == len(events)
    client = Redis.from_url(redis_url)
    start = client.xinfo_stream(ctx.stream)["last-generated-id"] if client.exists(ctx.stream) else b"0-0"

    res = hetero_recompute.recompute_marked(ctx)
    key = graph_settings.pseudonym_key.get_secret_value()
    shoppers = {pseudonymise(key, u) for u in users}
    # the round: its users written and published, its marks cleared, the items left to the pending set
    assert res.users == len(shoppers) and res.items == 0 and count_marks(driver) == 0
    assert 0 < pending.count() <= res.pending_added  # (the users' own entries are gone with their write)
    full = hetero_recompute.full_vectors(ctx)
    assert not _stale(driver, full, USER) & shoppers  # the event users are exact already
    stale_items = _stale(driver, full, ITEM)
    assert stale_items  # the items that keep a moved user wait for the pending set

    done = hetero_recompute.recompute_pending(ctx, budget_s=3600.0)
    assert done.left == 0 and pending.count() == 0 and done.items >= len(stale_items)
    deltas = [Delta.FromString(f[FIELD.encode()]) for _, f in client.xrange(ctx.stream, min=f"({start.decode()}")]
    first_item = next(n for n, d in enumerate(deltas) if d.node_type == NODE_TYPES[ITEM])
    assert shoppers <= {d.id for d in deltas[:first_item]}  # every event user before any item
    assert stale_items <= {d.id for d in deltas[first_item:] if d.node_type == NODE_TYPES[ITEM]}
    assert _worst(driver, hetero_recompute.full_vectors(ctx), version) <= 1e-4
    client.close()
    rt.close()


def test_changes_between_a_round_and_its_chunks_are_not_lost(graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices):
    """Events (hub items, new items, new users) land while the pending set holds a round's work; the next chunks
    read caps and stored outputs that the marks have not caught up with yet. Drained, the graph equals full."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, "sage")
    driver = rt.driver
    version = _rolled_out(rt, graph_settings, slices)
    ctx = rt.hetero_context(version)
    pending = hetero_recompute.PendingSet(ctx)
    hub = driver.execute_query(_HUB).records[0]["id"]
    users = sorted({f"hin:{line.split()[0]}" for line in (slices / "amazon-hin" / "user_item.dat").read_text().splitlines()})
    items = [r["id"] for r in driver.execute_query("MATCH (i:Item) WHERE i.id =~ 'hin:[0-9]+' RETURN i.id AS id").records]
    rng = random.Random(17)
    for batch in range(3):
        assert not ingest_events(driver, graph_settings, _events(rng, batch, 60, users, items, hub)).rejected
        hetero_recompute.recompute_marked(ctx, limit=40)  # part of the marks
        assert pending.count() > 0
        hetero_recompute.recompute_pending(ctx, budget_s=0.0)  # one step of the pending set, then more events
    hetero_recompute.drain(ctx)
    assert count_marks(driver) == 0 and pending.count() == 0
    assert _worst(driver, hetero_recompute.full_vectors(ctx), version) <= 1e-4
    rt.close()


def test_a_round_or_chunk_that_fails_half_way_loses_nothing(graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices):
    """A round and a chunk fail at their publish (the stream key holds a string: Redis refuses the append), after
    their reads and forwards and before their writes: the marks, and the pending entries, are all still there, and
    the next rounds and chunks make every vector equal a full recompute."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, "sage")
    driver = rt.driver
    version = _rolled_out(rt, graph_settings, slices)
    ctx = rt.hetero_context(version)
    client = Redis.from_url(redis_url)
    client.set("not-a-stream", b"x")
    broken = dataclasses.replace(ctx, stream="not-a-stream")
    pending = hetero_recompute.PendingSet(ctx)
    _, events = _clicks(slices, 9, 10)
    assert ingest_events(driver, graph_settings, events).accepted == len(events)
    marks = count_marks(driver)
    with pytest.raises(redis.ResponseError):
        hetero_recompute.recompute_marked(broken)
    assert count_marks(driver) == marks and pending.count() == 0

    res = hetero_recompute.recompute_marked(ctx)
    left = set(client.zrange(hetero_recompute.PENDING, 0, -1))
    assert res.marks == marks and left
    with pytest.raises(redis.ResponseError):
        hetero_recompute.recompute_pending(broken, budget_s=3600.0)
    assert left <= set(client.zrange(hetero_recompute.PENDING, 0, -1))  # nothing removed before its vectors are written

    _, more = _clicks(slices, 10, 10)  # and new events meanwhile
    assert ingest_events(driver, graph_settings, more).accepted == len(more)
    hetero_recompute.drain(ctx)
    assert count_marks(driver) == 0 and pending.count() == 0
    assert _worst(driver, hetero_recompute.full_vectors(ctx), version) <= 1e-4
    client.close()
    rt.close()


def test_a_users_keepers_are_the_items_whose_stored_cap_keeps_it(graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices):
    """A user's `o` entry expands to the items whose stored cap keeps the user (`CapStore.users`, no rows decoded
    or weighed): the same set as `Neighbourhood.out` reading and ranking every item's cap, hub items (cap 4 here, so
    many shoppers are left out) and items under new events included; and the caps round-trip exactly."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, "sage")
    driver = rt.driver
    version = _rolled_out(rt, graph_settings, slices)
    ctx = rt.hetero_context(version)
    hub = driver.execute_query(_HUB).records[0]["id"]
    users = sorted({f"hin:{line.split()[0]}" for line in (slices / "amazon-hin" / "user_item.dat").read_text().splitlines()})
    items = [r["id"] for r in driver.execute_query("MATCH (i:Item) WHERE i.id =~ 'hin:[0-9]+' RETURN i.id AS id").records]
    assert not ingest_events(driver, graph_settings, _events(random.Random(5), 0, 80, users, items, hub)).rejected
    hetero_recompute.drain(ctx)
    of_hub = "MATCH (u:User)-->(:Item {id: $hub}) RETURN DISTINCT u.id AS id ORDER BY id"
    shoppers = [r["id"] for r in driver.execute_query(of_hub, hub=hub).records]
    assert len(shoppers) > 4  # the hub keeps only some of them
    nodes = {("user", u) for u in shoppers[:40]}
    reference = {n for n in hetero_recompute.Neighbourhood(ctx).out(nodes) if n[0] in ("user", "item")}
    assert reference and hetero_recompute._keepers(hetero_recompute.Neighbourhood(ctx), nodes) == reference
    store = hetero_recompute.CapStore(ctx)
    caps = store.get(items)
    assert caps and store.users(items) == {i: {e.user for e in rows} for i, rows in caps.items()}
    store.put(caps)
    assert store.get(items) == caps
    rt.close()


def test_the_chunks_go_on_past_a_queued_round_while_the_oldest_entry_is_older_than_the_lag_bound(
    graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices
):
    """Under a load that always queues the next round a task runs one chunk, unless the pending set's oldest entry
    has waited longer than ``max_lag_s``: then it works the set until that is no longer so (here all of it), and the
    drained graph equals a full recompute."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, "sage")
    driver = rt.driver
    version = _rolled_out(rt, graph_settings, slices)
    ctx = rt.hetero_context(version)
    pending = hetero_recompute.PendingSet(ctx)
    _, events = _clicks(slices, 11, 12)
    assert ingest_events(driver, graph_settings, events).accepted == len(events)
    res = hetero_recompute.round_and_chunks(ctx, 10000, 0.0, 3600.0, lambda: True)  # one step: entries are left
    assert res.pending_steps == 1 and res.pending_left > 0 and pending.oldest_age() > 0
    _, more = _clicks(slices, 12, 12)
    assert ingest_events(driver, graph_settings, more).accepted == len(more)
    res = hetero_recompute.round_and_chunks(ctx, 10000, 0.0, 3600.0, lambda: True, max_lag_s=0.0)
    assert res.marks > 0 and res.pending_steps > 1 and res.pending_left == 0 and pending.count() == 0
    assert count_marks(driver) == 0
    assert _worst(driver, hetero_recompute.full_vectors(ctx), version) <= 1e-4
    rt.close()
