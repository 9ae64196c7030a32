"""Incremental recompute against a full recompute, on the real stack with gowalla loaded.

    python -m bench.incremental [--dataset gowalla] [--sizes 100,1000,10000] [--out FILE]
    python -m bench.incremental --model hetero-sage --layers 2 --dataset amazon-hin --sizes 1000

Starts Neo4j, Redis and a Celery worker, loads the dataset, trains the served model on the live graph and rolls
it out (worker tasks). Then, per batch size: ingest that many new events (existing users and items, Zipf-like
popularity), run the incremental recompute through the worker (``interest.recompute``: pull + forward + write,
timed inside the task), compare every stored vector with a full recompute of the final graph, and time the full
recompute (``interest.rebuild`` of the same version: pull + forward + write of every vector) in the same run,
after a few unmeasured warm-up rounds (query plans and JIT, as in a running service). Each size is repeated
``--repeats`` times with fresh events; the row reports the medians (a shared 2-core machine is noisy).
A last row shows a hub: one event on the most popular item costs one user, not its thousands of neighbours.

With ``--model hetero-*`` the worker trains and serves a K-layer heterogeneous encoder (``workers.hetero_live``;
``--dim`` wide, one epoch) and recomputes with its K-hop affected set (``workers.hetero_recompute``: rounds of the
marks, then chunks of the pending set they leave, until both are empty; ``round_s`` and ``pending_s``). Rows then
also carry the affected set per layer, and ``--singles`` single events report the affected set of one event
against the full K-hop ball around it (users, items, categories and brands within K hops of its user and item).
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import typer

from bench._common import emit_result
from bench._stack import log, pipeline
from graphdb import subgraph
from graphdb.ingest import ingest_events
from graphdb.loaders import DATASETS
from graphdb.pseudonym import pseudonymise
from graphdb.schema import HAS_BRAND, IN_CATEGORY, ITEM_INTERACTIONS
from graphdb.settings import DataSettings, GraphSettings
from ml.settings import ModelSettings, TrainSettings
from workers import hetero_recompute, jobs
from workers.recompute import full_vectors
from workers.settings import WorkerSettings

_USERS = "MATCH (u:User) RETURN u.id AS id"
_HUB = """
MATCH (i:Item)<-[r]-(:User)
WITH i, count(r) AS degree ORDER BY degree DESC, i.id LIMIT 1
RETURN i.id AS id, degree
"""
_EXTERNAL = "MATCH (i:Item) RETURN i.id AS id"
_BALL_RELS = "|".join((*ITEM_INTERACTIONS, IN_CATEGORY, HAS_BRAND))
# The K-hop ball of an event: every user, item, category and brand within K hops of its user or its item.
_BALL = f"""
MATCH (s) WHERE (s:User AND s.id = $user) OR (s:Item AND s.id = $item)
MATCH (s)-[:{_BALL_RELS}*0..$hops]-(n)
RETURN count(DISTINCT n) AS ball
"""


def new_events(n: int, users: list[str], items: list[str], tag: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    now = time.time()
    out = []
    for k in range(n):
        item = items[min(int(rng.paretovariate(1.2)) - 1, len(items) - 1)] if rng.random() < 0.5 else rng.choice(items)
        out.append(
            {
                "event_id": f"{tag}-{k}",
                "user_id": rng.choice(users),
                "type": "click",
                "item_id": item,
                "ts": now - rng.uniform(0, 3600),
            }
        )
    return out


def compare(rt: jobs.Runtime, version: str) -> float:
    """Max |stored - full recompute| over every vector."""
    full = hetero_recompute.full_vectors(rt.hetero_context(version)) if rt.is_hetero(version) else full_vectors(rt.context(version))
    worst = 0.0
    for label, vectors in full.vectors.items():
        stored = subgraph.stored_vectors(rt.driver, label, vectors)
        for node_id, vec in vectors.items():
            s = stored.get(node_id)
            if s is None or s.vector is None or s.version != version:
                return float("inf")
            worst = max(worst, float(np.max(np.abs(np.asarray(s.vector, np.float32) - vec))))
    return worst


def main(
    dataset: str = typer.Option("gowalla"),
    sizes: str = typer.Option("100,1000,10000", help="event batch sizes"),
    limit: int = typer.Option(None, help="load only this many events (quick runs)"),
    repeats: int = typer.Option(3, help="repetitions per size (medians reported)"),
    out: Path = typer.Option(None, help="also write the RESULT JSON here"),
    var: Path = typer.Option(None, help="keep data and logs here (default: a temporary directory)"),
    model: str = typer.Option("spectral-sage", help="model kind the worker trains and serves"),
    layers: int = typer.Option(2, help="message-passing layers of a hetero-* model"),
    dim: int = typer.Option(64, help="embedding width of a hetero-* model (IG_EMBEDDING_DIM of the run)"),
    singles: int = typer.Option(30, help="hetero-*: single events measured against their K-hop ball"),
) -> None:
    hetero = model.startswith("hetero-")
    extra = {"IG_MODEL_LAYERS": str(layers), "IG_TRAIN_MAX_EPOCHS": "1", "IG_TRAIN_VAL_FRACTION": "0"} if hetero else {}
    gs = GraphSettings(embedding_dim=dim) if hetero else None
    with (
        contextlib.nullcontext(str(var)) if var else tempfile.TemporaryDirectory(prefix="bench-incremental-") as tmp,
        pipeline(Path(tmp), dataset=dataset, limit=limit, model=model, graph=gs, worker_extra=extra) as p,
    ):
        rt = jobs.Runtime(
            p.neo4j,
            p.graph,
            ModelSettings(layers=layers),
            TrainSettings(),
            WorkerSettings(model_dir=p.var / "models", redis_url=p.redis_url, text_cache_dir=Path(p.env["IG_WORKER_TEXT_CACHE_DIR"])),
            DataSettings(),
        )
        # external user ids of the dataset (the graph holds pseudonyms): from the loader's id scheme
        users = sorted({e["user_id"] for e in _dataset_users(dataset, limit)})
        items = [r["id"] for r in p.driver.execute_query(_EXTERNAL).records]
        # Warm-up, not measured: the worker's and Neo4j's first runs of each query compile plans and JIT code;
        # a live service runs these rounds all the time.
        for w, n in enumerate((50, 50, 1, 1)):
            for e in new_events(n, users, items, f"warm{w}", seed=100 + w):
                ingest_events(p.driver, p.graph, [e])
            _incremental(p)
        rows = []
        for n_events in [int(s) for s in sizes.split(",")]:
            # Each repetition: fresh events, incremental, compare, full; medians resist a noisy shared machine.
            reps = []
            for rep in range(repeats):
                events = new_events(n_events, users, items, f"inc{n_events}-{rep}", seed=n_events * 10 + rep)
                for s in range(0, len(events), 5000):
                    ingest_events(p.driver, p.graph, events[s : s + 5000])
                inc = _incremental(p)
                diff = compare(rt, p.version)
                full = p.app.send_task("interest.rebuild", kwargs={"version": p.version}).get(timeout=3600)
                reps.append((inc, full["pull_s"] + full["forward_s"] + full["write_s"], full["written"], diff, full))
                log(f"{n_events} events, rep {rep}: incremental {inc['s']:.3f}s, full {reps[-1][1]:.3f}s")
            inc = sorted(reps, key=lambda r: r[0]["s"])[len(reps) // 2][0]
            full_s = float(np.median([r[1] for r in reps]))
            full_row = sorted(reps, key=lambda r: r[1])[len(reps) // 2][4]
            row = {
                "model": model,
                "layers": layers if hetero else 1,
                "events": n_events,
                "affected": inc["users"] + inc["items"],
                "users": inc["users"],
                "items": inc["items"],
                "incremental_s": round(inc["s"], 3),
                "pull_s": inc["pull_s"],
                "forward_s": inc["forward_s"],
                "write_s": inc["write_s"],
                "full_s": round(full_s, 3),
                "full_pull_s": round(full_row["pull_s"], 3),
                "full_forward_s": round(full_row["forward_s"], 3),
                "full_write_s": round(full_row["write_s"], 3),
                "full_vectors": reps[0][2],
                "speedup": round(full_s / inc["s"], 1),
                "max_abs_diff": max(r[3] for r in reps),
                "repeats": repeats,
                "incremental_s_all": [round(r[0]["s"], 3) for r in reps],
                "full_s_all": [round(r[1], 3) for r in reps],
            }
            if hetero:
                row["affected_per_layer"] = inc["affected"]
                row["phases"] = inc["phases"]  # seconds by part of the rounds (`HeteroResult.phases`)
                row["cached_items"] = inc["cached_items"]  # items read as their stored cap (`CapStore`)
                # the rounds (their users, first) and the pending set's chunks (the last layer's out-set); the
                # vectors written count a node once per round or chunk that wrote it
                for k in ("round_s", "first_s", "round_users", "pending_s", "pending_users", "pending_items", "pending_done", "tasks"):
                    row[k] = inc[k]
            log(f"{row}")
            rows.append(row)

        hub = p.driver.execute_query(_HUB).records[0]
        ingest_events(
            p.driver,
            p.graph,
            [{"event_id": "hub-1", "user_id": users[0], "type": "purchase", "item_id": hub["id"], "ts": time.time()}],
        )
        inc = _incremental(p)
        hub_row = {
            "item_degree": hub["degree"],
            "events": 1,
            "affected": inc["users"] + inc["items"],
            "incremental_s": round(inc["s"], 4),
            "round_s": inc["round_s"],
        }
        log(f"hub: {hub_row}")
        result = {"bench": "incremental", "dataset": dataset, "model": model, "rows": rows, "hub": hub_row}
        if hetero:
            result["singles"] = _singles(p, users, items, singles, layers)
            log(f"singles: {result['singles']}")
        rt.close()
    emit_result(result, out)


def _singles(p, users: list[str], items: list[str], n: int, hops: int) -> dict:
    """One event at a time: the users and items recomputed against the K-hop ball around the event."""
    key = p.graph.pseudonym_key.get_secret_value()
    affected, balls, changed = [], [], []
    for k, e in enumerate(new_events(n, users, items, "single", seed=4242)):
        ingest_events(p.driver, p.graph, [e])
        inc = _incremental(p)
        affected.append(inc["users"] + inc["items"])
        changed.append(inc["affected"])
        query = _BALL.replace("$hops", str(int(hops)))  # a path length cannot be a parameter
        balls.append(p.driver.execute_query(query, user=pseudonymise(key, e["user_id"]), item=e["item_id"]).records[0]["ball"])
    return {
        "events": n,
        "recomputed_per_event_mean": round(float(np.mean(affected)), 1),
        "recomputed_per_event_median": float(np.median(affected)),
        "recomputed_per_event_max": int(np.max(affected)),
        "affected_per_layer_mean": [round(float(x), 1) for x in np.mean(np.array(changed, dtype=float), axis=0)],
        "ball_per_event_mean": round(float(np.mean(balls)), 1),
        "ball_per_event_median": float(np.median(balls)),
        "recomputed_over_ball": round(float(np.sum(affected) / max(np.sum(balls), 1)), 4),
    }


def _incremental(p) -> dict:
    """Recompute tasks through the worker until no mark and no pending entry (`workers.hetero_recompute.PendingSet`)
    is left; timings summed over the tasks. A hetero task is a round (``round_s``: its users, first) and chunks of
    the pending set (``pending_s``: the last layer's out-set); ``s`` is both."""
    total = {"users": 0, "items": 0, "pull_s": 0.0, "forward_s": 0.0, "write_s": 0.0, "cached_items": 0}
    total |= {"pending_s": 0.0, "pending_users": 0, "pending_items": 0, "pending_done": 0, "first_s": 0.0}
    per_layer: list[int] = []
    phases: dict[str, float] = {}
    tasks = 0
    while True:
        res = p.app.send_task("interest.recompute", kwargs={"limit": 100_000}).get(timeout=3600)
        if "error" in res:
            raise RuntimeError(res)
        for k in total:
            total[k] += res.get(k, 0)
        if res.get("affected"):  # a task with no marks (chunks of the pending set only) has none
            per_layer = [a + b for a, b in zip(res["affected"], per_layer or [0] * len(res["affected"]))]
        for k, v in res.get("phases", {}).items():
            phases[k] = phases.get(k, 0.0) + v
        tasks += 1
        if not res["marks"] and not res.get("pending_left") and not res.get("pending_done"):
            break
    total["round_s"] = total["pull_s"] + total["forward_s"] + total["write_s"]
    total["s"] = total["round_s"] + total["pending_s"]
    total["round_users"] = total["users"]
    total["users"] += total["pending_users"]
    total["items"] += total["pending_items"]
    rounded = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in total.items()}
    return {**rounded, "affected": per_layer, "phases": {k: round(v, 4) for k, v in phases.items()}, "tasks": tasks}


def _dataset_users(dataset: str, limit: int | None):
    events = DATASETS[dataset].events(DataSettings().dataset_dir(dataset))
    for k, e in enumerate(events):
        if limit is not None and k >= limit:
            return
        yield e


if __name__ == "__main__":
    typer.run(main)
