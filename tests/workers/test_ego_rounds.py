"""Ego vectors (SimilarUsers) in rounds of their own (issue 16): a user round writes the user vectors and marks
their ego vectors as due; ego rounds compute them later with a compare-and-clear of their own marks, run only
while no recompute is queued, and leave the stored ego vectors equal to a full recompute once the marks drain.
One ego round at a time per partition across workers (issue 18): each mark is computed once, and a partition
whose ego lock another holds is skipped, its marks left for the holder, the scheduler's next task, or after a
dead holder's lock expires."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import redis
import torch
from threadpoolctl import threadpool_info

from graphdb.changes import count_marks
from graphdb.ego import commit_ego, count_ego_marks, read_ego_marks, stored_ego_vectors
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from ml.runtime import set_threads
from tests.workers.test_incremental import T0, _events, _meta, _runtime, _seed_history
from workers import jobs, process
from workers.recompute import Context, full_vectors, recompute_ego, recompute_marked
from workers.redis_keys import ego_lock, queued_key
from workers.scheduler import Scheduler


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
        set_threads(2)  # as a training task in this process would have left them
        out = jobs.recompute(runtime)
        assert out["marks"] == 0 and out["ego"]["written"] > 0 and count_ego_marks(driver) == 0
        _assert_equal_to_full(driver, ctx)
        # the rounds ran at IG_WORKER_RECOMPUTE_THREADS (torch's and BLAS's pools), not at the threads a training
        # left: workers sharing a machine's cores do not oversubscribe them (issue 18)
        assert runtime.worker.recompute_threads == 1
        blas = {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
        assert torch.get_num_threads() == 1 and blas == {1}
    finally:
        set_threads(runtime.train.threads)
        runtime.close()


# ------------------------------------------------------------------------------------------------ across workers
def _worker(neo4j_settings, graph_settings, redis_url, tmp_path, **worker) -> jobs.Runtime:
    """A worker process's runtime (its own Neo4j driver and Redis client), the model dir shared."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, ego_steps=20)
    rt.worker = rt.worker.model_copy(update=worker)
    return rt


def _ego_marks_waiting(rt: jobs.Runtime, graph_settings) -> tuple[Context, int]:
    """A served version with ego vectors, and a user round's ego marks waiting (how many)."""
    rng = random.Random(8)
    assert not ingest_events(rt.driver, graph_settings, _seed_history(rng)).rejected
    version = jobs.train_from_graph(rt)["version"]
    jobs.rebuild_version(rt, version)
    ctx = rt.context(version)
    assert not ingest_events(rt.driver, graph_settings, _events(rng, 0, 90, users=36, items=50, new_item_meta={})).rejected
    users = recompute_marked(ctx).users
    assert users > 8 and count_ego_marks(rt.driver) == users
    return ctx, users


@pytest.mark.parametrize("parts", [1, 2])
def test_two_workers_ego_rounds_at_once_compute_each_mark_once(parts, graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    kw = {"partitions": parts, "ego_batch": 3}  # many small rounds, so the two workers' rounds overlap in time
    workers = [_worker(neo4j_settings, graph_settings, redis_url, tmp_path, **kw) for _ in range(2)]
    try:
        ctx, waiting = _ego_marks_waiting(workers[0], graph_settings)
        start = threading.Barrier(2)
        outs: list[dict] = [{}, {}]

        def work(k: int) -> None:
            start.wait()
            outs[k] = jobs.ego_rounds(workers[k], ctx.encoder.version)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # every mark read once, by one worker: none computed twice (the second commit of a mark would be stale)
        assert sum(o["marks"] for o in outs) == waiting and sum(o["stale"] for o in outs) == 0
        assert count_ego_marks(ctx.driver) == 0
        _assert_equal_to_full(ctx.driver, ctx)
    finally:
        for rt in workers:
            rt.close()


def test_a_held_ego_lock_is_skipped_and_the_marks_drain_once_a_dead_holders_lock_expires(
    graph, neo4j_settings, graph_settings, redis_url, tmp_path
):
    rt = _worker(neo4j_settings, graph_settings, redis_url, tmp_path)
    broker = redis_url.rsplit("/", 1)[0] + "/1"
    holder = redis.Redis.from_url(redis_url)
    try:
        ctx, waiting = _ego_marks_waiting(rt, graph_settings)
        # a worker killed during its ego rounds: its lock stays until its timeout, and nobody releases it
        dead = holder.lock(ego_lock(0, 1), timeout=3)
        assert dead.acquire(blocking=False)
        out = jobs.ego_rounds(rt, ctx.encoder.version)
        assert out["rounds"] == 0 and out["skipped"] == [0] and count_ego_marks(rt.driver) == waiting

        # the scheduler still queues a recompute while only ego marks wait, whoever holds their lock
        ws = rt.worker.model_copy(update={"broker_url": broker})
        redis.Redis.from_url(broker).flushdb()
        sched = Scheduler(process.client_app({"IG_WORKER_BROKER_URL": broker, "IG_WORKER_RESULT_BACKEND": broker}), rt.driver, ws)
        try:
            rt.redis.lpush(ws.changed_key, b"1")  # a signal, so the tick does not wait out its poll
            assert sched.tick(1.0) and redis.Redis.from_url(broker).llen("gpu") == 1
        finally:
            sched.redis.close()
            rt.redis.delete(queued_key(ws.changed_key))
            redis.Redis.from_url(broker).flushdb()

        deadline = time.monotonic() + 30
        while holder.exists(ego_lock(0, 1)):  # Redis gives the dead holder's lock back by itself
            assert time.monotonic() < deadline, "the dead holder's ego lock never expired"
            time.sleep(0.1)
        out = jobs.ego_rounds(rt, ctx.encoder.version)
        assert out["skipped"] == [] and out["marks"] == waiting and count_ego_marks(rt.driver) == 0
        _assert_equal_to_full(rt.driver, ctx)
    finally:
        holder.delete(ego_lock(0, 1))
        holder.close()
        rt.close()
