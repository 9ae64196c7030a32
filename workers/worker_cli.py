"""``interest worker ...``: run a worker or the scheduler, submit jobs to the queues and watch them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from ml.kinds import MODEL_KINDS

worker_app = typer.Typer(help="Celery workers, the recompute scheduler and job submission.", no_args_is_help=True)
console = Console(stderr=True)


@worker_app.command("run")
def run(
    queues: str = typer.Option("gpu,cpu", help="queues to consume"),
    concurrency: int = typer.Option(1, help="processes (solo pool when 1: the GPU queue's mode)"),
    loglevel: str = typer.Option("INFO"),
) -> None:
    """Start a Celery worker (``--pool=solo`` for one process: one per GPU)."""
    from workers.celery_app import app

    pool = ["--pool=solo"] if concurrency == 1 else ["--pool=prefork", f"--concurrency={concurrency}"]
    app.worker_main(["worker", "-Q", queues, f"--loglevel={loglevel}", "--without-gossip", "--without-mingle", *pool])


@worker_app.command("beat")
def beat(loglevel: str = typer.Option("INFO")) -> None:
    """Celery beat: queue a gated retrain every IG_WORKER_RETRAIN_PERIOD_S seconds (one per deployment)."""
    from workers.celery_app import app, settings

    if settings.retrain_period_s <= 0:
        console.print("[red]error:[/red] IG_WORKER_RETRAIN_PERIOD_S is 0: nothing to schedule")
        raise typer.Exit(1)
    # Beat remembers when it last ran each entry in a small file: under var/ (owned by the app user in the image),
    # never in the working directory.
    schedule = Path("var") / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.Beat(loglevel=loglevel, schedule=str(schedule)).run()


@worker_app.command("scheduler")
def scheduler() -> None:
    """Queue a recompute on each ingestion signal and periodically while marks wait."""
    from workers.scheduler import main

    main()


def _submit(name: str, kwargs: dict, wait: bool, timeout_s: float) -> None:
    from workers.celery_app import app

    result = app.send_task(name, kwargs={k: v for k, v in kwargs.items() if v is not None})
    typer.echo(result.id)
    if wait:
        watch(result.id, timeout_s)


@worker_app.command("watch")
def watch(task_id: str, timeout_s: float = typer.Option(3600.0)) -> None:
    """Show a task's progress until it finishes; prints its result as JSON."""
    from workers.celery_app import app

    result = app.AsyncResult(task_id)
    deadline = time.monotonic() + timeout_s
    last = None
    with console.status(f"task {task_id}") as status:
        while not result.ready():
            if time.monotonic() > deadline:
                console.print(f"[red]timed out waiting for {task_id}[/red]")
                raise typer.Exit(1)
            info = result.info if isinstance(result.info, dict) else {}
            shown = f"{result.state} {info.get('step', '')}".strip()
            if shown != last:
                status.update(f"task {task_id}: {shown}")
                last = shown
            time.sleep(0.3)
    if result.failed():
        console.print(f"[red]failed:[/red] {result.result!r}")
        raise typer.Exit(1)
    out = result.get()
    typer.echo(json.dumps(out))
    if isinstance(out, dict) and "error" in out:
        raise typer.Exit(1)


_WAIT = typer.Option(False, "--wait", help="wait and show progress")
_TIMEOUT = typer.Option(3600.0, help="how long --wait waits")


@worker_app.command("train")
def submit_train(
    budget_min: float = typer.Option(None),
    epochs: int = typer.Option(None),
    model: str = typer.Option("spectral-sage", help=f"model kind: {', '.join(MODEL_KINDS)}"),
    wait: bool = _WAIT,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Train a new model version of any kind on the live graph (not yet active: see rebuild)."""
    if model not in MODEL_KINDS:
        raise typer.BadParameter(f"unknown model {model!r}; expected one of {', '.join(MODEL_KINDS)}", param_hint="--model")
    _submit("interest.train", {"budget_min": budget_min, "epochs": epochs, "model": model}, wait, timeout_s)


@worker_app.command("retrain")
def submit_retrain(
    budget_min: float = typer.Option(None), epochs: int = typer.Option(None), wait: bool = _WAIT, timeout_s: float = _TIMEOUT
) -> None:
    """Train a new version and roll it out only if the quality gate passes (what Celery beat runs)."""
    _submit("interest.retrain", {"budget_min": budget_min, "epochs": epochs}, wait, timeout_s)


@worker_app.command("rebuild")
def submit_rebuild(
    version: str = typer.Option("latest", help="'latest', or a version to roll back to"),
    wait: bool = _WAIT,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Embed every node with a version, then switch the servers to it."""
    _submit("interest.rebuild", {"version": version}, wait, timeout_s)


@worker_app.command("recompute")
def submit_recompute(limit: int = typer.Option(None), wait: bool = _WAIT, timeout_s: float = _TIMEOUT) -> None:
    """Recompute the marked nodes now."""
    _submit("interest.recompute", {"limit": limit}, wait, timeout_s)


@worker_app.command("backfill")
def submit_backfill(
    dataset: str = typer.Argument(..., help="gowalla | amazon-office | amazon-hin"),
    limit: int = typer.Option(None),
    wait: bool = _WAIT,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Load a dataset's files into the graph through the cpu queue."""
    _submit("interest.backfill", {"dataset": dataset, "limit": limit}, wait, timeout_s)


@worker_app.command("snapshot")
def submit_snapshot(out: str = typer.Option(None), wait: bool = _WAIT, timeout_s: float = _TIMEOUT) -> None:
    """Export every vector of the active version to a file."""
    _submit("interest.snapshot", {"out": out}, wait, timeout_s)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(worker_app())
