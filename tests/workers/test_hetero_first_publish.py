"""A hetero recompute round publishes the shoppers whose events started it before the rest of the round
(`workers.hetero_recompute.recompute_marked`: from their own caps and the layer-1 outputs just computed, before
the items that keep them are read), with the vectors the round writes, and the drained graph still equals a full
recompute. On the amazon-hin slice loaded through the importer, with the real Neo4j, Redis and worker code."""

from __future__ import annotations

import random

import numpy as np
from redis import Redis
from test_hetero_live import T0, _rolled_out, _runtime, _worst

from graphdb import subgraph
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from graphdb.schema import USER
from workers import hetero_recompute
from workers.publish import FIELD, NODE_TYPES, Delta


def test_the_event_users_are_published_first_with_the_written_vectors(
    graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices
):
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, "sage")
    driver = rt.driver
    version = _rolled_out(rt, graph_settings, slices)
    ctx = rt.hetero_context(version)
    lines = (slices / "amazon-hin" / "user_item.dat").read_text().splitlines()
    rng = random.Random(5)
    users = rng.sample(sorted({f"hin:{line.split()[0]}" for line in lines}), 12)
    items = sorted({f"hin:{line.split()[1]}" for line in lines})
    # each user's newest event: its recency re-ranks the user's edges, so every user's capped in-list changes
    events = [
        {"event_id": f"f{k}", "user_id": u, "type": "click", "item_id": rng.choice(items), "ts": T0 + 86400 * 365 + k}
        for k, u in enumerate(users)
    ]
    assert ingest_events(driver, graph_settings, events).accepted == len(events)
    client = Redis.from_url(redis_url)
    start = client.xinfo_stream(ctx.stream)["last-generated-id"] if client.exists(ctx.stream) else b"0-0"
    res = hetero_recompute.recompute_marked(ctx)
    key = graph_settings.pseudonym_key.get_secret_value()
    shoppers = {pseudonymise(key, u) for u in users}
    # the round publishes its users only, once each; the items that keep them follow from the pending set
    assert res.first_published == res.published >= len(shoppers) and res.pending_added > 0
    deltas = [Delta.FromString(f[FIELD.encode()]) for _, f in client.xrange(ctx.stream, min=f"({start.decode()}")]
    assert len(deltas) == res.published
    head = deltas[: len(shoppers)]
    assert {d.id for d in head} == shoppers and all(d.node_type == NODE_TYPES[USER] for d in deltas)
    stored = subgraph.stored_vectors(driver, USER, shoppers)
    for d in head:
        assert np.array_equal(np.asarray(d.vector, np.float32), np.asarray(stored[d.id].vector, np.float32)), d.id
    assert sum(r.pending_items for r in hetero_recompute.drain(ctx)) > 0
    assert _worst(driver, hetero_recompute.full_vectors(ctx), version) <= 1e-4
    client.close()
    rt.close()
