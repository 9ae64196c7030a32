"""Prometheus metrics of a worker process: task durations and outcomes, queue lag and depth, recompute work.

Hooked on Celery's signals, served on ``IG_WORKER_METRICS_PORT`` (0 = any free port; the port is logged) by a
thread of the worker process. One registry per process: a ``--pool=solo`` worker (the GPU queue's mode) runs its
tasks in the process that serves the metrics. Queue lag is the time from a task's publication (a header stamped
by whoever sends it) to its start; queue depth is read from the broker when Prometheus scrapes.

    ig_worker_task_seconds{task, outcome}        histogram of task run times
    ig_worker_queue_lag_seconds{task}            histogram of publish -> start
    ig_worker_queue_depth{queue}                 messages waiting (read at scrape)
    ig_worker_recompute_nodes_total{kind}        marks read, users/items/queries written, deltas published
    ig_worker_recompute_last_timestamp_seconds   when the last recompute finished
    ig_worker_marks_waiting                      changed nodes waiting for a recompute (Neo4j, at scrape)
    ig_worker_oldest_mark_age_seconds            age of the oldest of them (0 when none waits)
    ig_worker_partition_marks_waiting{partition}          the same per partition (IG_WORKER_PARTITIONS > 1)
    ig_worker_partition_oldest_mark_age_seconds{partition}
    ig_worker_recompute_lock_wait_seconds        histogram of the time a recompute task spent taking its locks
    ig_worker_recompute_phase_seconds_total{phase}   seconds of recompute rounds in pull/forward/write (publish: of write)
"""

from __future__ import annotations

import time
from typing import Iterator

import neo4j
import redis
from celery import signals
from celery.utils.log import get_logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from graphdb.changes import backlog
from graphdb.slots import partition_backlog
from workers.redis_connect import connect

log = get_logger(__name__)  # under Celery's logger: the worker log shows it

SENT_AT = "ig_sent_at"
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class _QueueDepth:
    def __init__(self, broker_url: str, queues: tuple[str, ...], sentinel_master: str = "") -> None:
        self.client = connect(broker_url, sentinel_master=sentinel_master, socket_timeout=2, socket_connect_timeout=2)
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("ig_worker_queue_depth", "Tasks waiting in a queue", labels=["queue"])
        for q in self.queues:
            try:
                g.add_metric([q], float(self.client.llen(q)))
            except redis.RedisError:  # broker away: report nothing rather than a wrong zero
                continue
        yield g


class _Backlog:
    """The recompute backlog, read from Neo4j when Prometheus scrapes: the marks live there, not in the queue,
    so a backlog whose worker or scheduler is down still shows (from any other worker)."""

    def __init__(self, driver: neo4j.Driver, database: str, partitions: int = 1) -> None:
        self.driver, self.database, self.partitions = driver, database, partitions

    def collect(self) -> Iterator[Metric]:
        try:
            waiting, oldest = backlog(self.driver, database=self.database)
        except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError) as exc:  # Neo4j away: no wrong zero
            log.warning("backlog not read: %s", exc)
            return
        yield GaugeMetricFamily("ig_worker_marks_waiting", "Changed nodes waiting for a recompute", value=float(waiting))
        age = max(0.0, time.time() - oldest) if oldest is not None else 0.0
        yield GaugeMetricFamily("ig_worker_oldest_mark_age_seconds", "Age of the oldest waiting change mark", value=age)
        if self.partitions > 1:
            yield from self._partitions()

    def _partitions(self) -> Iterator[Metric]:
        try:
            parts = partition_backlog(self.driver, self.partitions, database=self.database)
        except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError) as exc:
            log.warning("partition backlog not read: %s", exc)
            return
        waiting = GaugeMetricFamily("ig_worker_partition_marks_waiting", "Marks waiting per partition", labels=["partition"])
        oldest = GaugeMetricFamily(
            "ig_worker_partition_oldest_mark_age_seconds", "Age of a partition's oldest mark", labels=["partition"]
        )
        now = time.time()
        for p in range(self.partitions):
            n, since = parts.get(p, (0, None))
            waiting.add_metric([str(p)], float(n))
            oldest.add_metric([str(p)], max(0.0, now - since) if since is not None else 0.0)
        yield waiting
        yield oldest


class WorkerMetrics:
    def __init__(
        self,
        broker_url: str,
        queues: tuple[str, ...] = ("gpu", "cpu"),
        driver: neo4j.Driver | None = None,
        database: str = "neo4j",
        partitions: int = 1,
        sentinel_master: str = "",
    ) -> None:
        self.registry = CollectorRegistry()
        self.task_seconds = Histogram(
            "ig_worker_task_seconds", "Task run time", ["task", "outcome"], buckets=BUCKETS, registry=self.registry
        )
        self.queue_lag = Histogram(
            "ig_worker_queue_lag_seconds", "From publication to start", ["task"], buckets=BUCKETS, registry=self.registry
        )
        self.recompute_nodes = Counter("ig_worker_recompute_nodes", "Recompute work", ["kind"], registry=self.registry)
        self.lock_wait = Histogram(
            "ig_worker_recompute_lock_wait_seconds", "Time a recompute spent taking its locks", buckets=BUCKETS, registry=self.registry
        )
        # wall seconds per phase of the recompute rounds (publish is part of write): what a round's time goes to
        self.recompute_seconds = Counter(
            "ig_worker_recompute_phase_seconds", "Recompute time by phase", ["phase"], registry=self.registry
        )
        self.recompute_last = Gauge("ig_worker_recompute_last_timestamp_seconds", "Last recompute finished", registry=self.registry)
        self.registry.register(_QueueDepth(broker_url, queues, sentinel_master))
        if driver is not None:
            self.registry.register(_Backlog(driver, database, partitions))
        self._started: dict[str, float] = {}
        self.port: int | None = None

    def start_http(self, host: str, port: int) -> int:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = server.server_port
        log.info("worker metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    # ---------------------------------------------------------------- signal handlers
    def prerun(self, task_id: str, task, **_kw) -> None:
        self._started[task_id] = time.monotonic()
        sent = getattr(task.request, SENT_AT, None)
        if isinstance(sent, (int, float)):
            self.queue_lag.labels(task.name).observe(max(0.0, time.time() - sent))

    def postrun(self, task_id: str, task, retval=None, state: str | None = None, **_kw) -> None:
        started = self._started.pop(task_id, None)
        failed = state != "SUCCESS" or (isinstance(retval, dict) and "error" in retval)
        if started is not None:
            self.task_seconds.labels(task.name, "error" if failed else "ok").observe(time.monotonic() - started)
        if task.name == "interest.recompute" and isinstance(retval, dict) and "marks" in retval and not failed:
            for kind in ("marks", "users", "items", "queries", "published", "cleared"):
                self.recompute_nodes.labels(kind).inc(retval.get(kind, 0))
            self.recompute_last.set(time.time())
            if isinstance(retval.get("lock_wait_s"), (int, float)):
                self.lock_wait.observe(retval["lock_wait_s"])
            for phase in ("pull", "forward", "write", "publish"):
                self.recompute_seconds.labels(phase).inc(max(0.0, float(retval.get(f"{phase}_s", 0.0))))

    def connect(self) -> None:
        signals.task_prerun.connect(self.prerun, weak=False)
        signals.task_postrun.connect(self.postrun, weak=False)


def stamp_sent_at(headers: dict | None = None, **_kw) -> None:
    """``before_task_publish``: stamp the publication time so the worker can measure queue lag."""
    if headers is not None:
        headers.setdefault(SENT_AT, time.time())
