"""The queue path with real processes: a Celery worker (``--pool=solo``) and the scheduler, on the session's
Neo4j and Redis. Tasks go through the broker exactly as other services submit them."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from graphdb import localstack, subgraph
from graphdb.changes import count_marks
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from graphdb.schema import USER
from graphdb.settings import DataSettings, LocalStackSettings
from ml.settings import ModelSettings, TrainSettings
from proto.interest.v1 import interest_pb2 as pb
from workers import jobs, process
from workers.recompute import full_vectors, recompute_marked
from workers.settings import WorkerSettings

T0 = 1_700_000_000.0
DATASETS = DataSettings().dataset_dir("amazon-office").parent


def _env(stack, graph_settings, tmp_path, redis_port: int | None = None, **extra):
    return process.worker_env(
        neo4j_uri=stack.neo4j_uri,
        redis_base=f"redis://127.0.0.1:{redis_port or stack.settings.redis_port}",
        model_dir=tmp_path / "models",
        text_cache_dir=tmp_path / "text",
        graph=graph_settings,
        extra={
            "IG_TRAIN_MAX_EPOCHS": "0",
            "IG_TRAIN_THREADS": "1",
            "IG_DATASETS_DIR": str(DATASETS.resolve()),
            "IG_WORKER_RECOMPUTE_INTERVAL_S": "0.5",
            **extra,
        },
    )


def _flush_queues(env):
    for key in ("IG_WORKER_BROKER_URL", "IG_WORKER_RESULT_BACKEND"):
        redis.Redis.from_url(env[key]).flushdb()


def _seed(driver, graph_settings, users: int, per_user: int, items: int, tag: str, ts: float) -> int:
    events = [
        {
            "event_id": f"{tag}-{u}-{k}",
            "user_id": f"user-{u}",
            "type": "click",
            "ts": ts + k,
            "item_id": f"item-{(u * 7 + k * 13) % items}",
        }
        for u in range(users)
        for k in range(per_user)
    ]
    for s in range(0, len(events), 5000):
        assert not ingest_events(driver, graph_settings, events[s : s + 5000]).rejected
    return len(events)


@pytest.fixture
def worker(graph, stack, graph_settings, tmp_path):
    env = _env(stack, graph_settings, tmp_path)
    _flush_queues(env)
    app = process.client_app(env)
    proc = process.start_worker(env, tmp_path / "worker.log")
    try:
        process.wait_for_worker(app, proc)
        yield env, app, proc
    finally:
        process.stop(proc)


def test_tasks_and_scheduler_bring_an_event_to_neo4j_and_the_stream(worker, graph, graph_settings, tmp_path, redis_url):
    env, app, _proc = worker
    _seed(graph, graph_settings, users=40, per_user=4, items=25, tag="seed", ts=T0)
    trained = app.send_task("interest.train", kwargs={"epochs": 0}).get(timeout=120)
    assert trained["version"] and trained["users"] == 40 and trained["items"] == 25
    rebuilt = app.send_task("interest.rebuild", kwargs={"version": trained["version"]}).get(timeout=120)
    assert rebuilt["active"] == trained["version"] and rebuilt["written"] >= 65

    scheduler = process.start_scheduler(env, tmp_path / "scheduler.log")
    try:
        r = redis.Redis.from_url(redis_url)
        start_id = r.xrevrange(env.get("IG_WORKER_DELTA_STREAM", "ig:embeddings"), count=1)
        start_id = start_id[0][0] if start_id else b"0-0"
        acked = time.time()
        assert (
            ingest_events(
                graph,
                graph_settings,
                [{"event_id": "fresh-1", "user_id": "user-3", "type": "purchase", "ts": T0 + 500, "item_id": "item-9"}],
            ).accepted
            == 1
        )
        r.lpush("ig:changed", b"1")  # what the server does after a write
        pseudonym = pseudonymise(graph_settings.pseudonym_key.get_secret_value(), "user-3")
        _wait_fresh_vector(graph, r, "ig:embeddings", start_id, pseudonym, acked, trained["version"])
        deadline = time.monotonic() + 30
        while count_marks(graph) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert count_marks(graph) == 0
    finally:
        process.stop(scheduler)

    snap = app.send_task("interest.snapshot", kwargs={"out": str(tmp_path / "snap.npz")}).get(timeout=60)
    with np.load(snap["out"]) as z:
        assert len(z["ids"]) == snap["vectors"] == 65 and str(z["model_version"]) == trained["version"]
    assert snap["servers_asked"] is True
    bad = app.send_task("interest.backfill", kwargs={"dataset": "no-such-set"}).get(timeout=60)
    assert bad["error"] == "InvalidInput" and "no-such-set" in bad["message"]
    loaded = app.send_task("interest.backfill", kwargs={"dataset": "amazon-office", "limit": 300}).get(timeout=120)
    assert loaded["accepted"] == 300 and loaded["rejected"] == 0

    # the worker's Prometheus metrics saw exactly these tasks
    port = process.metrics_port(tmp_path / "worker.log")

    def scrape() -> dict:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in text_string_to_metric_families(text) for s in m.samples}

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    # Celery stores a task's result before its task_postrun signal (where the timing is recorded) fires: the
    # last task's observation may land a moment after its result reached us.
    deadline = time.monotonic() + 10
    samples = scrape()
    while value("ig_worker_task_seconds_count", task="interest.backfill", outcome="ok") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = scrape()

    assert value("ig_worker_task_seconds_count", task="interest.train", outcome="ok") == 1
    assert value("ig_worker_task_seconds_count", task="interest.rebuild", outcome="ok") == 1
    assert value("ig_worker_task_seconds_count", task="interest.snapshot", outcome="ok") == 1
    assert value("ig_worker_task_seconds_count", task="interest.backfill", outcome="error") == 1
    assert value("ig_worker_task_seconds_count", task="interest.backfill", outcome="ok") == 1
    assert value("ig_worker_task_seconds_count", task="interest.recompute", outcome="ok") >= 1
    assert value("ig_worker_queue_lag_seconds_count", task="interest.train") == 1
    assert value("ig_worker_recompute_nodes_total", kind="users") >= 1
    assert ("ig_worker_queue_depth", (("queue", "gpu"),)) in samples


def test_worker_killed_mid_recompute_the_task_comes_back_and_nothing_is_lost(
    graph, stack, graph_settings, neo4j_settings, tmp_path, redis_url
):
    env = _env(stack, graph_settings, tmp_path, IG_WORKER_VISIBILITY_TIMEOUT_S="10", IG_WORKER_LOCK_TIMEOUT_S="8")
    _flush_queues(env)
    ws = WorkerSettings(model_dir=tmp_path / "models", text_cache_dir=tmp_path / "text", redis_url=redis_url)
    rt = jobs.Runtime(
        neo4j_settings,
        graph_settings,
        ModelSettings(dim=graph_settings.embedding_dim),
        TrainSettings(max_epochs=0, threads=1),
        ws,
        DataSettings(),
    )
    try:
        _seed(graph, graph_settings, users=15000, per_user=1, items=400, tag="a", ts=T0)
        version = jobs.train_from_graph(rt)["version"]
        jobs.rebuild_version(rt, version)
        ctx = rt.context(version)
        while recompute_marked(ctx).marks:
            pass
        events = _seed(graph, graph_settings, users=15000, per_user=1, items=400, tag="b", ts=T0 + 3600)
        marks_before = count_marks(graph)
        assert marks_before > 15000

        app = process.client_app(env)
        first = process.start_worker(env, tmp_path / "worker1.log")
        process.wait_for_worker(app, first)
        task = app.send_task("interest.recompute", kwargs={"limit": 100000})
        lock = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 60
        while not lock.exists(jobs.LOCK_NAME) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert lock.exists(jobs.LOCK_NAME), "the recompute never started"
        # The lock is taken inside the task, before it computes anything: killed now, it dies mid-task.
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert count_marks(graph) == marks_before  # nothing was cleared: every change is still to do
        assert task.state != "SUCCESS"

        second = process.start_worker(env, tmp_path / "worker2.log")
        try:
            result = task.get(timeout=120)  # the same task, delivered again after the visibility timeout
        finally:
            process.stop(second)
        assert result["cleared"] == marks_before and result["users"] == 15000
        assert count_marks(graph) == 0
        # every vector is what a full recompute gives, and no event was applied twice
        full = full_vectors(ctx)
        stored = subgraph.stored_vectors(graph, USER, full.vectors[USER])
        diff = max(float(np.max(np.abs(np.asarray(stored[u].vector) - v))) for u, v in full.vectors[USER].items())
        assert diff <= 1e-4
        total = graph.execute_query("MATCH ()-[r:CLICKED]->() RETURN sum(r.count) AS n").records[0]["n"]
        assert total == 2 * events
    finally:
        rt.close()


def test_worker_killed_during_training_the_task_comes_back_and_saves_one_version(graph, stack, graph_settings, tmp_path):
    env = _env(stack, graph_settings, tmp_path, IG_WORKER_VISIBILITY_TIMEOUT_S="10")
    _flush_queues(env)
    _seed(graph, graph_settings, users=15000, per_user=2, items=3000, tag="t", ts=T0)
    app = process.client_app(env)
    first = process.start_worker(env, tmp_path / "worker1.log")
    process.wait_for_worker(app, first)
    task = app.send_task("interest.train", kwargs={"epochs": 0})
    deadline = time.monotonic() + 60
    while task.state not in ("PROGRESS", "SUCCESS") and time.monotonic() < deadline:  # PROGRESS: inside its work
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert task.state != "SUCCESS", "training finished before the kill: nothing was tested"

    second = process.start_worker(env, tmp_path / "worker2.log")
    try:
        result = task.get(timeout=180)
    finally:
        process.stop(second)
    version = f"spectral-sage-{task.id}"
    assert result["version"] == version and result["users"] == 15000
    models = tmp_path / "models"
    assert [d.name for d in models.iterdir() if d.is_dir()] == [version]  # one version, however many runs
    assert (models / "LATEST").read_text().strip() == version
    assert not list(models.rglob("*.tmp"))


def _wait_fresh_vector(
    graph, redis_client, stream: str, start_id, pseudonym: str, acked: float, version: str, timeout_s: float = 30.0
):
    """Until the user's vector in Neo4j is newer than ``acked``; then its delta must be on the stream too."""
    deadline = time.monotonic() + timeout_s
    stored = None
    while time.monotonic() < deadline:
        stored = subgraph.stored_vectors(graph, USER, [pseudonym])[pseudonym]
        if stored.updated_at and stored.updated_at >= acked:
            break
        time.sleep(0.1)
    assert stored.updated_at and stored.updated_at >= acked and stored.version == version
    deltas = [pb.EmbeddingDelta.FromString(f[b"d"]) for _, f in redis_client.xrange(stream, min=start_id)]
    mine = [d for d in deltas if d.id == pseudonym and d.op == pb.EmbeddingDelta.OP_UPSERT]
    assert mine and mine[-1].model_version == version
    assert np.allclose(np.asarray(mine[-1].vector), stored.vector, atol=1e-6)


def test_redis_restarted_under_worker_and_scheduler_an_event_still_gets_a_fresh_vector(graph, stack, graph_settings, tmp_path):
    """Redis (broker, result store, stream and signal list) stops and comes back on the same port and append-only
    file while a worker and the scheduler run: both reconnect, and the next event is recomputed and published."""
    own = LocalStackSettings(var_dir=tmp_path / "redis-stack", redis_port=localstack.free_port())
    service = localstack.start_redis(own)
    env = _env(stack, graph_settings, tmp_path, redis_port=own.redis_port)
    app = process.client_app(env)
    worker = process.start_worker(env, tmp_path / "worker.log")
    scheduler = None
    r = redis.Redis.from_url(env["IG_WORKER_REDIS_URL"])
    try:
        process.wait_for_worker(app, worker)
        _seed(graph, graph_settings, users=40, per_user=4, items=25, tag="seed", ts=T0)
        version = app.send_task("interest.train", kwargs={"epochs": 0}).get(timeout=120)["version"]
        assert app.send_task("interest.rebuild", kwargs={"version": version}).get(timeout=120)["active"] == version
        scheduler = process.start_scheduler(env, tmp_path / "scheduler.log")
        deadline = time.monotonic() + 30
        while count_marks(graph) and time.monotonic() < deadline:  # the seed's marks: recomputed first
            time.sleep(0.1)
        assert count_marks(graph) == 0

        def noticed() -> tuple[int, int]:  # what the worker and the scheduler log when Redis goes away
            worker_log, scheduler_log = (tmp_path / name for name in ("worker.log", "scheduler.log"))
            return (
                worker_log.read_text(errors="replace").count("Connection to broker lost"),
                scheduler_log.read_text(errors="replace").count("; retrying in"),
            )

        before = noticed()
        localstack.stop_service(service)
        deadline = time.monotonic() + 30
        while not all(now > then for now, then in zip(noticed(), before)):  # both saw it
            assert time.monotonic() < deadline, f"the outage was not noticed by both: {noticed()} after {before}"
            time.sleep(0.1)
        service = localstack.start_redis(own)
        assert worker.poll() is None and scheduler.poll() is None

        stream = "ig:embeddings"
        tail = r.xrevrange(stream, count=1)
        start_id = tail[0][0] if tail else b"0-0"
        acked = time.time()
        assert (
            ingest_events(
                graph,
                graph_settings,
                [{"event_id": "after-restart", "user_id": "user-3", "type": "purchase", "ts": T0 + 900, "item_id": "item-9"}],
            ).accepted
            == 1
        )
        r.lpush("ig:changed", b"1")  # what the server does after a write
        pseudonym = pseudonymise(graph_settings.pseudonym_key.get_secret_value(), "user-3")
        _wait_fresh_vector(graph, r, stream, start_id, pseudonym, acked, version)
        deadline = time.monotonic() + 30
        while count_marks(graph) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert count_marks(graph) == 0
        assert worker.poll() is None and scheduler.poll() is None
    finally:
        if scheduler is not None:
            process.stop(scheduler)
        process.stop(worker)
        r.close()
        localstack.stop_service(service)
