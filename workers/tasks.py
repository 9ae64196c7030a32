"""Queue tasks: thin, idempotent wrappers around `workers.jobs`. Messages carry ids and options, never tensors.

| task | queue | arguments | result |
|---|---|---|---|
| ``interest.recompute`` | gpu | ``limit``, ``partition`` | counts and timings of one incremental round |
| ``interest.rebuild`` | gpu | ``version`` ("latest" or a version) | vectors written, active/previous version |
| ``interest.train`` | gpu | ``budget_min``, ``epochs``, ``model`` (a kind) | the new version (not yet active) and its metrics |
| ``interest.retrain`` | gpu | ``budget_min``, ``epochs`` | the gate's figures, and whether the new version rolled out |
| ``interest.backfill`` | cpu | ``dataset``, ``limit`` | events accepted / duplicates / rejected |
| ``interest.snapshot`` | cpu | ``out`` | file written with every vector of the active version |

Long tasks report progress as custom state ``PROGRESS`` with ``{"step": ...}`` (the CLI shows it).
"""

from __future__ import annotations

import os

from graphdb.errors import InterestError
from workers import jobs
from workers.celery_app import app
from workers.redis_keys import queued_key

_runtime: jobs.Runtime | None = None
_pid: int | None = None


def runtime() -> jobs.Runtime:
    """This process's runtime, created on first use (after any fork)."""
    global _runtime, _pid
    if _runtime is None or _pid != os.getpid():
        _runtime, _pid = jobs.Runtime.from_env(), os.getpid()
    return _runtime


def reset_runtime() -> None:
    global _runtime, _pid
    if _runtime is not None and _pid == os.getpid():
        _runtime.close()
    _runtime, _pid = None, None


def _progress(task):
    def report(step: str) -> None:
        task.update_state(state="PROGRESS", meta={"step": step})

    return report


def _run(fn, *args, **kwargs) -> dict:
    """Domain errors become a task result with the error, not a crashed worker or an endless retry."""
    try:
        return fn(*args, **kwargs)
    except InterestError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


@app.task(name="interest.recompute")
def recompute(limit: int | None = None, partition: int | None = None) -> dict:
    rt = runtime()
    rt.redis.delete(queued_key(rt.worker.changed_key, partition))  # a new round may be scheduled from now on
    return _run(jobs.recompute, rt, limit, partition)


@app.task(name="interest.rebuild", bind=True)
def rebuild(self, version: str = "latest") -> dict:
    return _run(jobs.rebuild_version, runtime(), version, progress=_progress(self))


@app.task(name="interest.train", bind=True)
def train(self, budget_min: float | None = None, epochs: int | None = None, model: str = "spectral-sage") -> dict:
    # The version is named after the task: run twice (redelivery), it is one version, saved twice.
    return _run(
        jobs.train_from_graph,
        runtime(),
        budget_min=budget_min,
        epochs=epochs,
        progress=_progress(self),
        version=f"{model}-{self.request.id}",
        model=model,
    )


@app.task(name="interest.retrain", bind=True)
def retrain(self, budget_min: float | None = None, epochs: int | None = None) -> dict:
    """Celery beat's periodic job (IG_WORKER_RETRAIN_PERIOD_S): train, and roll out through the quality gate."""
    return _run(
        jobs.retrain,
        runtime(),
        budget_min=budget_min,
        epochs=epochs,
        progress=_progress(self),
        version=f"spectral-sage-{self.request.id}",
    )


@app.task(name="interest.backfill")
def backfill(dataset: str, limit: int | None = None) -> dict:
    return _run(jobs.backfill, runtime(), dataset, limit)


@app.task(name="interest.snapshot")
def snapshot(out: str | None = None) -> dict:
    return _run(jobs.snapshot, runtime(), out)
