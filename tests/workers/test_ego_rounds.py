"""Ego vectors (SimilarUsers) in rounds of their own (issue 16): a user round writes the user vectors and marks
their ego vectors as due; ego rounds compute them later with a compare-and-clear of their own marks, run only
while no recompute is queued, and leave the stored ego vectors equal to a full recompute once the marks drain."""

from __future__ import annotations

import random

import numpy as np

from graphdb.changes import count_marks
from graphdb.ego import commit_ego, count_ego_marks, read_ego_marks, stored_ego_vectors
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from tests.workers.test_incremental import T0, _events, _meta, _runtime, _seed_history
from workers import jobs
from workers.recompute import full_vectors, recompute_ego, recompute_marked
from workers.redis_keys import queued_key


def _assert_equal_to_full(driver, ctx) -> None:
    full = full_vectors(ctx)
    with_items = {u: v for u, v in full.ego.items() if v is not None}
    stored = stored_ego_vectors(driver, list(full.ego))
    assert set(stored) == set(with_items)  # users left without items have none
    assert {v for _, v in stored.values()} == {ctx.encoder.version}
    worst = max(float(np.max(np.abs(np.asarray(stored[u][0]) - v))) for u, v in with_items.items())
    assert worst <= 1e-4


def test_ego_vectors_follow_in_their_own_rounds_and_equal_a_full_one(graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    runtime = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, ego_steps=20)
    try:
        rng = random.Random(5)
        driver = runtime.driver
        assert not ingest_events(driver, graph_settings, _seed_history(rng)).rejected
        version = jobs.train_from_graph(runtime)["version"]
        jobs.rebuild_version(runtime, version)
        ctx = runtime.context(version)
        users = list(full_vectors(ctx).ego)
        rolled = stored_ego_vectors(driver, users)
        assert len(rolled) == 30 and count_ego_marks(driver) == 0

        # a user round: user vectors written, no ego vector computed or written, one ego mark per user written
        new_meta = {i: _meta(rng) for i in range(40, 50)}
        assert not ingest_events(driver, graph_settings, _events(rng, 0, 90, users=36, items=50, new_item_meta=new_meta)).rejected
        res = recompute_marked(ctx)
        assert res.users > 0 and "ego_forward" not in res.steps
        assert count_marks(driver) == 0
        marks = read_ego_marks(driver, limit=1000)
        assert len(marks) == res.users
        assert stored_ego_vectors(driver, users) == rolled  # untouched until an ego round

        # a change landing during an ego round: its user is recomputed (a new ego token) before the ego round
        # commits what it computed from the older graph; that user's vector is not written and the mark stays
        key = graph_settings.pseudonym_key.get_secret_value()
        external = {pseudonymise(key, f"user-{k}"): f"user-{k}" for k in range(36)}
        late = marks[0].id
        computed = full_vectors(ctx).ego  # what an ego round reading the graph now computes
        later = {"event_id": "late-0", "user_id": external[late], "type": "purchase", "ts": T0 + 9000, "item_id": "item-3"}
        assert not ingest_events(driver, graph_settings, [later]).rejected
        recompute_marked(ctx)
        vectors = {m.id: computed[m.id] for m in marks}
        # a round of another version (one that commits after a roll-out wrote the new user vectors) writes nothing
        assert commit_ego(driver, marks, vectors, "another-version").stale == len(marks)
        counts = commit_ego(driver, marks, vectors, version)
        assert counts.stale == 1 and counts.written + counts.removed == len(marks) - 1
        assert late in {m.id for m in read_ego_marks(driver, limit=1000)}
        assert stored_ego_vectors(driver, [late]).get(late) == rolled.get(late)

        # the ego rounds drain the marks, and the stored ego vectors equal a full recompute
        rounds = 0
        while recompute_ego(ctx, limit=7).marks:
            rounds += 1
        assert rounds >= 1 and count_ego_marks(driver) == 0
        _assert_equal_to_full(driver, ctx)

        # the task: with a recompute queued, its ego rounds wait (user rounds first); without, they drain
        assert not ingest_events(driver, graph_settings, _events(rng, 2, 60, users=36, items=50, new_item_meta=new_meta)).rejected
        flag = queued_key(runtime.worker.changed_key)
        runtime.redis.set(flag, b"1")
        try:
            out = jobs.recompute(runtime)
        finally:
            runtime.redis.delete(flag)
        assert out["users"] > 0 and out["ego"]["rounds"] == 0 and count_ego_marks(driver) == out["users"]
        out = jobs.recompute(runtime)
        assert out["marks"] == 0 and out["ego"]["written"] > 0 and count_ego_marks(driver) == 0
        _assert_equal_to_full(driver, ctx)
    finally:
        runtime.close()
