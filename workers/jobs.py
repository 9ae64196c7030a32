"""The work behind every queue task, as plain functions over a per-process `Runtime` (testable without Celery).

A `Runtime` is created once per worker process, after fork: the Neo4j driver, the Redis client and the CUDA
state must not cross a fork. It loads the checkpoint of the active model version on demand and keeps it until
the version changes.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import neo4j
import numpy as np
import redis

from graphdb import subgraph
from graphdb.driver import connect
from graphdb.ego import commit_ego, read_ego_marks
from graphdb.embeddings import iter_embeddings
from graphdb.errors import FailedPrecondition, InvalidInput, Unavailable
from graphdb.loaders import DATASETS, load_dataset
from graphdb.model_state import active_model
from graphdb.schema import ITEM, USER
from graphdb.settings import DataSettings, GraphSettings, Neo4jSettings
from ml.checkpoint import load_checkpoint, resolve
from ml.encoders.hetero_gnn import HeteroGNN
from ml.kinds import MODEL_KINDS
from ml.runtime import pick_device, set_threads
from ml.settings import ModelSettings, TrainSettings
from ml.text import TextEncoder
from workers import hetero_recompute, partitions, redis_connect, redis_keys
from workers.gate import data_until, served_recall, split_after
from workers.hetero_live import HeteroLive
from workers.live import LiveEncoder, training_graph
from workers.recompute import Context, EgoResult, RecomputeResult, rebuild, recompute_ego, recompute_marked
from workers.round_size import RoundSize
from workers.settings import WorkerSettings
from workers.training import train_and_save

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

LOCK_NAME = redis_keys.LOCK  # "{ig}:recompute:lock" (the hash tag: workers.redis_keys)


@dataclass
class Runtime:
    neo4j_settings: Neo4jSettings
    graph: GraphSettings
    model: ModelSettings
    train: TrainSettings
    worker: WorkerSettings
    data: DataSettings
    _driver: neo4j.Driver | None = None
    _redis: redis.Redis | None = None
    _encoders: dict[str, LiveEncoder | HeteroLive] = field(default_factory=dict)
    _round_size: RoundSize | None = None

    @classmethod
    def from_env(cls) -> "Runtime":
        return cls(Neo4jSettings(), GraphSettings(), ModelSettings(), TrainSettings(), WorkerSettings(), DataSettings())

    @property
    def driver(self) -> neo4j.Driver:
        if self._driver is None:
            self._driver = connect(self.neo4j_settings)
        return self._driver

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis_connect.connect(
                self.worker.redis_url,
                sentinel_master=self.worker.redis_sentinel_master,
                cluster=self.worker.redis_cluster,
                socket_timeout=30,
                socket_connect_timeout=5,
            )
        return self._redis

    @property
    def round_size(self) -> RoundSize:
        """This process's round sizing (`workers.round_size`): it learns from the rounds the process runs."""
        if self._round_size is None:
            ws = self.worker
            self._round_size = RoundSize(ws.round_target_s, ws.recompute_batch, ws.round_oldest_share, ws.round_max_s)
        return self._round_size

    @property
    def database(self) -> str:
        return self.neo4j_settings.database

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
            self._driver = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    # ------------------------------------------------------------------ models
    def encoder(self, version: str) -> LiveEncoder | HeteroLive:
        """The live encoder of a version, of whichever kind its checkpoint records."""
        if version not in self._encoders:
            ck = load_checkpoint(resolve(self.worker.model_dir, version))
            width = ck.model.hidden if isinstance(ck.model, HeteroGNN) else ck.model.dim
            if width != self.graph.embedding_dim:
                raise FailedPrecondition(
                    f"model {version} has dimension {width}, the graph's vector indexes {self.graph.embedding_dim} (IG_EMBEDDING_DIM)"
                )
            self._encoders.clear()  # one version in memory at a time
            text, device = TextEncoder(self.worker.text_cache_dir), pick_device(self.train.device)
            self._encoders[version] = (
                HeteroLive(ck, text, device)
                if isinstance(ck.model, HeteroGNN)
                else LiveEncoder(
                    ck, self.model.user_cap, self.graph.half_life_days, text, device, **self.model.fold(), **self.model.searches()
                )
            )
        return self._encoders[version]

    def context(self, version: str) -> Context:
        enc = self.encoder(version)
        if not isinstance(enc, LiveEncoder):
            raise FailedPrecondition(f"model {version} is a {enc.kind}: use hetero_context")
        return Context(self.driver, enc, self.redis, self.worker.delta_stream, self.database)

    def hetero_context(self, version: str) -> hetero_recompute.HeteroContext:
        enc = self.encoder(version)
        if not isinstance(enc, HeteroLive):
            raise FailedPrecondition(f"model {version} is not a heterogeneous encoder")
        return hetero_recompute.HeteroContext(self.driver, enc, self.redis, self.worker.delta_stream, self.database)

    def is_hetero(self, version: str) -> bool:
        return isinstance(self.encoder(version), HeteroLive)

    @contextmanager
    def lock(self, timeout_s: float | None = None, wait_s: float | None = None) -> Iterator[bool]:
        """The one-recompute-at-a-time lock; yields False when it could not be taken within ``wait_s``."""
        lock = self.redis.lock(LOCK_NAME, timeout=timeout_s or self.worker.lock_timeout_s, blocking_timeout=wait_s)
        got = lock.acquire(blocking=True)
        try:
            yield got
        finally:
            if got:
                try:
                    lock.release()
                except redis.exceptions.LockError:  # expired meanwhile: someone else may hold it now
                    log.warning("recompute lock expired before release")


# ---------------------------------------------------------------------------------------------- the jobs
def recompute(rt: Runtime, limit: int | None = None, partition: int | None = None) -> dict:
    """Recompute what the marked nodes affect, with the active model; a no-op without one. With
    ``IG_WORKER_PARTITIONS`` > 1, one partition's marks (or every partition free now): `workers.partitions`.
    Without ``limit``, the round's size and its newest marks are `Runtime.round_size`'s; with one, the oldest
    ``limit`` marks."""
    state = active_model(rt.driver, database=rt.database)
    if state is None:
        return {"skipped": "no active model", "marks": 0}
    ws = rt.worker
    if ws.recompute_threads:  # per task: a training or rebuild task in this process may have set its own
        set_threads(ws.recompute_threads)
    # Partitions split the served spectral model's marks; a K-layer encoder's affected set crosses them, so its
    # recompute takes the single lock (workers.hetero_recompute).
    hetero = rt.is_hetero(state.version)
    cpu0 = time.process_time()  # this process's CPU seconds of the user round (`round_cpu_s`), the ego rounds' apart
    size = rt.round_size
    n, newest = (limit, 0) if limit else size.next()
    if ws.partitions > 1 and not hetero:
        ctx = rt.context(state.version)
        t0 = time.perf_counter()
        out = partitions.recompute(ctx, rt.redis, ws.partitions, n, ws.lock_timeout_s, partition, newest=newest)
        size.record(out["marks"], time.perf_counter() - t0 - out["lock_wait_s"], out["backlog"] and not limit)
        return {**out, "round_cpu_s": round(time.process_time() - cpu0, 6), "ego": ego_rounds(rt, state.version)}
    with rt.lock(wait_s=rt.worker.lock_timeout_s) as got:
        if not got:
            return {"skipped": "another recompute holds the lock", "marks": 0}
        t0 = time.perf_counter()
        result: RecomputeResult = (
            hetero_recompute.round_and_chunks(  # its own sizing: chunks of IG_WORKER_HETERO_CHUNK_S
                rt.hetero_context(state.version),
                limit or ws.recompute_batch,
                ws.hetero_chunk_s,
                ws.lock_timeout_s / 4,
                partial(_queued, rt),
                ws.hetero_max_lag_s,
            )
            if hetero
            else recompute_marked(rt.context(state.version), n, newest)
        )
        if not hetero:
            size.record(result.marks, time.perf_counter() - t0, result.marks >= n and not limit)
    return {**result.as_dict(), "round_cpu_s": round(time.process_time() - cpu0, 6), "ego": ego_rounds(rt, state.version)}


def ego_rounds(rt: Runtime, version: str) -> dict:
    """Ego rounds (`recompute_ego`) after a user round, outside the recompute lock, while no recompute is queued:
    the ego vectors are of lower priority than the user vectors, so a user round queued meanwhile waits for the
    ego round in progress only (``IG_WORKER_EGO_BATCH`` users at most), and the next task goes on with the rest.
    Under a load that queues a round before the last ends, they wait for a lull (the scheduler queues a
    recompute while ego marks wait, so they drain once it comes).

    One ego round at a time per partition (the ego marks split as the change marks do, by the user's slot): a
    partition's rounds hold its ego lock (`redis_keys.ego_lock`), taken without waiting, so two workers never
    compute the same oldest marks twice; a worker that finds it held skips that partition, whose marks stay for
    the holder or the next task, and a killed holder's lock expires after ``IG_WORKER_LOCK_TIMEOUT_S``. A
    heterogeneous version has no ego model: its rounds only clear the marks a previous version left."""
    ws = rt.worker
    run = partial(_drop_ego_marks, rt, version) if rt.is_hetero(version) else partial(recompute_ego, rt.context(version))
    keys = [redis_keys.queued_key(ws.changed_key, p) for p in ([None] if ws.partitions == 1 else [None, *range(ws.partitions)])]
    out: dict = {"rounds": 0, "marks": 0, "written": 0, "removed": 0, "stale": 0, "skipped": []}
    t0, cpu0 = time.perf_counter(), time.process_time()
    for p in partitions.rotated(ws.partitions):
        if rt.redis.exists(*keys):
            break
        with partitions.claim(rt.redis, p, ws.partitions, ws.lock_timeout_s, name=redis_keys.ego_lock) as held:
            if held is None:
                out["skipped"].append(p)
                continue
            while not rt.redis.exists(*keys):
                try:
                    held.keep()  # each round renews the full timeout; a lock lost meanwhile may be another's now
                except Unavailable as exc:
                    log.warning("ego rounds stop: %s", exc)
                    break
                res = run(ws.ego_batch, (p, ws.partitions))
                if not res.marks:
                    break
                out["rounds"] += 1
                for k in ("marks", "written", "removed", "stale"):
                    out[k] += getattr(res, k)
    # the rounds' wall and this process's CPU seconds: what the ego vectors cost, apart from the user round
    out["s"], out["cpu_s"] = round(time.perf_counter() - t0, 6), round(time.process_time() - cpu0, 6)
    return out


def _drop_ego_marks(rt: Runtime, version: str, limit: int, partition: tuple[int, int]) -> EgoResult:
    marks = read_ego_marks(rt.driver, limit=limit, partition=partition, database=rt.database)
    counts = commit_ego(rt.driver, marks, {}, version, database=rt.database)
    return EgoResult(version, len(marks), dropped=counts.dropped, stale=counts.stale)


def _queued(rt: Runtime) -> bool:
    """Whether the scheduler has queued the next recompute (`workers.scheduler`)."""
    return bool(rt.redis.exists(redis_keys.queued_key(rt.worker.changed_key)))


def rebuild_version(rt: Runtime, version: str = "latest", progress: Progress | None = None) -> dict:
    """Embed every node with ``version`` and switch to it (roll-out, or roll-back to an older version)."""
    ck_version = load_checkpoint_version(rt, version)
    set_threads(rt.train.threads)  # a bulk pass: the training's threads, not a round's
    # The whole rebuild holds the lock: incremental recomputes wait and their marks stay (nothing is lost).
    with rt.lock(timeout_s=rt.worker.visibility_timeout_s) as got:
        if not got:
            raise FailedPrecondition("could not take the recompute lock")
        hetero = rt.is_hetero(ck_version)
        run = (
            partial(hetero_recompute.rebuild, rt.hetero_context(ck_version), progress=progress)
            if hetero
            else partial(rebuild, rt.context(ck_version), progress=progress)
        )
        if rt.worker.partitions == 1:
            return run()
        with partitions.hold_all(rt.redis, rt.worker.partitions, rt.worker.visibility_timeout_s, rt.worker.lock_timeout_s):
            return run()


def load_checkpoint_version(rt: Runtime, ref: str) -> str:
    path = resolve(rt.worker.model_dir, ref)
    return path.parent.name if path.name == "checkpoint.pt" else load_checkpoint(path).version


def train_from_graph(
    rt: Runtime,
    *,
    budget_min: float | None = None,
    epochs: int | None = None,
    progress: Progress | None = None,
    version: str | None = None,
    model: str = "spectral-sage",
) -> dict:
    """Train a ``model`` (a `ml.kinds.MODEL_KINDS` name) on the live graph; the new version is saved, not yet
    active (see rebuild).

    A task passes a version derived from its id, so a redelivered training saves the same version again
    instead of a second one."""
    say = progress or (lambda _m: None)
    say("reading the graph")
    items = subgraph.all_items(rt.driver, database=rt.database)
    edges = subgraph.all_edges(rt.driver, database=rt.database)
    return _train_on(rt, edges, items, budget_min=budget_min, epochs=epochs, say=say, version=version, model=model)


def _train_on(
    rt: Runtime,
    edges: list[subgraph.EdgeRow],
    items: list[subgraph.ItemRow],
    *,
    budget_min: float | None,
    epochs: int | None,
    say: Progress,
    version: str | None,
    model: str = "spectral-sage",
) -> dict:
    if model not in MODEL_KINDS:
        raise InvalidInput(f"unknown model {model!r}; expected one of {', '.join(MODEL_KINDS)}")
    if not edges:
        raise FailedPrecondition("the graph has no interactions to train on")
    # typed behaviour weights are the served model's user-side strength; the K-layer encoders read the edges' own
    # weights (decayed counts), as their live recompute does (workers.hetero_live)
    graph = training_graph(edges, items, rt.model.typed_weights() if model == "spectral-sage" else None)
    say(f"training on {graph.num_users:,} users, {graph.num_items:,} items, {len(edges):,} edges")
    # one width for every kind: the vectors go into the graph's vector indexes
    ms = rt.model.model_copy(update={"dim": rt.graph.embedding_dim, "hidden": rt.graph.embedding_dim})
    ts = rt.train.model_copy(update={k: v for k, v in {"budget_min": budget_min, "max_epochs": epochs}.items() if v is not None})
    set_threads(ts.threads)
    return train_and_save(
        graph,
        None,
        ms,
        ts,
        rt.worker,
        source="graph",
        progress=False,
        version=version,
        model=model,
        facts={"data_until": data_until(edges)},
    )


def retrain(
    rt: Runtime,
    *,
    budget_min: float | None = None,
    epochs: int | None = None,
    progress: Progress | None = None,
    version: str | None = None,
) -> dict:
    """The scheduled retrain: a new version trained on the live graph, rolled out only through the quality gate
    (`workers.gate`): its Recall@K on the pairs first met since the active version's data must be at least the
    active version's on the same split. Without an active version, the first one rolls out as it is."""
    say = progress or (lambda _m: None)
    state = active_model(rt.driver, database=rt.database)
    if state is None:
        trained = train_from_graph(rt, budget_min=budget_min, epochs=epochs, progress=say, version=version)
        rolled = rebuild_version(rt, trained["version"])
        return {"version": trained["version"], "rolled_out": True, "gate": "no active version", **rolled}
    active = rt.encoder(state.version)
    kind = active.kind if isinstance(active, HeteroLive) else "spectral-sage"  # a retrain keeps the active kind
    cut = active.ck.metrics.get("data_until")
    if cut is None:
        raise FailedPrecondition(
            f"the active version {state.version} records no data_until (trained before the "
            "quality gate): train and roll out one version by hand first"
        )
    say("reading the graph")
    items = subgraph.all_items(rt.driver, database=rt.database)
    split = split_after(subgraph.all_edges(rt.driver, database=rt.database), float(cut))
    out: dict = {"was_active": state.version, "held_users": len(split.held), "held_pairs": sum(map(len, split.held.values()))}
    if len(split.held) < rt.worker.gate_min_users:
        return {
            **out,
            "rolled_out": False,
            "reason": f"{len(split.held)} shoppers met new items since the active "
            f"version's data; the gate needs {rt.worker.gate_min_users} (IG_WORKER_GATE_MIN_USERS)",
        }
    trained = _train_on(rt, split.train, items, budget_min=budget_min, epochs=epochs, say=say, version=version, model=kind)
    say("measuring both versions on the same split")
    ck = load_checkpoint(resolve(rt.worker.model_dir, trained["version"]))
    candidate: LiveEncoder | HeteroLive = (
        HeteroLive(ck, active.text_encoder, active.device)
        if isinstance(ck.model, HeteroGNN)
        else LiveEncoder(
            ck,
            rt.model.user_cap,
            rt.graph.half_life_days,
            active.text_encoder,
            active.device,
            **rt.model.fold(),
            **rt.model.searches(),
        )
    )
    k = rt.train.eval_k
    new, old = served_recall(candidate, split, items, k), served_recall(active, split, items, k)
    out.update({"version": trained["version"], f"recall@{k}": round(new, 6), f"active_recall@{k}": round(old, 6)})
    if new < old:
        return {**out, "rolled_out": False, "reason": "the new version ranks the held-out items worse"}
    return {**out, "rolled_out": True, **rebuild_version(rt, trained["version"])}


def backfill(rt: Runtime, dataset: str, limit: int | None = None) -> dict:
    """Load a dataset's files into the graph (idempotent: event ids are deterministic)."""
    if dataset not in DATASETS:
        raise InvalidInput(f"unknown dataset {dataset!r}; expected one of {', '.join(sorted(DATASETS))}")
    t0 = time.perf_counter()
    result = load_dataset(rt.driver, rt.graph, dataset, rt.data.dataset_dir(dataset), limit=limit, database=rt.database)
    return {
        "dataset": dataset,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "rejected": len(result.rejected),
        "s": round(time.perf_counter() - t0, 2),
    }


def snapshot(rt: Runtime, out: Path | None = None) -> dict:
    """Ask every server to write its index snapshot now (an ``OP_SNAPSHOT`` delta), and export every vector of
    the active version from Neo4j to an ``.npz`` (labels, ids, vectors, version): a point-in-time copy that
    needs no server."""
    from ml.embed import write_vectors
    from workers.publish import publish, snapshot_request

    state = active_model(rt.driver, database=rt.database)
    if state is None:
        raise FailedPrecondition("no active model to snapshot")
    out = Path(out) if out else rt.worker.model_dir / state.version / "vectors.npz"
    rows = (
        (label, rec.id, np.asarray(rec.vector, np.float32))
        for label in (ITEM, USER)
        for rec in iter_embeddings(rt.driver, label, model_version=state.version, database=rt.database)
    )
    n = write_vectors(out, rows, state.version)
    publish(rt.redis, rt.worker.delta_stream, [snapshot_request()])
    return {"version": state.version, "vectors": n, "out": str(out), "servers_asked": True}
