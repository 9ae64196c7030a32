"""Partitioned recompute (`workers.partitions`) on the real Neo4j and Redis, and with 2 and 3 real Celery workers:
after random batches (hub items, new items, several concurrent writers) every stored vector equals a full
recompute, no mark is left, partitions ran at the same time, and a killed worker's partition comes back."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from graphdb import subgraph
from graphdb.changes import count_marks
from graphdb.errors import InvalidInput, Unavailable
from graphdb.ingest import ingest_events
from graphdb.marks import SLOTS, slot_of
from graphdb.model_state import active_model
from graphdb.schema import ITEM, QUERY, USER
from graphdb.settings import DataSettings
from graphdb.slots import partition_backlog, read_partition_marks, slots_of
from ml.settings import ModelSettings, TrainSettings
from workers import jobs, partitions, process
from workers.recompute import Context, full_vectors
from workers.settings import WorkerSettings

T0 = 1_700_000_000.0
TYPES = ["view", "click", "add_to_cart", "purchase", "rate", "return"]
WORDS = ["blue", "pen", "paper", "ream", "desk", "lamp", "stapler", "ink", "gel", "oak"]
HUBS = ("item-0", "item-1")  # most events land on these
ROUND = re.compile(rb"partition (\d+)/(\d+) round from ([\d.]+) to ([\d.]+): (\d+) marks")


def _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, parts: int, **worker) -> jobs.Runtime:
    ws = WorkerSettings(
        model_dir=tmp_path / "models", text_cache_dir=tmp_path / "text", redis_url=redis_url, partitions=parts, **worker
    )
    ms = ModelSettings(dim=graph_settings.embedding_dim, user_cap=6, select_filter=False, fold_users=3)
    return jobs.Runtime(neo4j_settings, graph_settings, ms, TrainSettings(max_epochs=0, threads=1), ws, DataSettings())


def _meta(rng: random.Random) -> dict:
    return {"title": " ".join(rng.sample(WORDS, 3)), "brand": rng.choice(["acme", "orbit"]), "categories": [["Office", "Pens"]]}


def _batch(rng: random.Random, tag: str, n: int, users: int, items: int, new_meta: dict[int, dict]) -> list[dict]:
    out = []
    for k in range(n):
        item = rng.choice(HUBS) if rng.random() < 0.3 else f"item-{rng.randrange(items)}"
        e: dict = {
            "event_id": f"{tag}-{k}",
            "user_id": f"user-{rng.randrange(users)}",
            "type": rng.choice(TYPES),
            "ts": T0 + rng.uniform(0, 86400),
            "item_id": item,
        }
        if e["type"] == "rate":
            e["rating"] = float(rng.randint(1, 5))
        num = int(item.split("-")[1])
        if num in new_meta and rng.random() < 0.5:
            e["item"] = new_meta[num]
        if rng.random() < 0.05:
            e = {
                "event_id": e["event_id"],
                "user_id": e["user_id"],
                "type": "search",
                "ts": e["ts"],
                "query": " ".join(rng.sample(WORDS, 2)),
            }
        out.append(e)
    return out


def _seed(rt: jobs.Runtime, graph_settings, users: int, items: int) -> str:
    rng = random.Random(11)
    history = [
        {
            "event_id": f"seed-{u}-{k}",
            "user_id": f"user-{u}",
            "type": "purchase",
            "ts": T0 - 86400 * rng.random(),
            "item_id": f"item-{rng.randrange(items)}",
            "item": {"title": " ".join(rng.sample(WORDS, 3))},
        }
        for u in range(users)
        for k in range(4)
    ]
    for s in range(0, len(history), 5000):
        assert not ingest_events(rt.driver, graph_settings, history[s : s + 5000]).rejected
    version = jobs.train_from_graph(rt)["version"]
    assert jobs.rebuild_version(rt, version)["active"] == version
    return str(version)


def _assert_equals_full(ctx: Context) -> None:
    full = full_vectors(ctx)
    worst = 0.0
    for label, vectors in full.vectors.items():
        stored = subgraph.stored_vectors(ctx.driver, label, vectors)
        assert set(stored) == set(vectors), label
        for node_id, vec in vectors.items():
            assert stored[node_id].version == ctx.encoder.version, (label, node_id)
            worst = max(worst, float(np.max(np.abs(np.asarray(stored[node_id].vector) - vec))))
    assert worst <= 1e-4


def test_every_node_gets_the_slot_of_its_id_and_partitions_split_the_slots(graph, graph_settings):
    ids = ["item-1", "item-Ωmega", "B00XYZ/9 ü", "x"]
    events = [{"event_id": f"e{k}", "user_id": "user-1", "type": "view", "ts": T0, "item_id": i} for k, i in enumerate(ids)]
    assert not ingest_events(graph, graph_settings, events).rejected
    stored = {r["id"]: r["slot"] for r in graph.execute_query("MATCH (n:Item) RETURN n.id AS id, n.slot AS slot").records}
    assert stored == {i: slot_of(i) for i in ids}
    for parts in (1, 2, 3, 7):
        owned = [s for p in range(parts) for s in slots_of(p, parts)]
        assert sorted(owned) == list(range(SLOTS))
    # each node's mark is read by exactly the partition of its slot
    marks = {p: {m.id for m in read_partition_marks(graph, p, 3)} for p in range(3)}
    for node_id in ids:
        assert [p for p in range(3) if node_id in marks[p]] == [slot_of(node_id) % 3]
    users = (marks[0] | marks[1] | marks[2]) - set(ids)
    assert sum(len(v) for v in marks.values()) == len(ids) + 1 and len(users) == 1
    assert sum(n for n, _ in partition_backlog(graph, 3).values()) == len(ids) + 1


def test_a_partition_outside_the_count_is_refused_with_what_was_wrong(redis_url):
    client = redis.Redis.from_url(redis_url)
    for bad in (3, -1):
        with pytest.raises(InvalidInput, match=rf"partition {bad} is not one of 0..2"):
            partitions.recompute(None, client, 3, 10, 5.0, bad)  # type: ignore[arg-type]  # refused before the context is used


def test_partition_rounds_in_any_order_equal_a_full_recompute(graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    """Three partitions drained round by round in a shuffled order, with small rounds, after batches written by
    three concurrent writers: the hand-offs carry every cross-partition effect, and the end state is the full one."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, parts=3)
    try:
        _seed(rt, graph_settings, users=30, items=20)
        ctx = rt.context(active_model(rt.driver).version)  # type: ignore[union-attr]
        rng = random.Random(3)
        new_meta = {i: _meta(rng) for i in range(20, 30)}
        handed = 0
        for b in range(4):
            batches = [_batch(rng, f"b{b}w{w}", 60, users=40, items=30, new_meta=new_meta) for w in range(3)]
            writers = [threading.Thread(target=ingest_events, args=(rt.driver, graph_settings, batch)) for batch in batches]
            for w in writers:
                w.start()
            for w in writers:
                w.join()
            while count_marks(rt.driver):
                order = rng.sample(range(3), 3)
                for p in order:
                    out = partitions.recompute(ctx, rt.redis, 3, 25, 30.0, p)
                    assert out["partitions"] == [p] and not out["skipped"]
                    handed += out["handed_off"]
        assert handed > 0  # cross-partition work happened, as marks
        assert count_marks(rt.driver) == 0
        _assert_equals_full(ctx)
    finally:
        rt.close()


def test_a_claimed_partition_is_skipped_and_a_rollout_waits_for_every_partition(
    graph, neo4j_settings, graph_settings, redis_url, tmp_path
):
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, parts=2, lock_timeout_s=5)
    try:
        _seed(rt, graph_settings, users=10, items=8)
        ctx = rt.context(active_model(rt.driver).version)  # type: ignore[union-attr]
        ingest_events(rt.driver, graph_settings, _batch(random.Random(1), "x", 40, users=10, items=8, new_meta={}))
        waiting = partition_backlog(rt.driver, 2)
        assert set(waiting) == {0, 1}
        with partitions.claim(rt.redis, 1, 2, 5.0) as held:
            assert held is not None
            out = partitions.recompute(ctx, rt.redis, 2, 1000, 5.0)
            assert out["partitions"] == [0] and out["skipped"] == [1]
            assert set(partition_backlog(rt.driver, 2)) == {1}  # partition 1's marks wait for their holder
            with pytest.raises(Unavailable):  # Unavailable: the roll-out cannot take 1
                with partitions.hold_all(rt.redis, 2, 5.0, wait_s=0.2):
                    pass
        out = partitions.recompute(ctx, rt.redis, 2, 1000, 5.0, 1)
        assert out["partitions"] == [1] and count_marks(rt.driver) == 0
        _assert_equals_full(ctx)
    finally:
        rt.close()


# ------------------------------------------------------------------------------------------------ real workers
def _env(stack, graph_settings, tmp_path, parts: int, **extra: str) -> dict[str, str]:
    env = process.worker_env(
        neo4j_uri=stack.neo4j_uri,
        redis_base=f"redis://127.0.0.1:{stack.settings.redis_port}",
        model_dir=tmp_path / "models",
        text_cache_dir=tmp_path / "text",
        graph=graph_settings,
        extra={
            "IG_TRAIN_THREADS": "1",
            "IG_MODEL_USER_CAP": "6",
            "IG_MODEL_SELECT_FILTER": "false",
            "IG_MODEL_FOLD_USERS": "3",
            "IG_WORKER_PARTITIONS": str(parts),
            "IG_WORKER_RECOMPUTE_INTERVAL_S": "0.3",
            **extra,
        },
    )
    for key in ("IG_WORKER_BROKER_URL", "IG_WORKER_RESULT_BACKEND"):
        redis.Redis.from_url(env[key]).flushdb()
    return env


def _rounds(logs: list[Path]) -> list[tuple[int, int, float, float, int]]:
    """(worker, partition, start, end, marks) of every round with marks, from the workers' logs."""
    out = []
    for w, log in enumerate(logs):
        for m in ROUND.finditer(log.read_bytes()):
            if int(m[5]):
                out.append((w, int(m[1]), float(m[3]), float(m[4]), int(m[5])))
    return out


def _scrape(log: Path, name: str) -> dict[str, float]:
    """partition label -> value of the metric ``name`` on the worker that wrote ``log``."""
    port = process.metrics_port(log)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {s.labels.get("partition", ""): s.value for m in text_string_to_metric_families(text) for s in m.samples if s.name == name}


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_recompute_partitions_concurrently_and_end_equal_to_full(
    workers, graph, stack, neo4j_settings, graph_settings, redis_url, tmp_path
):
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, parts=3)
    env = _env(stack, graph_settings, tmp_path, parts=3)
    procs, scheduler = [], None
    try:
        version = _seed(rt, graph_settings, users=600, items=60)
        rng = random.Random(workers)
        new_meta = {i: _meta(rng) for i in range(60, 80)}
        # a first wave before the scheduler starts: every partition has work when the tasks go out at once
        assert not ingest_events(rt.driver, graph_settings, _batch(rng, "wave", 3000, users=800, items=80, new_meta=new_meta)).rejected
        app = process.client_app(env)
        logs = [tmp_path / f"worker{w}.log" for w in range(workers)]
        procs = [process.start_worker(env, log) for log in logs]
        for p in procs:
            process.wait_for_worker(app, p)
        scheduler = process.start_scheduler(env, tmp_path / "scheduler.log")
        signal_list = redis.Redis.from_url(env["IG_WORKER_REDIS_URL"])

        def writer(w: int) -> None:
            wrng = random.Random(100 + w)
            for b in range(4):
                ingest_events(rt.driver, graph_settings, _batch(wrng, f"w{w}b{b}", 400, users=800, items=80, new_meta=new_meta))
                signal_list.lpush("ig:changed", b"1")  # what the server does after a write

        writers = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        _wait(lambda: count_marks(rt.driver) == 0, 300, "marks left after 300 s")

        assert _scrape(logs[0], "ig_worker_partition_marks_waiting") == {"0": 0, "1": 0, "2": 0}
        rounds = _rounds(logs)
        assert {p for _w, p, *_ in rounds} == {0, 1, 2}
        overlapping = [(a, b) for a in rounds for b in rounds if a[0] < b[0] and a[1] != b[1] and a[2] < b[3] and b[2] < a[3]]
        assert overlapping, f"no two partitions ran at once: {rounds}"
        # every task of worker 0 records its lock wait (after its result: wait for the last one to land)
        worked = len([r for r in rounds if r[0] == 0])
        _wait(
            lambda: _scrape(logs[0], "ig_worker_recompute_lock_wait_seconds_count").get("", 0) >= worked,
            30,
            "lock waits not recorded",
        )
        ctx = rt.context(version)
        _assert_equals_full(ctx)
        labels = {label: len(full) for label, full in full_vectors(ctx).vectors.items()}
        assert labels[USER] >= 600 and labels[ITEM] >= 60 and labels[QUERY] > 0  # the comparison covered them all
    finally:
        if scheduler is not None:
            process.stop(scheduler)
        for p in procs:
            process.stop(p)
        rt.close()


def test_a_worker_killed_holding_a_partition_gives_it_back_within_the_lock_timeout(
    graph, stack, neo4j_settings, graph_settings, redis_url, tmp_path
):
    lock_timeout = 6
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, parts=2, lock_timeout_s=lock_timeout)
    env = _env(stack, graph_settings, tmp_path, parts=2, IG_WORKER_LOCK_TIMEOUT_S=str(lock_timeout))
    try:
        version = _seed(rt, graph_settings, users=3000, items=50)
        rng = random.Random(9)
        assert not ingest_events(rt.driver, graph_settings, _batch(rng, "k", 6000, users=3000, items=60, new_meta={})).rejected
        before = partition_backlog(rt.driver, 2)
        app = process.client_app(env)
        first = process.start_worker(env, tmp_path / "worker1.log")
        process.wait_for_worker(app, first)
        app.send_task("interest.recompute", kwargs={"partition": 0})
        client = redis.Redis.from_url(redis_url)
        name = partitions.lock_name(0, 2)
        _wait(lambda: client.exists(name), 60, "the round never claimed partition 0")
        os.killpg(first.pid, signal.SIGKILL)  # dies holding partition 0, before it wrote anything
        first.wait()
        # Redis gives it back by itself within the timeout: the claim carries a TTL no longer than the timeout (or,
        # on a loaded machine, it has already expired: -2); never a claim without one (-1)
        ttl = client.pttl(name)
        assert ttl == -2 or 0 < ttl <= lock_timeout * 1000, ttl
        assert partition_backlog(rt.driver, 2)[0][0] == before[0][0]  # nothing was cleared
        assert b"round from" not in (tmp_path / "worker1.log").read_bytes()

        second = process.start_worker(env, tmp_path / "worker2.log")
        try:
            process.wait_for_worker(app, second)
            # the backlog per partition, as the new worker's metrics show it while nobody works on it
            waiting = _scrape(tmp_path / "worker2.log", "ig_worker_partition_marks_waiting")
            assert waiting == {"0": before[0][0], "1": before[1][0]}
            _wait(lambda: not client.exists(name), lock_timeout + 5, "the dead worker's claim never expired")
            # every mark the dead worker held is still there: one round that may take them all finds them all
            done = app.send_task("interest.recompute", kwargs={"partition": 0, "limit": 20000}).get(timeout=120)
            assert done["partitions"] == [0] and done["marks"] == before[0][0]
            while count_marks(rt.driver):  # partition 1 and the hand-offs
                app.send_task("interest.recompute").get(timeout=120)
        finally:
            process.stop(second)
        _assert_equals_full(rt.context(version))
    finally:
        rt.close()
