"""Freshness as load grows (issue 18 item 2): N partitioned workers, a steady event rate, the highest rate that
keeps freshness p99 <= 1 s, the CPU seconds per event of each process, and an overload run with its timeline.

Used by ``python -m bench.freshness --workers 1,2,3 [--rate R | --find-rate] [--overload-s 60]``. For each worker
count N the pipeline's worker is replaced by N Celery workers and a scheduler, all with ``IG_WORKER_PARTITIONS=N``
(N = 1: the global lock, today's default). Then:

- costs: the scheduler stopped, ``--cost-events`` events go through ``IngestEvents`` (the server's and Neo4j's
  CPU: ingest), then ``interest.recompute`` tasks drain them (the workers', Neo4j's and the server's CPU, the
  last being its delta consumption; the drain goes on until the ego marks are gone too), then RecommendForUser
  queries (the server's and Neo4j's CPU per query). The workers' CPU is split into ego (the ego rounds'
  own CPU seconds, ``ego.cpu_s`` of each task), recompute and publish (the rest, by the rounds' own timers:
  ``publish_s`` of ``write_s``); the RESULT's ``recompute_cpu_ratio`` compares all of it to one worker's.
- probes: events at a steady rate for ``--probe-s`` with the scheduler running; freshness is from the ack to the
  user's first vector on the delta stream after it. ``--find-rate`` grows the rate by 1.5x while p99 <= 1 s and
  nothing is missing, then bisects once between the last pass and the first failure.
- overload (first N only): the normal load for 20 s, twice the sustainable rate for ``--overload-s``, then the
  normal load for twice as long, once per ``--overload-normal`` share (the normal load as a share of the
  sustainable rate: 1 = the ceiling itself, 0.8 = an operator's headroom), each from a drained backlog; a
  sampler records every 5 s the marks waiting, the oldest mark's age, the recompute tasks in the Celery queue,
  and the p99 of the events acknowledged in that window. Recovered: every window's p99 <= 1 s from then on;
  drained: no mark older than 5 s from then on (both counted from the overload's end). The sustainable rate is
  this run's (``--find-rate``), or ``--overload-rate`` (one measured before: the same overload for two builds).

Events come from the graph's users in a fixed shuffled cycle: a user recurs after users/rate seconds (about 30 s
at 1,000/s on gowalla), so a latency is exact while the backlog is younger than that (RESULT ``recurrence_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import subprocess
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import psutil
import redis

from bench._paced_ingest import Ack, paced_ingest
from bench._stack import Pipeline, log
from bench._stream_watch import StreamWatch
from graphdb import localstack
from graphdb.changes import backlog, count_marks
from graphdb.ego import count_ego_marks
from graphdb.pseudonym import pseudonymise
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from workers import process
from workers.settings import WorkerSettings

TARGET_P99_S = 1.0
WINDOW_S = 5.0


# ------------------------------------------------------------------------------------------------ processes
def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (a process that is gone counts 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


@dataclass
class Fleet:
    """N workers and a scheduler, all with ``IG_WORKER_PARTITIONS=N``."""

    p: Pipeline
    workers: list[subprocess.Popen]
    logs: list[Path]
    env: dict[str, str]
    scheduler: subprocess.Popen | None = None

    @property
    def partitions(self) -> int:
        return int(self.env["IG_WORKER_PARTITIONS"])

    def pids(self) -> dict[str, list[int]]:
        neo4j_pid = localstack._services(self.p.stack)[0].pid()
        return {
            "workers": [w.pid for w in self.workers],
            "neo4j": [neo4j_pid] if neo4j_pid else [],
            "server": _server_pids(),
            "scheduler": [self.scheduler.pid] if self.scheduler else [],
        }

    def cpu(self) -> dict[str, float]:
        return {name: cpu_s(pids) for name, pids in self.pids().items()}

    def start_scheduler(self) -> None:
        self.p.redis.delete(self.env.get("IG_WORKER_CHANGED_KEY", "ig:changed"))  # signals of the cost phase
        self.scheduler = process.start_scheduler(self.env, self.p.var / f"scheduler-{len(self.workers)}.log")

    def stop_scheduler(self) -> None:
        if self.scheduler is not None:
            process.stop(self.scheduler)
            self.scheduler = None

    def lock_wait(self) -> dict[str, float]:
        """``ig_worker_recompute_lock_wait_seconds`` summed over the workers (sum and count of the histogram)."""
        out = {"sum_s": 0.0, "tasks": 0.0}
        for path in self.logs:
            text = urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port(path)}/metrics", timeout=10).read().decode()
            for line in text.splitlines():
                if line.startswith("ig_worker_recompute_lock_wait_seconds_sum"):
                    out["sum_s"] += float(line.split()[-1])
                elif line.startswith("ig_worker_recompute_lock_wait_seconds_count"):
                    out["tasks"] += float(line.split()[-1])
        return {"sum_s": round(out["sum_s"], 6), "tasks": int(out["tasks"])}


def _server_pids() -> list[int]:
    """The gRPC server this bench started (``python -m server``) and its serving processes, if it has several."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.cmdline()[-2:] == ["-m", "server"]:
                return [child.pid] + [c.pid for c in child.children(recursive=True)]
    raise RuntimeError("no `python -m server` among this bench's processes")


@contextlib.contextmanager
def fleet(p: Pipeline, n: int, threads: int | None = None) -> Iterator[Fleet]:
    """``threads``: the workers' round threads (``IG_WORKER_RECOMPUTE_THREADS``; None = its default, 0 = the
    libraries' default, one per core)."""
    env = {**p.env, "IG_WORKER_PARTITIONS": str(n), **({"IG_WORKER_RECOMPUTE_THREADS": str(threads)} if threads is not None else {})}
    logs = [p.var / f"worker-{n}-{k}.log" for k in range(n)]
    procs: list[subprocess.Popen] = []
    f = Fleet(p, procs, logs, env)
    try:
        for path in logs:
            procs.append(process.start_worker(env, path))
        for proc in procs:
            process.wait_for_worker(p.app, proc, timeout_s=120)
        yield f
    finally:
        f.stop_scheduler()
        for proc in procs:
            process.stop(proc)


# ------------------------------------------------------------------------------------------------ the stream
@dataclass
class Stream:
    """The shuffled cycle of users the events come from, and what was acknowledged."""

    users: list[str]
    items: list[str]
    key: str
    cycle: Iterator[str] = field(init=False)
    pseudo: dict[str, str] = field(default_factory=dict)
    n: int = 0

    def __post_init__(self) -> None:
        self.cycle = itertools.cycle(self.users)

    def events(self, k: int, rng: random.Random) -> list[pb.Event]:
        out = []
        for _ in range(k):
            self.n += 1
            out.append(
                pb.Event(
                    event_id=f"load-{self.n}",
                    user_id=next(self.cycle),
                    type=pb.EVENT_TYPE_CLICK,
                    item_id=rng.choice(self.items),
                    ts=time.time(),
                )
            )
        return out

    def node(self, user: str) -> str:
        if user not in self.pseudo:
            self.pseudo[user] = pseudonymise(self.key, user)
        return self.pseudo[user]


async def send(port: int, stream: Stream, schedule: list[tuple[float, float]], seed: int) -> list[Ack]:
    """Events through IngestEvents, a request per 50 ms, at each (duration_s, rate) of ``schedule`` in turn."""
    rng = random.Random(seed)
    return await paced_ingest(port, lambda k: stream.events(k, rng), schedule)


def latencies(watch: StreamWatch, stream: Stream, acks: list[Ack], wait_s: float) -> tuple[list[tuple[float, float]], int]:
    """(ack time, latency) of each event once its vector is out (waiting at most ``wait_s``), and how many are not.
    The event's vector is the user's first one on the stream after the request was sent (a round may publish it
    before this client has read the ack; it counts 0 then)."""
    deadline = time.time() + wait_s
    while time.time() < deadline and any(watch.first_after(stream.node(u), sent) is None for u, sent, _ in acks[-200:]):
        time.sleep(0.2)
    while time.time() < deadline and any(watch.first_after(stream.node(u), sent) is None for u, sent, _ in acks):
        time.sleep(0.5)
    out, missing = [], 0
    for u, sent, at in acks:
        t = watch.first_after(stream.node(u), sent)
        if t is None:
            missing += 1
        else:
            out.append((at, max(0.0, t - at)))
    return out, missing


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 3) if values else None


def wait_drained(p: Pipeline, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if count_marks(p.driver) == 0:
            return True
        time.sleep(0.5)
    return False


# ------------------------------------------------------------------------------------------------ measurements
def _drain(f: Fleet, serial: bool = False) -> dict[str, float]:
    """``interest.recompute`` tasks, one per partition (all at once, or ``serial``: each after the previous one),
    until no mark and no ego mark is left (a task's ego rounds skip a partition whose ego lock another task
    holds: its marks wait for the next); the rounds' summed timers, the tasks' own CPU seconds of their user
    rounds (``round_cpu_s``) and ego rounds (``ego_cpu_s``), and the ego rounds' counts."""
    p = f.p
    timings = {"pull_s": 0.0, "forward_s": 0.0, "write_s": 0.0, "publish_s": 0.0, "round_cpu_s": 0.0, "ego_cpu_s": 0.0, "ego_s": 0.0}
    timings.update(dict.fromkeys(("ego_rounds", "ego_marks", "ego_stale", "ego_skipped", "tasks"), 0))
    while count_marks(p.driver) or count_ego_marks(p.driver):
        kwargs = [{}] if f.partitions == 1 else [{"partition": q} for q in range(f.partitions)]
        sent = [] if serial else [p.app.send_task("interest.recompute", kwargs=k) for k in kwargs]
        for k in kwargs:
            res = (p.app.send_task("interest.recompute", kwargs=k) if serial else sent.pop(0)).get(timeout=1800)
            if res.get("error") == "Unavailable":  # a round outlived its partition's lock: its marks stay, the loop retries
                log(f"recompute round gave its partition back: {res.get('message')}")
                continue
            if "error" in res:
                raise RuntimeError(res)
            for name in ("pull_s", "forward_s", "write_s", "publish_s", "round_cpu_s"):
                timings[name] += res.get(name, 0.0)
            ego = res.get("ego", {})
            timings["ego_cpu_s"] += ego.get("cpu_s", 0.0)
            timings["ego_s"] += ego.get("s", 0.0)
            for name in ("rounds", "marks", "stale"):
                timings[f"ego_{name}"] += ego.get(name, 0)
            timings["ego_skipped"] += len(ego.get("skipped", []))
            timings["tasks"] += 1
    return timings


def costs(f: Fleet, stream: Stream, events: int, queries: int) -> dict:
    """CPU seconds per event of each part, and per query of the server and Neo4j (see the module doc)."""
    p = f.p
    rng = random.Random(7)
    # not counted: the model loading in each worker, and as many events as are measured, so that Neo4j's page cache
    # and query plans are as warm for the first worker count as for the next (a --prepared Neo4j starts cold)
    asyncio.run(_ingest_fast(p.server_port, stream, events, rng))
    _drain(f)
    c0 = f.cpu()
    asyncio.run(_ingest_fast(p.server_port, stream, events, rng))
    c1 = f.cpu()
    timings = _drain(f)
    time.sleep(1.0)  # let the server's delta consumer apply the last deltas: its CPU is the "server" part
    c2 = f.cpu()
    asyncio.run(_query(p.server_port, stream.users[:queries]))
    c3 = f.cpu()
    worker = c2["workers"] - c1["workers"]
    total = timings["pull_s"] + timings["forward_s"] + timings["write_s"]
    publish_share = timings["publish_s"] / total if total else 0.0
    # The ego rounds (SimilarUsers' vectors) are the workers' work per event too, counted apart by the tasks' own
    # CPU seconds (before 2026-12-06 10:00 they were inside "recompute"); the rest is the user rounds' and Celery's.
    ego = min(timings["ego_cpu_s"], worker)
    per = {
        "ingest": (c1["server"] - c0["server"]) / events,
        "neo4j": (c2["neo4j"] - c0["neo4j"]) / events,
        "recompute": (worker - ego) * (1 - publish_share) / events,
        "publish": (worker - ego) * publish_share / events,
        "ego": ego / events,
        "server": (c2["server"] - c1["server"]) / events,
    }
    detail: dict[str, Any] = {
        "neo4j_ingest": round((c1["neo4j"] - c0["neo4j"]) / events, 6),
        "neo4j_recompute": round((c2["neo4j"] - c1["neo4j"]) / events, 6),
        "workers_total": round(worker / events, 6),
        "round_timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    if f.partitions > 1:
        # the same partitions drained one at a time: what partitioning costs apart from running at once
        asyncio.run(_ingest_fast(p.server_port, stream, events, rng))
        s0 = f.cpu()
        serial = _drain(f, serial=True)
        s1 = f.cpu()
        detail["workers_total_serial"] = round((s1["workers"] - s0["workers"]) / events, 6)
        detail["ego_serial"] = round(serial["ego_cpu_s"] / events, 6)
        detail["neo4j_recompute_serial"] = round((s1["neo4j"] - s0["neo4j"]) / events, 6)
        detail["round_timings_serial_s"] = {k: round(v, 3) for k, v in serial.items()}
    return {
        "cpu_s_per_event": {k: round(v, 6) for k, v in per.items()},
        "cpu_s_per_event_detail": detail,
        "cpu_s_per_query": {
            "server": round((c3["server"] - c2["server"]) / queries, 6),
            "neo4j": round((c3["neo4j"] - c2["neo4j"]) / queries, 6),
        },
        "cost_events": events,
        "cost_queries": queries,
    }


async def _ingest_fast(port: int, stream: Stream, events: int, rng: random.Random) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InterestServiceStub(channel)

        async def one(batch: list[pb.Event]) -> None:
            reply = await stub.IngestEvents(iter([pb.IngestEventsRequest(events=batch)]), timeout=120)
            if reply.accepted != len(batch):
                raise RuntimeError(f"events not accepted: {reply}")

        batches = [stream.events(min(100, events - s), rng) for s in range(0, events, 100)]
        for s in range(0, len(batches), 4):  # 4 requests in flight, as several storefront callers would
            await asyncio.gather(*(one(b) for b in batches[s : s + 4]))


async def _query(port: int, users: list[str]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InterestServiceStub(channel)
        for s in range(0, len(users), 8):
            await asyncio.gather(
                *(stub.RecommendForUser(pb.RecommendForUserRequest(user_id=u, k=10), timeout=30) for u in users[s : s + 8])
            )


def probe(f: Fleet, stream: Stream, rate: float, duration_s: float, seed: int) -> dict:
    """A steady ``rate`` for ``duration_s``: freshness percentiles and the CPU per event of each process."""
    p = f.p
    watch = StreamWatch(p.redis_url, p.env.get("IG_WORKER_DELTA_STREAM", "ig:embeddings"))
    watch.start()
    c0 = f.cpu()
    try:
        acks = asyncio.run(send(p.server_port, stream, [(duration_s, rate)], seed))
        lat, missing = latencies(watch, stream, acks, wait_s=60)
    finally:
        watch.stop.set()
    c1 = f.cpu()
    values = [v for _, v in lat]
    row = {
        "rate": round(rate, 1),
        "sent_rate": round(len(acks) / duration_s, 1),
        "events": len(acks),
        "p50_s": pct(values, 50),
        "p99_s": pct(values, 99),
        "max_s": round(max(values), 3) if values else None,
        "missing": missing,
        "cpu_s_per_event_by_process": {k: round((c1[k] - c0[k]) / max(len(acks), 1), 6) for k in c0},
    }
    row["ok"] = bool(missing == 0 and row["p99_s"] is not None and row["p99_s"] <= TARGET_P99_S)
    log(f"{len(f.workers)} worker(s) at {rate:.0f}/s: p50 {row['p50_s']} s, p99 {row['p99_s']} s, missing {missing}")
    wait_drained(p, 120)
    return row


def find_rate(f: Fleet, stream: Stream, start: float, duration_s: float, max_probes: int) -> tuple[float | None, list[dict]]:
    """The highest probed rate with p99 <= 1 s: grow by 1.5x until one fails, then bisect once."""
    rows: list[dict] = []
    good, bad, rate = None, None, start
    while len(rows) < max_probes:
        row = probe(f, stream, rate, duration_s, seed=len(rows))
        rows.append(row)
        if row["ok"]:
            good = rate
        else:
            bad = rate
        if bad is None:
            rate *= 1.5
        elif good is None:
            rate /= 2
        elif bad / good > 1.2 and len(rows) < max_probes:
            rate = (good + bad) / 2
        else:
            break
    return good, rows


def overload(f: Fleet, stream: Stream, rate: float, overload_s: float, normal_share: float = 1.0) -> dict:
    """The normal load (``normal_share`` of the sustainable ``rate``) for 20 s, 2x ``rate`` for ``overload_s``, then
    the normal load for 2x as long; a 5 s timeline."""
    p = f.p
    normal = rate * normal_share
    schedule = [(20.0, normal), (overload_s, 2 * rate), (2 * overload_s, normal)]
    watch = StreamWatch(p.redis_url, p.env.get("IG_WORKER_DELTA_STREAM", "ig:embeddings"))
    sampler = _Sampler(p)
    watch.start()
    sampler.start()
    t0 = time.time()
    try:
        acks = asyncio.run(send(p.server_port, stream, schedule, seed=99))
        lat, missing = latencies(watch, stream, acks, wait_s=120)
    finally:
        watch.stop.set()
        sampler.stop.set()
        sampler.join()
    over_from, over_to = t0 + 20.0, t0 + 20.0 + overload_s
    by_window: dict[int, list[float]] = defaultdict(list)
    for at, v in lat:
        by_window[int((at - t0) // WINDOW_S)].append(v)
    sent: dict[int, int] = defaultdict(int)
    for _, _, at in acks:
        sent[int((at - t0) // WINDOW_S)] += 1
    timeline = []
    for s in sampler.samples:
        w = int((s["t"] - t0) // WINDOW_S) - 1  # the window that just closed
        timeline.append(
            {
                "t_s": round(s["t"] - t0, 1),
                "rate_in": round(sent.get(w, 0) / WINDOW_S, 1),
                "marks_waiting": s["marks_waiting"],
                "oldest_mark_age_s": s["oldest_mark_age_s"],
                "celery_queue": s["celery_queue"],
                "p99_s": pct(by_window.get(w, []), 99),
            }
        )
    # recovered: from the end of the overload, the first 5 s window after which every window's p99 is <= 1 s
    after = sorted(w for w in by_window if t0 + w * WINDOW_S >= over_to)
    recovered = None
    for k, w in enumerate(after):
        if all((pct(by_window[x], 99) or 0) <= TARGET_P99_S for x in after[k:]):
            recovered = round(max(0.0, t0 + w * WINDOW_S - over_to), 1)
            break
    # drained: from the end of the overload, the first sample after which no mark older than one sampling window
    # waits (the backlog's marks are all gone, not only its count down); None if the run ended before that
    later = [s for s in sampler.samples if s["t"] >= over_to]
    drained = None
    for k, s in enumerate(later):
        if all(x["oldest_mark_age_s"] <= WINDOW_S for x in later[k:]):
            drained = round(s["t"] - over_to, 1)
            break
    return {
        "rate": rate,
        "normal_share": normal_share,
        "normal_rate": round(normal, 1),
        "overload_rate": 2 * rate,
        "overload_s": overload_s,
        "events": len(acks),
        "missing": missing,
        "p99_during_overload_s": pct([v for at, v in lat if over_from <= at < over_to], 99),
        "p99_after_overload_s": pct([v for at, v in lat if at >= over_to], 99),
        "max_marks_waiting": max((s["marks_waiting"] for s in sampler.samples), default=0),
        "max_celery_queue": max((s["celery_queue"] for s in sampler.samples), default=0),
        "recovered_after_s": recovered,
        "recovered_within_2x": recovered is not None and recovered <= 2 * overload_s,
        "drained_after_s": drained,
        "drained_within_2x": drained is not None and drained <= 2 * overload_s,
        "marks_at_end": later[-1]["marks_waiting"] if later else None,
        "timeline": timeline,
    }


class _Sampler(threading.Thread):
    """Every 5 s: the backlog (what ig_worker_marks_waiting / ig_worker_oldest_mark_age_seconds export) and the
    recompute tasks waiting in the Celery queue."""

    def __init__(self, p: Pipeline) -> None:
        super().__init__(daemon=True)
        self.p = p
        self.broker = redis.Redis.from_url(p.env["IG_WORKER_BROKER_URL"])
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(WINDOW_S):
            waiting, oldest = backlog(self.p.driver)
            now = time.time()
            self.samples.append(
                {
                    "t": now,
                    "marks_waiting": waiting,
                    "oldest_mark_age_s": round(max(0.0, now - oldest), 2) if oldest is not None else 0.0,
                    "celery_queue": int(self.broker.llen("gpu")),
                }
            )


def run(
    p: Pipeline,
    *,
    users: list[str],
    items: list[str],
    workers: list[int],
    rate: float | None,
    find: bool,
    probe_s: float,
    max_probes: int,
    overload_s: float,
    cost_events: int,
    cost_queries: int,
    partial: Callable[[dict], None] = lambda _result: None,
    worker_threads: int | None = None,
    overload_normal: tuple[float, ...] = (1.0,),
    overload_rate: float | None = None,
) -> dict:
    """Every measurement above for each worker count; the RESULT dict."""
    stream = Stream(users, items, p.graph.pseudonym_key.get_secret_value())
    process.stop(p.worker)  # each worker count runs its own workers
    rows = []
    overs: list[dict] = []
    for n in workers:
        with fleet(p, n, worker_threads) as f:
            log(f"{n} worker(s), IG_WORKER_PARTITIONS={n}: costs")
            row: dict[str, Any] = {"workers": n, "partitions": n, **costs(f, stream, cost_events, cost_queries)}
            f.start_scheduler()
            if find:
                good, probes = find_rate(f, stream, rate or 200.0, probe_s, max_probes)
            else:
                probes = [probe(f, stream, rate or 200.0, probe_s, seed=0)]
                good = probes[0]["rate"] if probes[0]["ok"] else None
            row.update({"sustainable_rate": good, "probes": probes, "lock_wait": f.lock_wait()})
            best = next((r for r in probes if r["rate"] == good), probes[-1])
            row.update({k: best[k] for k in ("rate", "p50_s", "p99_s", "max_s", "missing")})
            base = overload_rate or good  # 2x a rate that was sustained (in this run, or in the one overload_rate names)
            if overload_s > 0 and not overs and base is not None:
                for share in overload_normal:
                    wait_drained(p, 300)  # each from a drained backlog
                    log(f"overload: 2x {base:.0f}/s for {overload_s:.0f}s, normal {share:g}x {base:.0f}/s")
                    overs.append({"workers": n, **overload(f, stream, base, overload_s, share)})
                    log(
                        f"  recovered after {overs[-1]['recovered_after_s']} s, drained after {overs[-1]['drained_after_s']} s, "
                        f"p99 after {overs[-1]['p99_after_overload_s']} s"
                    )
                    partial({"bench": "freshness", "partial": True, "rows": [*rows, row], "overloads": overs})
                row["lock_wait"] = f.lock_wait()
            rows.append(row)
            partial({"bench": "freshness", "partial": True, "rows": rows, **({"overloads": overs} if overs else {})})
    first = rows[0]
    result: dict[str, Any] = {
        "bench": "freshness",
        "workers": first["workers"],
        "rate": first["rate"],
        "p50_s": first["p50_s"],
        "p99_s": first["p99_s"],
        "sustainable_rate": first["sustainable_rate"],
        "cpu_s_per_event": first["cpu_s_per_event"],
        "users": len(users),
        "worker_threads": WorkerSettings().recompute_threads if worker_threads is None else worker_threads or "libraries' default",
        "recurrence_s": round(len(users) / max(first["rate"] or 1.0, 1.0), 1),
        "rows": rows,
    }
    if len(rows) > 1:
        # the workers' CPU per event, all of it (user rounds, ego rounds, publish: the figure before the ego rounds
        # were apart), and its two parts
        base = first["cpu_s_per_event_detail"]["workers_total"]
        result["recompute_cpu_ratio"] = {
            str(r["workers"]): round(r["cpu_s_per_event_detail"]["workers_total"] / base, 3) for r in rows[1:]
        }
        serial = {str(r["workers"]): r["cpu_s_per_event_detail"].get("workers_total_serial") for r in rows[1:]}
        result["recompute_cpu_ratio_serial"] = {k: round(v / base, 3) if v else None for k, v in serial.items()}
        users_base = first["cpu_s_per_event"]["recompute"] + first["cpu_s_per_event"]["publish"]
        result["user_round_cpu_ratio"] = {
            str(r["workers"]): round((r["cpu_s_per_event"]["recompute"] + r["cpu_s_per_event"]["publish"]) / users_base, 3)
            for r in rows[1:]
        }
        if first["cpu_s_per_event"]["ego"]:
            result["ego_cpu_ratio"] = {
                str(r["workers"]): round(r["cpu_s_per_event"]["ego"] / first["cpu_s_per_event"]["ego"], 3) for r in rows[1:]
            }
        result["sustainable_rate_by_workers"] = {str(r["workers"]): r["sustainable_rate"] for r in rows}
    if overs:
        result["overload"] = overs[0]  # the first normal load's (the runs before 2026-12-06 14:00 had only this one)
        result["overloads"] = overs
    return result
