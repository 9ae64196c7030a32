"""Soak: mixed traffic for a while against a real server, Neo4j and Redis, then a reconciliation of the graph.

``python -m bench.soak --duration-s 600 [--faults] [--out FILE]`` starts Neo4j and Redis (free loopback ports, a
temporary directory), seeds a catalogue and a purchase history, starts a Celery worker, trains the served model on
that graph and rolls it out (worker tasks), then starts ``python -m server`` and the recompute scheduler, and runs,
concurrently:

- several IngestEvents streams with unique event ids (views, clicks, carts, purchases, searches), each stream
  retried with the same ids until acknowledged, plus re-sends of acknowledged streams (all duplicates);
- SimilarItems, RecommendForUser and NearestItems queries, some with category filters;
- a freshness probe: every 2 s one event by a new shopper, timed from its acknowledgement to the shopper's first
  vector on the delta stream (the worker's recompute, published to the server);
- with ``--faults``, every ``--fault-every-s`` in turn: a worker SIGKILLed and started again (the workers in turn),
  Redis restarted (same port and append-only file), optionally Neo4j's JVM SIGKILLed and started again on the same
  store and port (``--fault-kinds worker,redis,neo4j``): it recovers from its transaction log, and the server, the
  workers and the scheduler reconnect through their drivers.

``--workers N --partitions P`` runs N workers with ``IG_WORKER_PARTITIONS=P`` (``workers.partitions``).

Afterwards it waits until the worker has cleared every change mark, then checks: per (user, target, behaviour) the
stored ``count`` equals the seeded plus acknowledged events (``lost`` and ``duplicated`` count the differences);
every stored vector, and every user's last vector on the delta stream, equals a full recompute of the final graph
with the served model (``workers.recompute.full_vectors``, within 1e-4). Resident memory of each process
(``Soak.processes``) is sampled after a warm-up; growth = last sample - first sample after the warm-up (for a
restarted process: since its last start).

Prints ``RESULT {"bench": "soak", "duration_s", "events", "lost", "duplicated", "errors", "rss_growth_mb": {...},
"faults", "marks_left", "vectors_max_diff", "recomputes", "freshness", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._common import emit_result
from bench._stack import train_and_roll_out
from bench._stream_watch import StreamWatch
from bench.freshness import percentiles
from graphdb import localstack, subgraph
from graphdb.changes import count_marks
from graphdb.driver import connect
from graphdb.ingest import ingest_events, query_id
from graphdb.items import ItemRecord, upsert_items
from graphdb.marks import new_token
from graphdb.pseudonym import pseudonymise
from graphdb.schema import REL_FOR_EVENT, USER, migrate
from graphdb.settings import DataSettings, GraphSettings, LocalStackSettings, Neo4jSettings
from ml.settings import ModelSettings, TrainSettings
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from workers import jobs, process
from workers.recompute import full_vectors
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
DIM = 64
STREAM = "ig:embeddings"
KEY = "soak-pseudonym-key"
TYPES = [
    (pb.EVENT_TYPE_VIEW, "view"),
    (pb.EVENT_TYPE_VIEW, "view"),
    (pb.EVENT_TYPE_CLICK, "click"),
    (pb.EVENT_TYPE_ADD_TO_CART, "add_to_cart"),
    (pb.EVENT_TYPE_PURCHASE, "purchase"),
    (pb.EVENT_TYPE_SEARCH, "search"),
]
QUERIES = ["red pen", "stapler", "A4 paper", "desk lamp", "ink cartridge", "notebook", "label maker"]


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class Tally:
    """What the clients saw and what the server acknowledged."""

    acked: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # event id -> (user, target, rel)
    unacked: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # sent, never acknowledged
    codes: Counter = field(default_factory=Counter)  # "Method:CODE" -> calls
    resent: int = 0  # acknowledged streams sent again
    resent_all_duplicates: int = 0
    probes: dict[str, float] = field(default_factory=dict)  # pseudonym of a new shopper -> acknowledgement time

    def error_count(self) -> int:
        return sum(n for k, n in self.codes.items() if not k.endswith(":OK"))


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.var = Path(tempfile.mkdtemp(prefix="ig-soak-"))
        self.stack = LocalStackSettings(
            var_dir=self.var / "stack",
            neo4j_port=localstack.free_port(),
            redis_port=localstack.free_port(),
            neo4j_heap_mb=args.neo4j_heap_mb,
            neo4j_pagecache_mb=256,
            neo4j_tx_memory_mb=512,
        )
        self.graph = GraphSettings(pseudonym_key=KEY, embedding_dim=DIM)
        self.port = localstack.free_port()
        self.items = [f"sku-{j}" for j in range(args.items)]
        self.users = [f"shopper-{j}" for j in range(args.users)]
        self.services: dict[str, localstack.Service] = {}
        self.children: dict[str, subprocess.Popen] = {}
        self.processes: dict[str, int] = {}  # name -> pid of every process whose memory is watched
        self.tally = Tally()
        self.rss: dict[str, list[tuple[float, float]]] = {}
        self.seeded: Counter = Counter()  # (user, target, rel) -> events of the history the model is trained on
        self.faults: list[dict] = []
        self.started_at: dict[str, float] = {}  # name -> when a restarted process started again
        self.traffic_at = time.time()  # wall clock when the traffic began (run_traffic sets it)
        self.rng = random.Random(args.seed)

    # -- processes -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        log(f"starting Neo4j and Redis in {self.var}")
        self.services = localstack.up(self.stack)
        self.driver = connect(Neo4jSettings(uri=f"bolt://127.0.0.1:{self.stack.neo4j_port}"))
        migrate(self.driver, self.graph)
        self._seed_catalogue()
        # A killed worker's recompute comes back after the visibility timeout, and its lock expires after the
        # lock timeout (a recompute here takes well under a second): short, so faults are recovered within the run.
        self.worker_env = process.worker_env(
            neo4j_uri=f"bolt://127.0.0.1:{self.stack.neo4j_port}",
            redis_base=f"redis://127.0.0.1:{self.stack.redis_port}",
            model_dir=self.var / "models",
            text_cache_dir=ROOT / "var" / "text-cache",
            graph=self.graph,
            extra={
                "IG_TRAIN_MAX_EPOCHS": "0",
                "IG_WORKER_VISIBILITY_TIMEOUT_S": "60",
                "IG_WORKER_LOCK_TIMEOUT_S": "20",
                "IG_WORKER_PARTITIONS": str(self.args.partitions),
            },
        )
        self.app = process.client_app(self.worker_env)
        for w in range(self.args.workers):
            self._start_worker(w)
            process.wait_for_worker(self.app, self.children[f"worker-{w}"], timeout_s=120)
        self.version = train_and_roll_out(self.app, self.driver)
        self.env = dict(
            self.worker_env,
            IG_SERVER_HOST="127.0.0.1",
            IG_SERVER_PORT=str(self.port),
            IG_SERVER_AUTH_TOKENS="",
            IG_SERVER_SNAPSHOT_DIR=str(self.var / "snap"),
            IG_SERVER_METRICS_PORT="0",
            IG_SERVER_REDIS_URL=self.redis_url,
            IG_SERVER_DELTA_STREAM=STREAM,
            IG_SERVER_COMPACT_INTERVAL_S="30",
            IG_SERVER_COMPACT_DELTA_MAX="2000",
            IG_SERVER_SNAPSHOT_INTERVAL_S="120",
            # sized for this load, as a deployment would: every ingestion client (and the probe)
            # may hold a stream at once, and recommendations wait on Neo4j beside them
            IG_SERVER_STREAM_THREADS=str(self.args.ingest_streams + 1),
            IG_SERVER_WAIT_THREADS=str(self.args.ingest_streams + 1 + self.args.query_concurrency + 2),
        )
        self._spawn("server", [sys.executable, "-m", "server"])
        self._wait_serving()
        self.children["scheduler"] = process.start_scheduler(self.worker_env, self.var / "scheduler.log")
        self.processes = {
            "server": self.children["server"].pid,
            "neo4j": self.services["neo4j"].pid(),
            "redis": self.services["redis"].pid(),
            **{f"worker-{w}": self.children[f"worker-{w}"].pid for w in range(self.args.workers)},
            "scheduler": self.children["scheduler"].pid,
        }

    def _start_worker(self, w: int) -> None:
        self.children[f"worker-{w}"] = process.start_worker(self.worker_env, self.var / f"worker-{w}.log")

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.stack.redis_port}/0"

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.var / f"{name}.log", "ab")
        self.children[name] = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        out.close()

    def _wait_serving(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.children["server"].poll() is not None:
                    raise RuntimeError("the server exited:\n" + (self.var / "server.log").read_text()[-3000:])
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not report SERVING")
                time.sleep(0.2)

    def _seed_catalogue(self) -> None:
        """Items in ten categories, and a history to train on: each shopper bought a few items of two aisles."""
        records = [
            ItemRecord(id=i, title=f"Item {j}", brand=f"brand-{j % 25}", categories=(("Office", f"Aisle {j % 10}"),))
            for j, i in enumerate(self.items)
        ]
        with self.driver.session() as session:
            for start in range(0, len(records), 2000):
                chunk = records[start : start + 2000]
                session.execute_write(lambda tx: upsert_items(tx, chunk, token=new_token(), now=time.time()))
        events = []
        for u, user in enumerate(self.users):
            aisles = (u % 10, (u * 3 + 1) % 10)
            for k in range(self.args.history):
                item = self.items[self.rng.randrange(len(self.items) // 10) * 10 + aisles[k % 2]]
                events.append(
                    {
                        "event_id": f"seed-{u}-{k}",
                        "user_id": user,
                        "type": "purchase",
                        "ts": time.time() - 86400 * self.rng.random(),
                        "item_id": item,
                    }
                )
                self.seeded[(pseudonymise(KEY, user), item, REL_FOR_EVENT["purchase"])] += 1
        for start in range(0, len(events), 5000):
            if ingest_events(self.driver, self.graph, events[start : start + 5000]).rejected:
                raise RuntimeError("seed events rejected")
        log(f"catalogue: {len(self.items)} items; history: {len(events)} purchases by {len(self.users)} shoppers")

    def stop(self) -> None:
        for name, proc in reversed(list(self.children.items())):
            process.stop(proc, timeout_s=60)
            if proc.returncode not in (0, None):
                log(f"{name} exited with {proc.returncode}")
        if getattr(self, "driver", None) is not None:
            self.driver.close()
        localstack.down(self.stack)
        if not self.args.keep:
            shutil.rmtree(self.var, ignore_errors=True)

    # -- traffic ---------------------------------------------------------------------------------------------------
    def _event(self, event_id: str) -> tuple[pb.Event, tuple[str, str, str]]:
        user = self.rng.choice(self.users)
        type_, name = self.rng.choice(TYPES)
        ts = time.time() - self.rng.uniform(0, 3600)
        if name == "search":
            text = self.rng.choice(QUERIES)
            ev = pb.Event(event_id=event_id, user_id=user, type=type_, query=text, ts=ts)
            target = query_id(text)
        else:
            item = self.rng.choice(self.items)
            ev = pb.Event(event_id=event_id, user_id=user, type=type_, item_id=item, ts=ts)
            target = item
        return ev, (pseudonymise(KEY, user), target, REL_FOR_EVENT[name])

    async def _ingest_stream(self, stub, n: int, stop: asyncio.Event) -> None:
        """One client: streams of a few messages; each retried with the same ids until acknowledged."""
        seq = 0
        period = self.args.ingest_streams * self.args.events_per_stream / self.args.ingest_rate
        while not stop.is_set():
            started = time.monotonic()
            events = [self._event(f"soak-{n}-{seq}-{j}") for j in range(self.args.events_per_stream)]
            seq += 1
            cut = max(1, len(events) // 3)
            messages = [pb.IngestEventsRequest(events=[e for e, _ in events[i : i + cut]]) for i in range(0, len(events), cut)]
            for attempt in range(100):
                try:
                    resp = await stub.IngestEvents(iter(messages), timeout=30)
                except grpc.RpcError as err:
                    self.tally.codes[f"IngestEvents:{err.code().name}"] += 1
                    await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
                    continue
                self.tally.codes["IngestEvents:OK"] += 1
                if resp.rejected or resp.accepted + resp.duplicates != len(events):
                    self.tally.codes["IngestEvents:BAD_SUMMARY"] += 1
                for ev, key in events:
                    self.tally.acked[ev.event_id] = key
                break
            else:
                for ev, key in events:
                    self.tally.unacked[ev.event_id] = key
                continue
            if self.rng.random() < self.args.resend_fraction:  # a client that did not see the answer retries
                try:
                    again = await stub.IngestEvents(iter(messages), timeout=30)
                    self.tally.resent += 1
                    self.tally.resent_all_duplicates += (again.accepted, again.duplicates) == (0, len(events))
                    self.tally.codes["IngestEvents:OK"] += 1
                except grpc.RpcError as err:
                    self.tally.codes[f"IngestEvents:{err.code().name}"] += 1
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def _queries(self, stub, stop: asyncio.Event) -> None:
        period = self.args.query_concurrency / self.args.query_rate
        rng = np.random.default_rng(self.rng.randrange(2**32))
        while not stop.is_set():
            started = time.monotonic()
            kind = self.rng.randrange(3)
            flt = pb.ItemFilter(category_ids=[f"Office > Aisle {self.rng.randrange(10)}"]) if self.rng.random() < 0.2 else None
            try:
                if kind == 0:
                    name = "SimilarItems"
                    resp = await stub.SimilarItems(
                        pb.SimilarItemsRequest(item_id=self.rng.choice(self.items), k=10, filter=flt), timeout=10
                    )
                elif kind == 1:
                    name = "RecommendForUser"
                    resp = await stub.RecommendForUser(
                        pb.RecommendForUserRequest(user_id=self.rng.choice(self.users), k=10, filter=flt), timeout=10
                    )
                else:
                    name = "NearestItems"
                    resp = await stub.NearestItems(
                        pb.NearestItemsRequest(vector=rng.standard_normal(DIM).astype(np.float32).tolist(), k=10, filter=flt),
                        timeout=10,
                    )
                self.tally.codes[f"{name}:OK" if resp.model_version == self.version else f"{name}:WRONG_MODEL"] += 1
            except grpc.RpcError as err:
                self.tally.codes[f"{name}:{err.code().name}"] += 1
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def _probes(self, stub, stop: asyncio.Event) -> None:
        """Every 2 s one event by a new shopper: its first vector on the stream is the one this event caused."""
        n = 0
        while not stop.is_set():
            user, item = f"probe-{n}", self.rng.choice(self.items)
            ev = pb.Event(event_id=f"soak-probe-{n}", user_id=user, type=pb.EVENT_TYPE_PURCHASE, item_id=item, ts=time.time())
            for attempt in range(100):
                try:
                    await stub.IngestEvents(iter([pb.IngestEventsRequest(events=[ev])]), timeout=30)
                except grpc.RpcError as err:
                    self.tally.codes[f"IngestEvents:{err.code().name}"] += 1
                    await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
                    continue
                self.tally.codes["IngestEvents:OK"] += 1
                key = (pseudonymise(KEY, user), item, REL_FOR_EVENT["purchase"])
                self.tally.acked[ev.event_id] = key
                self.tally.probes[key[0]] = time.time()
                break
            n += 1
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except asyncio.TimeoutError:
                pass

    def _restarted(self, name: str, pid: int | None) -> None:
        """A restarted process's memory is measured from its new start."""
        if pid is not None:
            self.processes[name] = pid
        self.rss[name] = []  # replaced, not removed: the other loops iterate this dict
        self.started_at[name] = time.monotonic()  # it warms up again (a worker loads torch and the model)

    def _fault(self, kind: str, n: int) -> float:
        """Fault number ``n``, blocking; returns how long the component was down (s)."""
        started = time.monotonic()
        if kind == "worker":
            w = n % self.args.workers  # the workers in turn
            name = f"worker-{w}"
            os.killpg(self.children[name].pid, signal.SIGKILL)  # mid-task or idle: whatever it was doing
            self.children[name].wait()
            self._start_worker(w)
            self._restarted(name, self.children[name].pid)
        elif kind == "redis":
            localstack.stop_service(self.services["redis"])  # SIGTERM: the append-only file is flushed
            time.sleep(self.args.fault_down_s)
            self.services["redis"] = localstack.start_redis(self.stack)
            self._restarted("redis", self.services["redis"].pid())
        elif kind == "neo4j":
            pid = self.services["neo4j"].pid()
            if pid is not None:  # a crash, not a shutdown: committed transactions are replayed from the log on start
                os.kill(pid, signal.SIGKILL)
            localstack.stop_service(self.services["neo4j"])  # waits until it is gone, removes the pid file
            time.sleep(self.args.fault_down_s)
            self.services["neo4j"] = localstack.start_neo4j(self.stack)
            self._restarted("neo4j", self.services["neo4j"].pid())
        return time.monotonic() - started

    async def _faults(self, stop: asyncio.Event) -> None:
        kinds = [k.strip() for k in self.args.fault_kinds.split(",") if k.strip()]
        started = time.monotonic()
        n = 0
        while kinds:
            try:
                await asyncio.wait_for(stop.wait(), self.args.fault_every_s)
                return
            except asyncio.TimeoutError:
                pass
            kind = kinds[n % len(kinds)]
            n += 1
            at = time.monotonic() - started
            down = await asyncio.to_thread(self._fault, kind, n // len(kinds))
            self.faults.append({"kind": kind, "at_s": round(at, 1), "down_s": round(down, 1)})
            log(f"fault {n}: {kind} restarted after {down:.1f} s")

    async def _sample_rss(self, stop: asyncio.Event, warmup_s: float) -> None:
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            for name, pid in self.processes.items():
                if time.monotonic() - self.started_at.get(name, started) >= warmup_s:
                    mb = rss_mb(pid)
                    if mb is not None:
                        self.rss.setdefault(name, []).append((round(elapsed, 1), round(mb, 1)))
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), self.args.sample_every_s)
            except asyncio.TimeoutError:
                pass

    async def _progress(self, stop: asyncio.Event) -> None:
        started = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 30)
            except asyncio.TimeoutError:
                pass
            rss = {k: v[-1][1] for k, v in self.rss.items() if v}
            log(
                f"{time.monotonic() - started:.0f} s: {len(self.tally.acked)} events acknowledged, "
                f"{sum(n for k, n in self.tally.codes.items() if not k.startswith('Ingest'))} queries, "
                f"{len(self.faults)} faults, {self.tally.error_count()} errors, RSS MB {rss}"
            )

    async def run_traffic(self) -> float:
        stop = asyncio.Event()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = pb_grpc.InterestServiceStub(channel)
            loops = [asyncio.create_task(self._ingest_stream(stub, n, stop)) for n in range(self.args.ingest_streams)]
            loops += [asyncio.create_task(self._queries(stub, stop)) for _ in range(self.args.query_concurrency)]
            loops.append(asyncio.create_task(self._probes(stub, stop)))
            if self.args.faults:
                loops.append(asyncio.create_task(self._faults(stop)))
            watchers = [asyncio.create_task(self._sample_rss(stop, self.args.warmup_s)), asyncio.create_task(self._progress(stop))]
            started = time.monotonic()
            self.traffic_at = time.time()
            await asyncio.sleep(self.args.duration_s)
            stop.set()
            await asyncio.gather(*loops)  # in-flight streams finish their retries: everything sent is answered
            elapsed = time.monotonic() - started
            await asyncio.gather(*watchers)
        return elapsed

    # -- reconciliation --------------------------------------------------------------------------------------------
    def reconcile(self) -> dict:
        """Stored counts per (user, target, behaviour) against the acknowledged events."""
        acked = Counter(self.tally.acked.values()) + self.seeded
        maybe = Counter(self.tally.unacked.values())  # may or may not have been stored
        rels = sorted(set(REL_FOR_EVENT.values()))
        stored = Counter()
        for rec in self.driver.execute_query(
            "MATCH (u:User)-[r]->(t) WHERE type(r) IN $rels RETURN u.id AS u, t.id AS t, type(r) AS rel, r.count AS n", rels=rels
        ).records:
            stored[(rec["u"], rec["t"], rec["rel"])] += rec["n"]
        lost = sum(max(0, n - stored[key]) for key, n in acked.items())
        duplicated = sum(max(0, n - acked[key] - maybe[key]) for key, n in stored.items())
        seen = self.driver.execute_query("MATCH (s:Seen) WHERE s.id STARTS WITH 'soak-' RETURN count(s) AS n").records[0]["n"]
        return {
            "lost": lost,
            "duplicated": duplicated,
            "stored_events": sum(stored.values()),
            "seeded_events": sum(self.seeded.values()),
            "seen_ids": seen,
            "acknowledged": len(self.tally.acked),
            "unacknowledged": len(self.tally.unacked),
        }

    def drain(self, timeout_s: float) -> tuple[int, float]:
        """Wait until the worker cleared every change mark; returns (marks left, seconds waited)."""
        started = time.monotonic()
        while (left := count_marks(self.driver)) and time.monotonic() - started < timeout_s:
            time.sleep(0.5)
        return left, round(time.monotonic() - started, 1)

    def exactness(self) -> dict:
        """Every stored vector, and each user's last vector on the delta stream, against a full recompute."""
        ws = WorkerSettings(model_dir=self.var / "models", text_cache_dir=ROOT / "var" / "text-cache", redis_url=self.redis_url)
        rt = jobs.Runtime(
            Neo4jSettings(uri=f"bolt://127.0.0.1:{self.stack.neo4j_port}"),
            self.graph,
            ModelSettings(dim=DIM),
            TrainSettings(max_epochs=0),
            ws,
            DataSettings(),
        )
        try:
            full = full_vectors(rt.context(self.version))
        finally:
            rt.close()
        worst, wrong_version, missing = 0.0, 0, 0
        for label, vectors in full.vectors.items():
            stored = subgraph.stored_vectors(self.driver, label, vectors)
            for node_id, vec in vectors.items():
                s = stored.get(node_id)
                if s is None or s.vector is None:
                    missing += 1
                    continue
                wrong_version += s.version != self.version
                worst = max(worst, float(np.max(np.abs(np.asarray(s.vector) - vec))))
        last: dict[str, np.ndarray] = {}  # the stream as a server replays it: the last upsert of each user wins
        client = redis.Redis.from_url(self.redis_url)
        entries = 0  # Redis's memory follows the stream (trimmed at about 1,000,000 entries by the workers)
        try:
            for _id, fields in client.xrange(STREAM):
                entries += 1
                d = pb.EmbeddingDelta.FromString(fields[b"d"])
                if d.op == pb.EmbeddingDelta.OP_UPSERT and d.node_type == pb.NODE_TYPE_USER:
                    last[d.id] = np.asarray(d.vector, np.float32)
        finally:
            client.close()
        users = full.vectors[USER]
        stream_worst = max((float(np.max(np.abs(v - users[u]))) for u, v in last.items() if u in users), default=0.0)
        return {
            "vectors_checked": full.count(),
            "vectors_max_diff": worst,
            "wrong_version": wrong_version,
            "missing": missing,
            "stream_users_checked": sum(u in users for u in last),
            "stream_max_diff": stream_worst,
            "stream_entries": entries,
        }

    def recomputes(self) -> int:
        """Recompute tasks the workers finished (every incarnation of worker w logs to worker-w.log)."""
        n = 0
        for w in range(self.args.workers):
            text = (self.var / f"worker-{w}.log").read_text(errors="replace")
            n += sum(1 for line in text.splitlines() if "interest.recompute[" in line and "succeeded" in line)
        return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--warmup-s", type=float, help="RSS baseline after this long (default: 20%% of the run)")
    parser.add_argument("--ingest-streams", type=int, default=4, help="concurrent IngestEvents clients")
    parser.add_argument("--events-per-stream", type=int, default=30)
    parser.add_argument("--ingest-rate", type=float, default=300.0, help="events/s over all clients (paced)")
    parser.add_argument("--resend-fraction", type=float, default=0.05, help="acknowledged streams sent again")
    parser.add_argument("--query-concurrency", type=int, default=4)
    parser.add_argument("--query-rate", type=float, default=150.0, help="queries/s over all clients (paced)")
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--history", type=int, default=6, help="seeded purchases per shopper (the training data)")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    parser.add_argument("--partitions", type=int, default=1, help="IG_WORKER_PARTITIONS (partitioned recompute when > 1)")
    parser.add_argument("--faults", action="store_true", help="kill/restart components during the traffic")
    parser.add_argument("--fault-every-s", type=float, default=45.0)
    parser.add_argument("--fault-kinds", default="worker,redis", help="in turn; any of worker, redis, neo4j")
    parser.add_argument("--fault-down-s", type=float, default=2.0, help="how long a restarted service stays down")
    parser.add_argument("--drain-timeout-s", type=float, default=300.0, help="wait this long for marks to clear")
    parser.add_argument("--neo4j-heap-mb", type=int, default=1024)
    parser.add_argument("--sample-every-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.warmup_s is None:
        args.warmup_s = min(60.0, 0.2 * args.duration_s)

    soak = Soak(args)
    load_before = os.getloadavg()
    try:
        soak.start()
        log(f"traffic for {args.duration_s:.0f} s (RSS baseline after {args.warmup_s:.0f} s); processes {soak.processes}")
        watch = StreamWatch(soak.redis_url, STREAM)
        watch.start()
        try:
            elapsed = asyncio.run(soak.run_traffic())
            log("traffic stopped; waiting for the worker to clear every change mark")
            marks_left, drain_s = soak.drain(args.drain_timeout_s)
            time.sleep(1.0)  # the watch reads the last deltas
        finally:
            watch.stop.set()
        counts = soak.reconcile()
        log(f"reconciled: {counts}; checking the vectors against a full recompute")
        exact = soak.exactness()
        alive = {name: proc.poll() is None for name, proc in soak.children.items()}
        recomputes = soak.recomputes()
    finally:
        soak.stop()
    acked = {u: at for u, at in soak.tally.probes.items() if u in watch.seen}  # the probes published
    fresh = [watch.seen[u] - at for u, at in acked.items()]
    # the slowest probes, by when they were acknowledged (seconds into the traffic, as the faults' at_s): which fault
    # or backlog they waited for
    slowest = [
        {"acked_at_s": round(acked[u] - soak.traffic_at, 1), "fresh_s": round(watch.seen[u] - acked[u], 2)}
        for u in sorted(acked, key=lambda u: acked[u] - watch.seen[u])[:10]
    ]
    growth = {name: round(samples[-1][1] - samples[0][1], 1) for name, samples in soak.rss.items() if samples}
    queries = {k: n for k, n in soak.tally.codes.items() if not k.startswith("IngestEvents")}
    result = {
        "bench": "soak",
        "duration_s": round(elapsed, 1),
        "events": counts["acknowledged"],
        "lost": counts["lost"],
        "duplicated": counts["duplicated"],
        "errors": soak.tally.error_count(),
        "rss_growth_mb": growth,
        "faults": len(soak.faults),
        "marks_left": marks_left,
        "drain_s": drain_s,
        "vectors_max_diff": exact["vectors_max_diff"],
        "stream_max_diff": exact["stream_max_diff"],
        "recomputes": recomputes,
        "model_version": soak.version,
        "freshness": {"probes": len(soak.tally.probes), "published": len(fresh), **(percentiles(fresh) if fresh else {})},
        "queries": sum(queries.values()),
        "alive": alive,
        "machine": f"{os.cpu_count()} cores, no GPU",
        # other processes share the machine: the load average (1, 5, 15 min) at start and end says how much
        "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]},
        "details": {
            "reconciliation": counts,
            "exactness": exact,
            "faults": soak.faults,
            "slowest_probes": slowest,
            "calls": dict(sorted(soak.tally.codes.items())),
            "resent_streams": soak.tally.resent,
            "resent_all_duplicates": soak.tally.resent_all_duplicates,
            "rss_mb": {
                k: {"first": v[0], "last": v[-1], "max": max(s[1] for s in v), "samples": len(v)} for k, v in soak.rss.items() if v
            },
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
        },
    }
    emit_result(result, args.out)


if __name__ == "__main__":
    main()
