"""The Celery application: Redis broker, two queues, delivery that survives a killed worker.

Queues: ``gpu`` (recompute, rebuild, train: the embedding work; one ``--pool=solo`` worker per GPU, or per
machine on CPU) and ``cpu`` (backfill, snapshot: maintenance). Tasks are acknowledged after they finish
(``acks_late``) and given back when their worker dies (``task_reject_on_worker_lost``); Redis delivers an
unacknowledged task again after the visibility timeout, so it must exceed the longest task. Prefetch 1: a
long task never holds others hostage on the same worker.

Start a worker:  ``celery -A workers.celery_app worker -Q gpu,cpu --pool=solo``  (or ``interest worker run``).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import before_task_publish, worker_process_init, worker_process_shutdown, worker_ready
from celery.utils.log import get_logger

from graphdb.driver import connect
from graphdb.settings import Neo4jSettings
from workers.prometheus_metrics import WorkerMetrics, stamp_sent_at
from workers.redis_connect import broker_transport_options
from workers.settings import WorkerSettings

TASK_QUEUES = {
    "interest.recompute": "gpu",
    "interest.rebuild": "gpu",
    "interest.train": "gpu",
    "interest.retrain": "gpu",
    "interest.backfill": "cpu",
    "interest.snapshot": "cpu",
}


def make_app(ws: WorkerSettings) -> Celery:
    app = Celery("interest", broker=ws.broker_url, backend=ws.result_backend, include=["workers.tasks"])
    # Sweep for abandoned (unacknowledged) tasks often enough that one comes back soon after its timeout.
    transport = {
        "visibility_timeout": ws.visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, int(ws.visibility_timeout_s // 4))),
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # a Sentinel broker or result store also needs the primary's name (workers.redis_connect)
        broker_transport_options=transport | broker_transport_options(ws.broker_url, ws.redis_sentinel_master),
        result_backend_transport_options=transport | broker_transport_options(ws.result_backend, ws.redis_sentinel_master),
        broker_connection_retry_on_startup=True,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_default_queue="cpu",
        task_track_started=True,
        result_extended=True,
        result_expires=7 * 86400,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    if ws.retrain_period_s > 0:  # run by `celery -A workers.celery_app beat` (one per deployment)
        app.conf.beat_schedule = {"retrain": {"task": "interest.retrain", "schedule": ws.retrain_period_s}}
    return app


# The worker program reads its settings here, once (the Celery entry point is this module).
settings = WorkerSettings()
app = make_app(settings)
before_task_publish.connect(stamp_sent_at, weak=False)  # every sender stamps its tasks (queue lag)


@worker_ready.connect
def _metrics(**_kwargs) -> None:
    """Serve this worker's Prometheus metrics (solo pool: tasks run in this very process)."""
    if settings.metrics_port < 0:
        return
    # Its own driver (the HTTP thread reads the backlog; tasks keep theirs), connected at the first scrape.
    neo4j_settings = Neo4jSettings()
    driver = connect(neo4j_settings, verify=False, max_retry_s=5.0)
    metrics = WorkerMetrics(
        settings.broker_url,
        driver=driver,
        database=neo4j_settings.database,
        partitions=settings.partitions,
        sentinel_master=settings.redis_sentinel_master,
    )
    metrics.connect()
    try:
        metrics.start_http(settings.metrics_host, settings.metrics_port)
    except OSError as exc:  # a busy port must not keep the worker from working
        get_logger(__name__).error("worker metrics not served on port %d: %s", settings.metrics_port, exc)


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    """Prefork children start without the parent's connections (drivers and CUDA must not cross a fork)."""
    from workers import tasks

    tasks.reset_runtime()


@worker_process_shutdown.connect
def _on_exit(**_kwargs) -> None:
    from workers import tasks

    tasks.reset_runtime()
