"""The recompute trigger: wakes on an ingestion signal or every ``IG_WORKER_RECOMPUTE_INTERVAL_S``, and queues
one ``interest.recompute`` when marks are waiting (change marks, or ego marks: the users whose ego vectors are due,
which the task's ego rounds take after its user round, `workers.jobs.ego_rounds`).

Ingestion (the gRPC server) pushes onto the list ``IG_WORKER_CHANGED_KEY`` after a write; the scheduler pops it
(``BLPOP``), waits ``IG_WORKER_DEBOUNCE_S`` so a burst lands in one recompute, and sends the task unless one
is already queued (a Redis key the task deletes when it starts). At most one recompute is queued and one runs;
loaders and other writers need no signal, the periodic poll finds their marks. A K-layer encoder's pending set
(`workers.hetero_recompute.PendingSet`) counts as waiting marks. With ``IG_WORKER_PARTITIONS`` > 1
the same holds per partition (`workers.partitions`): one task per partition with marks, at most one queued each,
so the queue is bounded by the partition count however far the marks run ahead.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import kombu.exceptions
import neo4j
import redis
from celery import Celery

from graphdb.changes import count_marks
from graphdb.ego import count_ego_marks
from graphdb.slots import partition_backlog
from workers.redis_connect import connect
from workers.redis_keys import HETERO_PENDING, queued_key
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, app: Celery, driver: neo4j.Driver, ws: WorkerSettings, *, database: str = "neo4j") -> None:
        self.app, self.driver, self.ws, self.database = app, driver, ws, database
        self.redis = connect(
            ws.redis_url,
            sentinel_master=ws.redis_sentinel_master,
            cluster=ws.redis_cluster,
            socket_timeout=ws.recompute_interval_s + 10,
            socket_connect_timeout=5,
        )
        self.stop = threading.Event()
        self.sent = 0

    def tick(self, wait_s: float) -> bool:
        """One round: wait for a signal (at most ``wait_s``), then queue a recompute if needed. True if sent."""
        signalled = self.redis.blpop([self.ws.changed_key], timeout=wait_s) is not None
        if signalled and self.ws.debounce_s:
            time.sleep(self.ws.debounce_s)
        if self.ws.partitions > 1:
            waiting = sorted(partition_backlog(self.driver, self.ws.partitions, database=self.database))
            if not waiting and self.redis.zcard(HETERO_PENDING):
                waiting = [0]  # a K-layer encoder's task takes the single lock, whatever its partition
            if waiting:
                return sum(self._send(p) for p in waiting) > 0
        elif count_marks(self.driver, database=self.database) or self.redis.zcard(HETERO_PENDING):
            return self._send(None)
        # only ego marks wait (if any): a recompute without a partition runs its ego rounds
        return count_ego_marks(self.driver, database=self.database) > 0 and self._send(None)

    def _send(self, partition: int | None) -> bool:
        key = queued_key(self.ws.changed_key, partition)
        ttl = max(int(self.ws.lock_timeout_s * 2), 1)
        if not self.redis.set(key, b"1", nx=True, ex=ttl):
            return False  # one is queued already; it will see these marks too
        try:
            self.app.send_task("interest.recompute", kwargs={} if partition is None else {"partition": partition})
        except kombu.exceptions.OperationalError:
            # The broker went away between the flag and the send: drop the flag (if Redis is back) so the
            # next round sends, instead of waiting out its expiry with marks pending.
            with contextlib.suppress(redis.exceptions.RedisError):
                self.redis.delete(key)
            raise
        self.sent += 1
        return True

    def run(self) -> None:
        log.info("recompute scheduler ready: interval %.2fs, debounce %.2fs", self.ws.recompute_interval_s, self.ws.debounce_s)
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self.tick(self.ws.recompute_interval_s)
                backoff = 0.5
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                kombu.exceptions.OperationalError,
                neo4j.exceptions.ServiceUnavailable,
                neo4j.exceptions.SessionExpired,
            ) as exc:
                log.warning("scheduler: %s; retrying in %.1fs", exc, backoff)  # a service restarts: wait
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


def main() -> None:
    """``python -m workers.scheduler`` (or ``interest worker scheduler``): settings from the environment."""
    import signal

    from graphdb.driver import connect
    from graphdb.settings import Neo4jSettings
    from workers.celery_app import app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ns = Neo4jSettings()
    sched = Scheduler(app, connect(ns), WorkerSettings(), database=ns.database)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sched.stop.set())
    sched.run()


if __name__ == "__main__":
    main()
