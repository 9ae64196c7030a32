"""IG_WORKER_RECOMPUTE_THREADS (issue 16): an incremental round runs torch on its own thread count, training keeps
its own, and what the round serves equals a full recompute made on the training's threads (invariant 3)."""

from __future__ import annotations

import random

import numpy as np
import torch

from graphdb import subgraph
from graphdb.changes import count_marks
from graphdb.ego import stored_ego_vectors
from graphdb.ingest import ingest_events
from graphdb.schema import USER
from graphdb.settings import DataSettings
from ml.runtime import threads
from ml.settings import ModelSettings, TrainSettings
from tests.workers.test_incremental import _events, _meta, _seed_history
from workers import jobs
from workers.recompute import full_vectors
from workers.settings import WorkerSettings


def test_threads_sets_the_count_inside_the_block_and_restores_it_after() -> None:
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with threads(0):  # 0: torch's own count, untouched
        assert torch.get_num_threads() == before


def test_a_one_thread_round_serves_what_a_two_thread_full_recompute_computes(
    graph, neo4j_settings, graph_settings, redis_url, tmp_path
) -> None:
    ws = WorkerSettings(
        model_dir=tmp_path / "models", text_cache_dir=tmp_path / "text", redis_url=redis_url, lock_timeout_s=30, recompute_threads=1
    )
    ms = ModelSettings(dim=graph_settings.embedding_dim, user_cap=6, recency_boost=10.0, select_filter=False, ego_steps=20)
    rt = jobs.Runtime(neo4j_settings, graph_settings, ms, TrainSettings(max_epochs=0, threads=2), ws, DataSettings())
    try:
        rng = random.Random(5)
        driver = rt.driver
        assert not ingest_events(driver, graph_settings, _seed_history(rng)).rejected
        version = jobs.train_from_graph(rt)["version"]  # training sets its own 2 threads
        jobs.rebuild_version(rt, version)
        assert torch.get_num_threads() == 2
        new_meta = {i: _meta(rng) for i in range(40, 55)}
        assert not ingest_events(driver, graph_settings, _events(rng, 0, 150, users=45, items=55, new_item_meta=new_meta)).rejected
        rounds = []
        while True:
            out = jobs.recompute(rt, limit=60)
            rounds.append(out)
            if out["marks"] == 0:
                break
        assert len(rounds) > 2 and all(r["threads"] == 1 for r in rounds)
        assert torch.get_num_threads() == 2 and count_marks(driver) == 0  # restored after each round

        with threads(2):
            full = full_vectors(rt.context(version))
        users = full.vectors[USER]
        stored = subgraph.stored_vectors(driver, USER, list(users))
        assert set(stored) == set(users) and len(users) > 30
        worst = max(float(np.max(np.abs(np.asarray(stored[u].vector) - v))) for u, v in users.items())
        assert worst <= 1e-5
        egos = {u: v for u, v in full.ego.items() if v is not None}
        stored_ego = stored_ego_vectors(driver, list(egos))
        assert egos and set(stored_ego) == set(egos)
        assert max(float(np.max(np.abs(np.asarray(stored_ego[u][0]) - v))) for u, v in egos.items()) <= 1e-5
    finally:
        rt.close()
