"""The items' stored caps (`workers.hetero_recompute.CapStore`): a round reads an unmarked item as its stored cap,
not its whole in-list, and stays exact. After random batches of events (hub events, new items, new users) on the
amazon-hin slice, every item's stored cap is the cap of its whole in-list in Neo4j, and every stored vector equals
a full recompute."""

from __future__ import annotations

import random

from test_hetero_live import _drain, _events, _rolled_out, _runtime, _worst

from graphdb import subgraph
from graphdb.changes import count_marks
from graphdb.ingest import ingest_events
from workers import hetero_recompute


def _caps_from_neo4j(ctx, item_ids: list[str]) -> dict[str, set]:
    enc = ctx.encoder
    whole: dict[str, list] = {i: [] for i in item_ids}
    for e in subgraph.item_edges(ctx.driver, item_ids):
        whole[e.item].append(e)
    return {
        i: {(e.user, e.weight, e.last_ts, e.first_ts, e.kind) for e in enc.cap_of_item(rows, None)[0]} for i, rows in whole.items()
    }


def test_stored_caps_stay_those_of_the_whole_in_lists_and_rounds_stay_exact(
    graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices
):
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, "sage")
    driver = rt.driver
    version = _rolled_out(rt, graph_settings, slices)
    ctx = rt.hetero_context(version)
    store = hetero_recompute.CapStore(ctx)
    items = [r["id"] for r in driver.execute_query("MATCH (i:Item) RETURN i.id AS id").records]
    assert store.get(items).keys() == set(items)  # the rollout stored every item's

    hub = driver.execute_query(
        "MATCH (i:Item)<-[]-(u:User) WITH i, count(DISTINCT u) AS d ORDER BY d DESC, i.id LIMIT 1 RETURN i.id AS id"
    ).records[0]["id"]
    users = sorted({f"hin:{line.split()[0]}" for line in (slices / "amazon-hin" / "user_item.dat").read_text().splitlines()})
    known = [i for i in items if i.startswith("hin:") and i[4:].isdigit()]
    rng = random.Random(11)
    cached = 0
    for batch in range(3):
        assert not ingest_events(driver, graph_settings, _events(rng, batch, 60, users, known, hub)).rejected
        cached += sum(r.cached_items for r in _drain(ctx))
    assert count_marks(driver) == 0
    assert cached > 0  # the out-sets and last layers read unmarked items from the store

    items = [r["id"] for r in driver.execute_query("MATCH (i:Item) RETURN i.id AS id").records]
    stored = {i: {(e.user, e.weight, e.last_ts, e.first_ts, e.kind) for e in rows} for i, rows in store.get(items).items()}
    whole = _caps_from_neo4j(ctx, items)
    stale = sorted(i for i in whole if stored.get(i) != whole[i])
    assert not stale, stale[:5]
    assert _worst(driver, hetero_recompute.full_vectors(ctx), version) <= 1e-4
    rt.close()
