"""Freshness: from an event's acknowledgement to the user's new vector in Neo4j and on the delta stream.

    python -m bench.freshness [--rate 200] [--duration-s 60] [--dataset gowalla] [--out FILE]
    python -m bench.freshness --workers 1,2,3 --find-rate [--overload-s 60]     (issue 18: bench/freshness_load.py)
    python -m bench.freshness --prepare DIR; python -m bench.freshness --prepared DIR --workers 2 ...
        (load and train once into DIR; each run then starts from a copy of it, without the minutes of setup)
    python -m bench.freshness --model hetero-sage --dataset amazon-hin --duration-s 30
    python -m bench.freshness --model hetero-sage --dataset amazon-hin --duration-s 60 --repeat-users

Starts Neo4j, Redis, a Celery worker, the recompute scheduler and the gRPC server, loads the dataset, trains
the served model on the live graph and rolls it out. Then a client streams events through ``IngestEvents`` at
``--rate`` events/s (a request every 50 ms) for ``--duration-s``. Every event is by a different existing user, so
the first vector of that user written or published after the acknowledgement is the one that event caused. A
reader follows the delta stream; Neo4j's ``emb_updated_at`` gives the write time. The RESULT's p50/p99/max are
for the vector being on the stream (it is published after the Neo4j write), the ``neo4j_*`` ones for the write,
the ``ego_*`` ones for the user's ego vector (SimilarUsers; written in ego rounds after the user rounds).
``--model hetero-*``: the worker trains (one epoch) and serves a ``--layers`` K-layer heterogeneous encoder, as
``bench.incremental`` does, and the scheduler's rounds recompute its K-hop affected set (``workers.hetero_recompute``);
the RESULT adds the pending set's size every 2 s and when it and the marks drained. ``--repeat-users``: a stream longer
than the dataset has users for (amazon-hin's 6,170 last 30 s at 200/s) sends each user again after all have sent;
only first events are timed (``timed_events``), and the Neo4j figures only of users who sent once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import typer

from bench import freshness_load
from bench._common import emit_result
from bench._paced_ingest import paced_ingest
from bench._stack import log, pipeline, start_scheduler
from bench._stream_watch import StreamWatch
from graphdb.changes import count_marks
from graphdb.ego import count_ego_marks
from graphdb.loaders import DATASETS
from graphdb.pseudonym import pseudonymise
from graphdb.settings import DataSettings, GraphSettings
from proto.interest.v1 import interest_pb2 as pb
from workers import process
from workers.redis_keys import HETERO_PENDING

_UPDATED = "UNWIND $ids AS id MATCH (u:User {id: id}) RETURN u.id AS id, u.emb_updated_at AS at, u.ego_updated_at AS ego_at"
_USERS = "MATCH (u:User) RETURN count(u) AS n"


async def send(port: int, users: list[str], items: list[str], rate: float, duration_s: float, seed: int) -> list[tuple[str, float]]:
    """Stream click events at ``rate`` through IngestEvents, each from the next user; (external user id, ack time)
    per event."""
    rng, order, sent = random.Random(seed), iter(users), itertools.count()

    def clicks(k: int) -> list[pb.Event]:
        return [
            pb.Event(
                event_id=f"fresh-{next(sent)}",
                user_id=next(order),
                type=pb.EVENT_TYPE_CLICK,
                item_id=rng.choice(items),
                ts=time.time(),
            )
            for _ in range(k)
        ]

    return [(user, at) for user, _, at in await paced_ingest(port, clicks, [(duration_s, rate)])]


def percentiles(values: list[float]) -> dict:
    a = np.asarray(values)
    return {
        "p50_s": round(float(np.percentile(a, 50)), 3),
        "p99_s": round(float(np.percentile(a, 99)), 3),
        "max_s": round(float(a.max()), 3),
    }


def stream_inputs(p: Any, dataset: str, key: str, needed: int) -> tuple[list[str], list[str]]:
    """The items shoppers touched and, shuffled, the external ids of enough distinct users for ``needed`` events
    (each event of the stream comes from another user, so each is one user's recompute)."""
    items = [r["id"] for r in p.driver.execute_query("MATCH (i:Item)<--(:User) RETURN DISTINCT i.id AS id").records]
    external = _external_users(p, dataset, key)
    if len(external) < needed:
        raise SystemExit(f"{len(external)} users cannot give {needed} events by distinct users")
    random.Random(1).shuffle(external)
    return items, external


def main(
    rate: float = typer.Option(200.0, help="events per second"),
    duration_s: float = typer.Option(60.0, help="how long the stream runs"),
    dataset: str = typer.Option("gowalla"),
    limit: int = typer.Option(None, help="load only this many events (quick runs)"),
    out: Path = typer.Option(None, help="also write the RESULT JSON here"),
    var: Path = typer.Option(None, help="keep data and logs here (default: a temporary directory)"),
    workers: str = typer.Option(None, help="issue 18: worker counts (IG_WORKER_PARTITIONS = N each), e.g. 1,2,3"),
    find_rate: bool = typer.Option(False, help="with --workers: the highest rate with p99 <= 1 s (from --rate up)"),
    probe_s: float = typer.Option(20.0, help="with --workers: seconds per rate probe"),
    max_probes: int = typer.Option(5, help="with --find-rate: probes per worker count"),
    overload_s: float = typer.Option(0.0, help="with --workers: 2x the sustainable rate this long (first N), 0 = none"),
    overload_normal: str = typer.Option(
        "1", help="with --overload-s: the normal load around the overload as shares of the sustainable rate, e.g. 1,0.8"
    ),
    overload_rate: float = typer.Option(
        None, help="with --overload-s: the sustainable rate to overload at 2x (default: the one this run finds)"
    ),
    cost_events: int = typer.Option(3000, help="with --workers: events of the CPU-cost phase"),
    cost_queries: int = typer.Option(1000, help="with --workers: RecommendForUser queries of the CPU-cost phase"),
    worker_threads: int = typer.Option(
        None, help="with --workers: each worker's round threads (IG_WORKER_RECOMPUTE_THREADS; 0: the libraries' default)"
    ),
    model: str = typer.Option("spectral-sage", help="model kind the worker trains and serves"),
    layers: int = typer.Option(2, help="message-passing layers of a hetero-* model"),
    dim: int = typer.Option(64, help="embedding width of a hetero-* model (IG_EMBEDDING_DIM of the run)"),
    repeat_users: bool = typer.Option(
        False, help="a stream longer than the users last: they send again, in the same order; latency is of first events"
    ),
    prepare: Path = typer.Option(None, help="load, train and roll out into this directory, then stop (see --prepared)"),
    prepared: Path = typer.Option(
        None, help="start from a copy of a --prepare directory: the same graph and model, no load or training"
    ),
) -> None:
    # a hetero-* model: trained for one epoch on the live graph and served at its width, as bench.incremental does
    hetero = model.startswith("hetero-")
    extra = {"IG_MODEL_LAYERS": str(layers), "IG_TRAIN_MAX_EPOCHS": "1", "IG_TRAIN_VAL_FRACTION": "0"} if hetero else {}
    gs = GraphSettings(embedding_dim=dim) if hetero else None
    if prepare:  # the setup (minutes on gowalla) once, so that measurement runs fit between others' turns
        with pipeline(prepare, dataset=dataset, limit=limit, server=True, model=model, graph=gs, worker_extra=extra) as p:
            log(f"prepared {prepare}: {dataset}, {p.version} rolled out")
        return
    with contextlib.ExitStack() as stack:
        tmp = Path(var) if var else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-freshness-")))
        if prepared:  # a fresh copy each run: every run starts from the same graph
            shutil.copytree(prepared, tmp, dirs_exist_ok=True)
        p = stack.enter_context(
            pipeline(
                tmp, dataset=dataset, limit=limit, server=True, model=model, graph=gs, worker_extra=extra, prepared=bool(prepared)
            )
        )
        key = p.graph.pseudonym_key.get_secret_value()
        if workers:
            items, external = stream_inputs(p, dataset, key, 1)
            counts = [int(w) for w in workers.split(",") if w.strip()]
            result = freshness_load.run(
                p,
                users=external,
                items=items,
                workers=counts,
                rate=rate,
                find=find_rate,
                probe_s=probe_s,
                max_probes=max_probes,
                overload_s=overload_s,
                cost_events=cost_events,
                cost_queries=cost_queries,
                worker_threads=worker_threads,
                overload_normal=tuple(float(x) for x in overload_normal.split(",") if x.strip()),
                overload_rate=overload_rate,
                # each worker count's row as it is measured: a long run that is stopped keeps what it measured
                partial=lambda r: out.with_suffix(".partial.json").write_text(json.dumps(r, indent=2)) if out else None,
            )
            emit_result({**result, "dataset": dataset}, out)
            return
        n_users = p.driver.execute_query(_USERS).records[0]["n"]
        needed = int(rate * duration_s) + 1
        items, external = stream_inputs(p, dataset, key, 1 if repeat_users else needed)
        # with --repeat-users (the hetero pending set's backlog over a longer load than amazon-hin has users for), a
        # user's second event comes after every user has sent one: only first events are timed (`answered` is a
        # user's first answered upsert)
        order = (external * (needed // len(external) + 1))[:needed]
        scheduler = start_scheduler(p)
        watch = StreamWatch(p.redis_url, p.env.get("IG_WORKER_DELTA_STREAM", "ig:embeddings"))
        watch.start()
        backlog = _Backlog(p.redis_url) if hetero else None
        if backlog is not None:
            backlog.start()
        try:
            log(f"streaming {rate:g} events/s for {duration_s:g}s ({n_users:,} users, {len(items):,} items)")
            sent = asyncio.run(send(p.server_port, order, items, rate, duration_s, seed=2))
            sent_s = time.time()
            firsts: dict[str, float] = {}
            for u, at in sent:
                firsts.setdefault(u, at)
            acks = list(firsts.items())
            once = {u for u, n in collections.Counter(u for u, _ in sent).items() if n == 1}  # Neo4j keeps the last write
            at_last = backlog.series[-1][1] if backlog is not None and backlog.series else None
            pseudo = {u: pseudonymise(key, u) for u, _ in acks}
            deadline = time.time() + 60
            while time.time() < deadline and not all(pseudo[u] in watch.answered for u, _ in acks):
                time.sleep(0.2)
            log(f"sent {len(acks):,}; all published {time.time() - sent_s:.1f}s after the last")
            drained_s = _drained(p, sent_s) if hetero else None
            # the ego vectors (SimilarUsers) follow in ego rounds of their own: how long after the last event they drain
            while time.time() < deadline + 60 and count_ego_marks(p.driver):
                time.sleep(0.2)
            ego_drained_s = round(time.time() - sent_s, 1)
        finally:
            watch.stop.set()
            if backlog is not None:
                backlog.stop.set()
            process.stop(scheduler)
        # The user's vector that answers its event's mark (published by the round that read the mark), not a
        # recompute for a neighbour's change before that round: with a K-layer encoder a user is also rewritten when
        # an item it keeps moves, which may come before its own event is in. `first_seen_*`: the first upsert of the
        # user after the stream's tail at start, whatever caused it (this bench's figure before 2026-12-06).
        missing = [u for u, _ in acks if pseudo[u] not in watch.answered]
        stream_lat = [watch.answered[pseudo[u]] - at for u, at in acks if pseudo[u] in watch.answered]
        first_seen = [watch.seen[pseudo[u]] - at for u, at in acks if pseudo[u] in watch.seen]
        rows = p.driver.execute_query(_UPDATED, ids=list(pseudo.values())).records
        written = {r["id"]: r["at"] for r in rows}
        neo4j_lat = [written[pseudo[u]] - at for u, at in acks if written.get(pseudo[u]) and u in once]
        # the user's ego vector written after the ack (a model without an ego GIN writes none)
        ego = {r["id"]: r["ego_at"] for r in rows if r["ego_at"] is not None}
        ego_lat = [ego[pseudo[u]] - at for u, at in acks if ego.get(pseudo[u], 0.0) > at and u in once]
        result = {
            "bench": "freshness",
            "dataset": dataset,
            "model": model,
            "rate": round(len(sent) / duration_s, 1),
            "events": len(sent),
            "timed_events": len(acks),
            "duration_s": duration_s,
            **percentiles(stream_lat),
            **({f"neo4j_{k}": v for k, v in percentiles(neo4j_lat).items()} if neo4j_lat else {}),
            **{f"first_seen_{k}": v for k, v in percentiles(first_seen).items()},
            "missing": len(missing),
            **({f"ego_{k}": v for k, v in percentiles(ego_lat).items()} if ego_lat else {}),
            "ego_written": len(ego_lat),
            "ego_drained_after_last_s": ego_drained_s,
        }
        if hetero:  # the items lag their users by the pending set's backlog: when it and the marks were empty
            result["drained_s_after_last"] = drained_s
            assert backlog is not None
            result["pending_max"] = max((n for _, n, _ in backlog.series), default=0)
            result["pending_at_last_event"] = at_last
            # the oldest entry's wait: held near IG_WORKER_HETERO_MAX_LAG_S under a load the chunks cannot keep up with
            result["pending_oldest_max_s"] = max((a for _, _, a in backlog.series), default=0.0)
            # [seconds from the stream's start, entries, oldest entry's wait] every 2 s: whether the backlog stays bounded
            result["pending_series"] = [[t, n, a] for t, n, a in backlog.series[::4]]
    emit_result(result, out)


class _Backlog(threading.Thread):
    """Samples the hetero pending set (`workers.hetero_recompute.PendingSet`) every 0.5 s: its size, and how long its
    oldest entry has waited (what `IG_WORKER_HETERO_MAX_LAG_S` bounds: the items' lag behind their shoppers)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client, self.stop, self.start_s = redis.Redis.from_url(url), threading.Event(), time.time()
        self.series: list[tuple[float, int, float]] = []

    def run(self) -> None:
        while not self.stop.wait(0.5):
            now = time.time()
            oldest = self.client.zrange(HETERO_PENDING, 0, 0, withscores=True)
            age = max(0.0, now - float(oldest[0][1])) if oldest else 0.0
            self.series.append((round(now - self.start_s, 1), int(self.client.zcard(HETERO_PENDING)), round(age, 1)))
        self.client.close()


def _drained(p: Any, since: float, limit_s: float = 300.0) -> float | None:
    """Seconds from ``since`` until no mark and no pending entry (`workers.hetero_recompute.PendingSet`) is left."""
    client = redis.Redis.from_url(p.redis_url)
    deadline = time.time() + limit_s
    try:
        while time.time() < deadline:
            if not client.zcard(HETERO_PENDING) and not count_marks(p.driver):
                return round(time.time() - since, 1)
            time.sleep(0.2)
        return None
    finally:
        client.close()


def _external_users(p, dataset: str, key: str) -> list[str]:
    """External ids of the users in the graph (it holds pseudonyms): the dataset's ids that are present."""
    ids = sorted({e["user_id"] for e in DATASETS[dataset].events(DataSettings().dataset_dir(dataset))})
    present = {r["id"] for r in p.driver.execute_query("MATCH (u:User) RETURN u.id AS id").records}
    return [u for u in ids if pseudonymise(key, u) in present]


if __name__ == "__main__":
    typer.run(main)
