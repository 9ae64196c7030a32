"""Partitioned recompute: the same kind of backlog drained by 1 worker (one global lock, the default) and by N
workers on N partitions (``IG_WORKER_PARTITIONS=N``), in one run on one graph.

    python -m bench.partitions [--workers 2,3] [--events 4000] [--dataset amazon-office] [--out FILE]

Starts Neo4j, Redis and a worker, loads the dataset, trains the served model on the live graph and rolls it out.
Each phase writes ``--events`` click events by distinct existing users on random shopped items (each one user's
recompute, as in ``bench.freshness``), then sends ``interest.recompute`` tasks (one per partition) until no
mark is left. Measured per phase: the drain's wall time, the CPU seconds of the worker processes and of Neo4j
per event (psutil), the time the tasks spent taking their locks, and the marks handed between partitions.
Before each phase a small batch warms the workers up (first-use costs are not counted).
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import typer

from bench._common import emit_result
from bench._stack import Pipeline, log, pipeline
from bench.freshness import stream_inputs
from graphdb import localstack
from graphdb.changes import count_marks
from graphdb.ingest import ingest_events
from workers import process


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def _write(p: Pipeline, users: list[str], items: list[str], tag: str, seed: int) -> int:
    rng = random.Random(seed)
    events = [
        {"event_id": f"{tag}-{k}", "user_id": u, "type": "click", "item_id": rng.choice(items), "ts": time.time()}
        for k, u in enumerate(users)
    ]
    for s in range(0, len(events), 1000):
        result = ingest_events(p.driver, p.graph, events[s : s + 1000])
        if result.rejected:
            raise RuntimeError(result.rejected[:3])
    return len(events)


def _drain(p: Pipeline, partitions: int) -> dict:
    """Recompute tasks (one per partition) until no mark is left; their summed results."""
    out = {"tasks": 0, "lock_wait_s": 0.0, "handed_off": 0, "users": 0}
    while count_marks(p.driver):
        kwargs = [{}] if partitions == 1 else [{"partition": q} for q in range(partitions)]
        for r in [p.app.send_task("interest.recompute", kwargs=k) for k in kwargs]:
            res = r.get(timeout=1800)
            if "error" in res:
                raise RuntimeError(res)
            out["tasks"] += 1
            out["lock_wait_s"] += res.get("lock_wait_s", 0.0)
            out["handed_off"] += res.get("handed_off", 0)
            out["users"] += res.get("users", 0)
    return out


def _phase(p: Pipeline, n: int, pids: list[int], users: list[str], warm: list[str], items: list[str]) -> dict:
    neo4j_pid = localstack._services(p.stack)[0].pid()
    _write(p, warm, items, f"warm-{n}", seed=n)
    _drain(p, n)
    events = _write(p, users, items, f"phase-{n}", seed=100 + n)
    marks = count_marks(p.driver)
    cpu0, neo0, t0 = _cpu(pids), _cpu([neo4j_pid]) if neo4j_pid else 0.0, time.perf_counter()
    drained = _drain(p, n)
    wall = time.perf_counter() - t0
    cpu, neo = _cpu(pids) - cpu0, (_cpu([neo4j_pid]) - neo0) if neo4j_pid else None
    row = {
        "workers": n,
        "partitions": n,
        "events": events,
        "marks": marks,
        "drain_s": round(wall, 3),
        "events_per_s": round(events / wall, 1),
        "worker_cpu_s_per_event": round(cpu / events, 6),
        "neo4j_cpu_s_per_event": round(neo / events, 6) if neo is not None else None,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in drained.items()},
    }
    log(f"{n} worker(s): {row}")
    return row


def main(
    workers: str = typer.Option("2,3", help="worker counts to compare with one worker (comma-separated)"),
    events: int = typer.Option(4000, help="events (distinct users) per phase"),
    dataset: str = typer.Option("amazon-office"),
    limit: int = typer.Option(None, help="load only this many events"),
    out: Path = typer.Option(None, help="also write the RESULT JSON here"),
    var: Path = typer.Option(None, help="keep data and logs here (default: a temporary directory)"),
) -> None:
    counts = [int(w) for w in workers.split(",") if w.strip()]
    with (
        contextlib.nullcontext(str(var)) if var else tempfile.TemporaryDirectory(prefix="bench-partitions-") as tmp,
        pipeline(Path(tmp), dataset=dataset, limit=limit) as p,
    ):
        key = p.graph.pseudonym_key.get_secret_value()
        warm_n = 200
        items, external = stream_inputs(p, dataset, key, events + warm_n)
        rng = random.Random(5)

        def users() -> tuple[list[str], list[str]]:
            """Distinct users within a phase (a new sample each phase): the phase's events, and the warm-up's."""
            picked = rng.sample(external, events + warm_n)
            return picked[warm_n:], picked[:warm_n]

        phase_users, warm = users()
        rows = [_phase(p, 1, [p.worker.pid], phase_users, warm, items)]
        process.stop(p.worker)  # the next phases run workers started with IG_WORKER_PARTITIONS=n
        for n in counts:
            env = {**p.env, "IG_WORKER_PARTITIONS": str(n)}
            procs: list[subprocess.Popen] = []
            try:
                for k in range(n):
                    procs.append(process.start_worker(env, Path(tmp) / f"worker-{n}-{k}.log"))
                for proc in procs:
                    process.wait_for_worker(p.app, proc, timeout_s=120)
                phase_users, warm = users()
                rows.append(_phase(p, n, [proc.pid for proc in procs], phase_users, warm, items))
            finally:
                for proc in procs:
                    process.stop(proc)
    base = rows[0]
    result = {
        "bench": "partitions",
        "dataset": dataset,
        "events": events,
        "rows": rows,
        # CPU per event relative to one worker (1.0 = the same; the target is <= 1.10), and drain speed-up
        "cpu_ratio": {str(r["workers"]): round(r["worker_cpu_s_per_event"] / base["worker_cpu_s_per_event"], 3) for r in rows[1:]},
        "speedup": {str(r["workers"]): round(r["events_per_s"] / base["events_per_s"], 3) for r in rows[1:]},
        "lock_wait_s": {str(r["workers"]): r["lock_wait_s"] for r in rows},
    }
    emit_result(result, out)


if __name__ == "__main__":
    typer.run(main)
