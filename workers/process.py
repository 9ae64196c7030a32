"""Starting worker and scheduler processes for the local stack, the tests and the benchmarks.

Each process gets its whole configuration through the environment (the settings classes read it once in the
child), so a test can run its own worker against its own Neo4j and Redis on free ports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery

from graphdb.errors import Unavailable
from graphdb.settings import GraphSettings


def worker_env(
    *,
    neo4j_uri: str,
    redis_base: str,
    model_dir: Path,
    text_cache_dir: Path,
    graph: GraphSettings,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment of a worker/scheduler: broker on Redis db 1, results on db 2, deltas and signals on db 0."""
    base = redis_base.rstrip("/")
    env = dict(os.environ)
    env.update(
        {
            "NEO4J_URI": neo4j_uri,
            "IG_WORKER_BROKER_URL": f"{base}/1",
            "IG_WORKER_RESULT_BACKEND": f"{base}/2",
            "IG_WORKER_REDIS_URL": f"{base}/0",
            "IG_WORKER_MODEL_DIR": str(model_dir),
            "IG_WORKER_TEXT_CACHE_DIR": str(text_cache_dir),
            "IG_PSEUDONYM_KEY": graph.pseudonym_key.get_secret_value(),
            "IG_EMBEDDING_DIM": str(graph.embedding_dim),
            "IG_HALF_LIFE_DAYS": str(graph.half_life_days),
            "IG_WORKER_METRICS_PORT": "0",  # several workers on one machine: each takes a free port (logged)
        }
    )
    env.update(extra or {})
    return env


def _spawn(args: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen:
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_worker(env: dict[str, str], log_file: Path, queues: str = "gpu,cpu") -> subprocess.Popen:
    """A ``--pool=solo`` Celery worker on ``queues`` (the GPU queue's mode: one process, CUDA after start)."""
    return _spawn(
        [
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "-Q",
            queues,
            "--pool=solo",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"worker-{os.getpid()}-{time.monotonic_ns()}@%h",
        ],
        env,
        log_file,
    )


def start_scheduler(env: dict[str, str], log_file: Path, timeout_s: float = 60.0) -> subprocess.Popen:
    """The recompute scheduler, returned once it runs (its log says ready)."""
    log_file = Path(log_file)
    offset = log_file.stat().st_size if log_file.exists() else 0  # the log is appended to across runs
    proc = _spawn(["-m", "workers.scheduler"], env, log_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"scheduler exited with {proc.returncode}; see {log_file}")
        if b"scheduler ready" in log_file.read_bytes()[offset:]:
            return proc
        time.sleep(0.1)
    stop(proc)
    raise Unavailable(f"scheduler not ready after {timeout_s:.0f}s; see {log_file}")


def client_app(env: dict[str, str]) -> Celery:
    """A Celery client configured like the workers started with ``env`` (to send tasks and read results)."""
    from workers.celery_app import make_app
    from workers.settings import WorkerSettings

    return make_app(WorkerSettings(broker_url=env["IG_WORKER_BROKER_URL"], result_backend=env["IG_WORKER_RESULT_BACKEND"]))


def wait_for_worker(app: Celery, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Until a worker answers a ping (raises `Unavailable` if the process exits or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"worker exited with {proc.returncode}")
        if app.control.ping(timeout=0.5):
            return
    raise Unavailable("worker did not answer within the timeout")


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metrics_port(log_file: Path, timeout_s: float = 30.0) -> int:
    """The port a worker serves its metrics on, from its log."""
    import re

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.findall(rb"worker metrics on http://[^:]+:(\d+)/metrics", Path(log_file).read_bytes())
        if found:
            return int(found[-1])
        time.sleep(0.1)
    raise Unavailable(f"no metrics port in {log_file}")
