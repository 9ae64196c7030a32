"""The backlog a partitioned worker exports (issue 18 item 2), on the real Neo4j, Redis and a real Celery worker with
``IG_WORKER_PARTITIONS=2``: the per-partition marks waiting and oldest mark age equal what Neo4j holds, they
follow a round that drains one partition and not the other, and the round's lock wait and phase seconds (the
publish share that bench.freshness splits the worker's CPU by) are exported with the values the task returned."""

from __future__ import annotations

import random
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from graphdb.changes import backlog, count_marks
from graphdb.ingest import ingest_events
from graphdb.slots import partition_backlog
from tests.workers.test_partitions import _batch, _env, _runtime, _seed
from workers import process


def _samples(log: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = process.metrics_port(log)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in text_string_to_metric_families(text) for s in m.samples}


def _per_partition(samples: dict, name: str) -> dict[str, float]:
    return {dict(labels)["partition"]: v for (n, labels), v in samples.items() if n == name}


def test_partition_backlog_lock_wait_and_phase_seconds_are_exported_with_their_values(
    graph, stack, neo4j_settings, graph_settings, redis_url, tmp_path
):
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, parts=2)
    env = _env(stack, graph_settings, tmp_path, parts=2)
    worker = None
    try:
        _seed(rt, graph_settings, users=300, items=30)
        assert count_marks(rt.driver) == 0
        rng = random.Random(3)
        assert not ingest_events(rt.driver, graph_settings, _batch(rng, "gauge", 500, users=300, items=30, new_meta={})).rejected
        app = process.client_app(env)
        log = tmp_path / "worker.log"
        worker = process.start_worker(env, log)
        process.wait_for_worker(app, worker)

        held = partition_backlog(rt.driver, 2)
        assert set(held) == {0, 1}  # both partitions have work
        before = time.time()
        samples = _samples(log)
        after = time.time()
        waiting = _per_partition(samples, "ig_worker_partition_marks_waiting")
        ages = _per_partition(samples, "ig_worker_partition_oldest_mark_age_seconds")
        assert waiting == {"0": held[0][0], "1": held[1][0]}
        assert samples[("ig_worker_marks_waiting", ())] == held[0][0] + held[1][0] == count_marks(rt.driver)
        for p in (0, 1):
            oldest = held[p][1]
            assert oldest is not None and before - oldest <= ages[str(p)] <= after - oldest
        total_oldest = backlog(rt.driver)[1]
        assert total_oldest is not None and samples[("ig_worker_oldest_mark_age_seconds", ())] >= before - total_oldest

        # one round on partition 0: its gauges follow it, partition 1's stay
        done = app.send_task("interest.recompute", kwargs={"partition": 0, "limit": 20000}).get(timeout=120)  # all of it
        assert done["partitions"] == [0] and done["marks"] == held[0][0] and done["publish_s"] > 0
        now = partition_backlog(rt.driver, 2)
        samples = _samples(log)
        waiting = _per_partition(samples, "ig_worker_partition_marks_waiting")
        assert waiting["0"] == now.get(0, (0, None))[0] == 0
        assert waiting["1"] == now[1][0] >= held[1][0]
        assert _per_partition(samples, "ig_worker_partition_oldest_mark_age_seconds")["0"] == 0

        # the round's lock wait and its phase seconds, as the task returned them
        assert samples[("ig_worker_recompute_lock_wait_seconds_count", ())] == 1
        assert abs(samples[("ig_worker_recompute_lock_wait_seconds_sum", ())] - done["lock_wait_s"]) < 1e-6
        phases = {dict(labels)["phase"]: v for (n, labels), v in samples.items() if n == "ig_worker_recompute_phase_seconds_total"}
        for phase in ("pull", "forward", "write", "publish"):
            assert abs(phases[phase] - done[f"{phase}_s"]) < 1e-3, (phase, phases, done)
        assert 0 < phases["publish"] <= phases["write"]
    finally:
        if worker is not None:
            process.stop(worker)
        rt.close()
