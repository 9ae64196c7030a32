"""Users' ego vectors on the real Neo4j: trained with the served model, written by the roll-out and by the
incremental recompute's ego rounds after the user vectors, equal to a full recompute after random batches
(invariant 3)."""

from __future__ import annotations

import random

import numpy as np
import torch

from graphdb.ego import similar_users, stored_ego_vectors
from graphdb.ingest import ingest_events
from ml.encoders.ego_gin import EgoGIN, batch_ego_graphs, ego_batch, ego_graph
from tests.workers.test_incremental import _drain, _events, _meta, _runtime, _seed_history
from workers import jobs
from workers.recompute import full_vectors, recompute_ego

T0 = 1_700_000_000.0


def test_a_batch_embeds_each_user_as_alone(planted_split) -> None:
    split, _ = planted_split
    g = split.train
    r = g.interactions()
    items = [r.indices[r.indptr[u] : r.indptr[u + 1]] for u in range(g.num_users)]
    vecs = torch.randn(g.num_items, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = EgoGIN(8, 16, 16, 2).eval()
    with torch.no_grad():
        together = model(*ego_batch(items, vecs, g.item_category, g.item_brand))
        alone = model(*ego_batch(items[3:4], vecs, g.item_category, g.item_brand))
        per_user = model(*batch_ego_graphs([ego_graph(g, u, vecs) for u in range(g.num_users)]))
    assert torch.allclose(together[3], alone[0], atol=1e-5)
    assert torch.allclose(together, per_user, atol=1e-5)  # the same graphs as the one-user builder


def test_ego_vectors_follow_the_recompute_and_equal_a_full_one(graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    runtime = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, ego_steps=20)
    try:
        rng = random.Random(11)
        driver = runtime.driver
        first = _seed_history(rng)
        assert not ingest_events(driver, graph_settings, first).rejected
        trained = jobs.train_from_graph(runtime)
        version = trained["version"]
        jobs.rebuild_version(runtime, version)
        ctx = runtime.context(version)
        rolled = full_vectors(ctx)
        assert len(rolled.ego) == 30 and all(v is not None for v in rolled.ego.values())
        stored = stored_ego_vectors(driver, list(rolled.ego))
        assert {v for _, v in stored.values()} == {version}  # the roll-out wrote them with its version

        # random batches of events (new users and new items among them); each drained incrementally
        new_meta = {i: _meta(rng) for i in range(40, 55)}
        for batch in range(4):
            assert not ingest_events(
                driver, graph_settings, _events(rng, batch, 120, users=45, items=55, new_item_meta=new_meta)
            ).rejected
            _drain(ctx)
            recompute_ego(ctx, limit=10)  # one small ego round: the rest waits across the next batch
        while recompute_ego(ctx, limit=10).marks:
            pass
        full = full_vectors(ctx)
        with_items = {u: v for u, v in full.ego.items() if v is not None}
        assert len(with_items) >= 40
        stored = stored_ego_vectors(driver, list(full.ego))
        assert set(stored) == set(with_items)  # users left without items have none
        worst = max(float(np.max(np.abs(np.asarray(stored[u][0]) - v))) for u, v in with_items.items())
        assert worst <= 1e-4
        changed = [u for u in with_items if u in rolled.ego and not np.allclose(rolled.ego[u], with_items[u], atol=1e-4)]
        assert changed  # the batches moved some users' ego vectors, and the recompute followed
        mat = np.stack(list(with_items.values()))
        assert np.linalg.matrix_rank(mat) > 5  # users differ from one another
        # the search the server runs: the nearest by the stored vectors, best first
        user = next(iter(with_items))
        found = similar_users(driver, user, 5, version)
        ids = list(with_items)
        cos = mat @ with_items[user]
        want = [ids[j] for j in np.argsort(-cos) if ids[j] != user][:5]
        assert [f.pseudonym for f in found][:3] == want[:3]
    finally:
        runtime.close()
