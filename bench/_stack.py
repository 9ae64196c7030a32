"""The whole pipeline for a benchmark: Neo4j and Redis on free loopback ports, a dataset loaded, a Celery worker,
a model trained on the live graph and rolled out, optionally the gRPC server. Everything stops at the end."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import neo4j
import redis
from celery import Celery
from tqdm import tqdm

from graphdb import localstack
from graphdb.driver import connect
from graphdb.loaders import DATASETS, load_dataset
from graphdb.model_state import active_model
from graphdb.schema import migrate
from graphdb.settings import DataSettings, GraphSettings, LocalStackSettings, Neo4jSettings
from server.probe import wait_serving
from workers import process

EVENTS = {"gowalla": 810_128, "amazon-office": 53_258, "amazon-hin": None}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Pipeline:
    var: Path
    stack: LocalStackSettings
    neo4j: Neo4jSettings
    graph: GraphSettings
    driver: neo4j.Driver
    redis: redis.Redis
    env: dict[str, str]
    app: Celery
    version: str
    worker: subprocess.Popen
    server_port: int | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.stack.redis_port}/0"


@contextlib.contextmanager
def pipeline(
    var: Path,
    *,
    dataset: str | None = "gowalla",
    limit: int | None = None,
    server: bool = False,
    graph: GraphSettings | None = None,
    worker_extra: dict[str, str] | None = None,
    seed: Callable[[int], None] | None = None,
    model: str = "spectral-sage",
    prepared: bool = False,
) -> Iterator[Pipeline]:
    """``dataset=None`` loads nothing. ``seed(port)``, with ``server=True``, fills the graph through the running
    server's IngestEvents before the model is trained (the server switches to it when it is rolled out). ``model``:
    the kind the worker trains and rolls out (`ml.kinds`). ``prepared``: ``var`` holds a stopped pipeline's stack
    and models (a copy of one, `bench.freshness --prepare`): nothing is loaded or trained, its active version serves."""
    var = Path(var)
    if seed is not None and not server:
        raise ValueError("seed ingests through the server: pass server=True")
    gs = graph or GraphSettings()
    stack = LocalStackSettings(var_dir=var / "stack", neo4j_port=localstack.free_port(), redis_port=localstack.free_port())
    procs: list[subprocess.Popen] = []
    try:
        log("starting Neo4j and Redis")
        localstack.up(stack)
        ns = Neo4jSettings(uri=f"bolt://127.0.0.1:{stack.neo4j_port}")
        driver = connect(ns)
        migrate(driver, gs)
        if dataset is not None and not prepared:
            if dataset not in DATASETS:
                raise SystemExit(f"unknown dataset {dataset}")
            bar = tqdm(total=limit or EVENTS.get(dataset), desc=f"loading {dataset}", unit="ev")
            load_dataset(driver, gs, dataset, root=DataSettings().dataset_dir(dataset), limit=limit, progress=bar.update)
            bar.close()
        env = process.worker_env(
            neo4j_uri=ns.uri,
            redis_base=f"redis://127.0.0.1:{stack.redis_port}",
            model_dir=var / "models",
            text_cache_dir=Path("var/text-cache").resolve(),
            graph=gs,
            extra={"IG_TRAIN_MAX_EPOCHS": "0", **(worker_extra or {})},
        )
        app = process.client_app(env)
        worker = process.start_worker(env, var / "worker.log")
        procs.append(worker)
        process.wait_for_worker(app, worker, timeout_s=120)
        port = None
        if seed is not None:
            port = _start_server(env, var, procs)
            seed(port)
        state = active_model(driver) if prepared else None
        if prepared and state is None:
            raise SystemExit(f"{var} holds no rolled-out model: prepare it first")
        version = state.version if state is not None else train_and_roll_out(app, driver, model)
        p = Pipeline(
            var, stack, ns, gs, driver, redis.Redis.from_url(f"redis://127.0.0.1:{stack.redis_port}/0"), env, app, version, worker
        )
        if server:
            p.server_port = port or _start_server(env, var, procs)
        yield p
    finally:
        for proc in reversed(procs):
            process.stop(proc)
        with contextlib.suppress(Exception):
            driver.close()  # noqa: F821 - bound once Neo4j is up
        localstack.down(stack)


def _start_server(env: dict[str, str], var: Path, procs: list[subprocess.Popen]) -> int:
    """The gRPC server (``python -m server``) on a free port, once it answers health checks."""
    port = localstack.free_port()
    senv = dict(
        env,
        IG_SERVER_PORT=str(port),
        IG_SERVER_METRICS_PORT="0",
        IG_SERVER_REDIS_URL=env["IG_WORKER_REDIS_URL"],
        IG_SERVER_SNAPSHOT_DIR=str(var / "index"),
    )
    out = open(var / "server.log", "ab")  # noqa: SIM115 - the child's log
    srv = subprocess.Popen([sys.executable, "-m", "server"], env=senv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(srv)
    wait_serving(port, srv)
    return port


def train_and_roll_out(app: Celery, driver: neo4j.Driver, model: str = "spectral-sage") -> str:
    """Train the served model on the live graph and roll it out (worker tasks); returns the active version.
    Only before traffic: the marks left by loading are cleared, as the rebuild embedded every node."""
    log("training on the live graph (worker task)")
    trained = app.send_task("interest.train", kwargs={"model": model}).get(timeout=3600)
    if "error" in trained:
        raise RuntimeError(trained)
    log(f"rolling out {trained['version']} (worker task)")
    rebuilt = app.send_task("interest.rebuild", kwargs={"version": trained["version"]}).get(timeout=3600)
    if "error" in rebuilt:
        raise RuntimeError(rebuilt)
    driver.execute_query("MATCH (n:Dirty) REMOVE n:Dirty, n.dirty_since")
    return trained["version"]


def start_scheduler(p: Pipeline) -> subprocess.Popen:
    return process.start_scheduler(p.env, p.var / "scheduler.log")
