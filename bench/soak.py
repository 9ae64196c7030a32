"""Soak: mixed traffic for a while against a real server, Neo4j and Redis, then a reconciliation of the graph.

``python -m bench.soak --duration-s 600 [--out FILE]`` starts Neo4j and Redis (free loopback ports, a temporary
directory), seeds a catalogue with vectors, starts ``python -m server`` and runs, concurrently:

- several IngestEvents streams with unique event ids (views, clicks, carts, purchases, searches), each stream
  retried with the same ids until acknowledged, plus re-sends of acknowledged streams (all duplicates);
- SimilarItems, RecommendForUser and NearestItems queries, some with category filters;
- embedding upserts on the delta stream (what the workers publish), so the server's delta index and compaction
  run too.

Afterwards it compares the graph with what the server acknowledged: per (user, target, behaviour) the stored
``count`` must equal the acknowledged events (``lost`` and ``duplicated`` count the differences). Resident memory
of each process is sampled after a warm-up; growth = last sample - first sample after the warm-up. The processes
are a table (``Soak.processes``): a Celery worker joins by adding its process there.

Prints ``RESULT {"bench": "soak", "duration_s", "events", "lost", "duplicated", "errors", "rss_growth_mb": {...}}``.
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
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._common import emit_result
from graphdb import localstack
from graphdb.driver import connect
from graphdb.embeddings import write_embeddings
from graphdb.ingest import query_id
from graphdb.items import ItemRecord, upsert_items
from graphdb.marks import new_token
from graphdb.pseudonym import pseudonymise
from graphdb.schema import REL_FOR_EVENT, migrate
from graphdb.settings import GraphSettings, LocalStackSettings, Neo4jSettings
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server.delta import encode_upsert, publish
from server.index import normalise

ROOT = Path(__file__).resolve().parents[1]
DIM = 64
MODEL = "soak-m1"
STREAM = "ig:soak-embeddings"
KEY = "soak-pseudonym-key"
TYPES = [(pb.EVENT_TYPE_VIEW, "view"), (pb.EVENT_TYPE_VIEW, "view"), (pb.EVENT_TYPE_CLICK, "click"),
         (pb.EVENT_TYPE_ADD_TO_CART, "add_to_cart"), (pb.EVENT_TYPE_PURCHASE, "purchase"),
         (pb.EVENT_TYPE_SEARCH, "search")]
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
    deltas: int = 0

    def error_count(self) -> int:
        return sum(n for k, n in self.codes.items() if not k.endswith(":OK"))


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.var = Path(tempfile.mkdtemp(prefix="ig-soak-"))
        self.stack = LocalStackSettings(var_dir=self.var / "stack", neo4j_port=localstack.free_port(),
                                        redis_port=localstack.free_port(), neo4j_heap_mb=args.neo4j_heap_mb,
                                        neo4j_pagecache_mb=256, neo4j_tx_memory_mb=512)
        self.graph = GraphSettings(pseudonym_key=KEY, embedding_dim=DIM)
        self.port = localstack.free_port()
        self.items = [f"sku-{j}" for j in range(args.items)]
        self.users = [f"shopper-{j}" for j in range(args.users)]
        self.services: dict[str, localstack.Service] = {}
        self.children: dict[str, subprocess.Popen] = {}
        # name -> pid of every process whose memory is watched; a Celery worker is added here when it runs
        self.processes: dict[str, int] = {}
        self.tally = Tally()
        self.rss: dict[str, list[tuple[float, float]]] = {}
        self.rng = random.Random(args.seed)

    # -- processes -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        log(f"starting Neo4j and Redis in {self.var}")
        self.services = localstack.up(self.stack)
        self.driver = connect(Neo4jSettings(uri=f"bolt://127.0.0.1:{self.stack.neo4j_port}"))
        migrate(self.driver, self.graph)
        self._seed_catalogue()
        self.env = dict(os.environ, NEO4J_URI=f"bolt://127.0.0.1:{self.stack.neo4j_port}",
                        IG_EMBEDDING_DIM=str(DIM), IG_PSEUDONYM_KEY=KEY, IG_SERVER_HOST="127.0.0.1",
                        IG_SERVER_PORT=str(self.port), IG_SERVER_AUTH_TOKENS="",
                        IG_SERVER_SNAPSHOT_DIR=str(self.var / "snap"), IG_SERVER_METRICS_PORT="0",
                        IG_SERVER_REDIS_URL=self.redis_url, IG_SERVER_DELTA_STREAM=STREAM,
                        IG_SERVER_COMPACT_INTERVAL_S="30", IG_SERVER_COMPACT_DELTA_MAX="2000",
                        IG_SERVER_SNAPSHOT_INTERVAL_S="120")
        self._spawn("server", [sys.executable, "-m", "server"])
        self._wait_serving()
        self.processes = {"server": self.children["server"].pid, "neo4j": self.services["neo4j"].pid(),
                          "redis": self.services["redis"].pid()}
        # A Celery worker joins here once the workers run in this bench: self._spawn("worker", [...]) and
        # self.processes["worker"] = self.children["worker"].pid.

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
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not report SERVING")
                time.sleep(0.2)

    def _seed_catalogue(self) -> None:
        """Items in ten categories with vectors of the serving model, written to Neo4j."""
        records = [ItemRecord(id=i, title=f"Item {j}", brand=f"brand-{j % 25}",
                              categories=(("Office", f"Aisle {j % 10}"),)) for j, i in enumerate(self.items)]
        with self.driver.session() as session:
            for start in range(0, len(records), 2000):
                chunk = records[start:start + 2000]
                session.execute_write(lambda tx: upsert_items(tx, chunk, token=new_token(), now=time.time()))
        rng = np.random.default_rng(self.args.seed)
        centres = rng.standard_normal((10, DIM)).astype(np.float32)
        vecs = normalise(centres[np.arange(len(self.items)) % 10] +
                         0.5 * rng.standard_normal((len(self.items), DIM)).astype(np.float32))
        write_embeddings(self.driver, "Item", zip(self.items, vecs.tolist()), MODEL)
        self.vectors = vecs
        log(f"catalogue: {len(self.items)} items with {DIM}-d vectors of model {MODEL}")

    def stop(self) -> None:
        for name, proc in reversed(list(self.children.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
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
            messages = [pb.IngestEventsRequest(events=[e for e, _ in events[i:i + cut]])
                        for i in range(0, len(events), cut)]
            for attempt in range(100):
                try:
                    resp = await stub.IngestEvents(iter(messages), timeout=30)
                except grpc.RpcError as err:
                    self.tally.codes[f"IngestEvents:{err.code().name}"] += 1
                    await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
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
        rng = np.random.default_rng(self.rng.randrange(2 ** 32))
        while not stop.is_set():
            started = time.monotonic()
            kind = self.rng.randrange(3)
            flt = pb.ItemFilter(category_ids=[f"Office > Aisle {self.rng.randrange(10)}"]) \
                if self.rng.random() < 0.2 else None
            try:
                if kind == 0:
                    name = "SimilarItems"
                    resp = await stub.SimilarItems(pb.SimilarItemsRequest(
                        item_id=self.rng.choice(self.items), k=10, filter=flt), timeout=10)
                elif kind == 1:
                    name = "RecommendForUser"
                    resp = await stub.RecommendForUser(pb.RecommendForUserRequest(
                        user_id=self.rng.choice(self.users), k=10, filter=flt), timeout=10)
                else:
                    name = "NearestItems"
                    resp = await stub.NearestItems(pb.NearestItemsRequest(
                        vector=rng.standard_normal(DIM).astype(np.float32).tolist(), k=10, filter=flt), timeout=10)
                self.tally.codes[f"{name}:OK" if resp.model_version == MODEL else f"{name}:WRONG_MODEL"] += 1
            except grpc.RpcError as err:
                self.tally.codes[f"{name}:{err.code().name}"] += 1
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def _deltas(self, stop: asyncio.Event) -> None:
        """Embedding upserts of existing items, as the workers publish them."""
        client = aioredis.from_url(self.redis_url)
        rng = np.random.default_rng(self.args.seed + 1)
        try:
            while not stop.is_set() and self.args.delta_rate > 0:
                j = int(rng.integers(len(self.items)))
                vec = self.vectors[j] + 0.05 * rng.standard_normal(DIM).astype(np.float32)
                try:
                    await publish(client, STREAM, encode_upsert(pb.NODE_TYPE_ITEM, self.items[j], vec, MODEL),
                                  maxlen=100_000)
                    self.tally.deltas += 1
                except Exception:  # noqa: BLE001 - counted; the soak goes on
                    self.tally.codes["delta:ERROR"] += 1
                await asyncio.sleep(1.0 / self.args.delta_rate)
        finally:
            await client.aclose()

    async def _sample_rss(self, stop: asyncio.Event, warmup_s: float) -> None:
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= warmup_s:
                for name, pid in self.processes.items():
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
            log(f"{time.monotonic() - started:.0f} s: {len(self.tally.acked)} events acknowledged, "
                f"{sum(n for k, n in self.tally.codes.items() if not k.startswith('Ingest'))} queries, "
                f"{self.tally.deltas} deltas, {self.tally.error_count()} errors, RSS MB {rss}")

    async def run_traffic(self) -> float:
        stop = asyncio.Event()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = pb_grpc.InterestServiceStub(channel)
            loops = [asyncio.create_task(self._ingest_stream(stub, n, stop)) for n in range(self.args.ingest_streams)]
            loops += [asyncio.create_task(self._queries(stub, stop)) for _ in range(self.args.query_concurrency)]
            loops.append(asyncio.create_task(self._deltas(stop)))
            watchers = [asyncio.create_task(self._sample_rss(stop, self.args.warmup_s)),
                        asyncio.create_task(self._progress(stop))]
            started = time.monotonic()
            await asyncio.sleep(self.args.duration_s)
            stop.set()
            await asyncio.gather(*loops)  # in-flight streams finish their retries: everything sent is answered
            elapsed = time.monotonic() - started
            await asyncio.gather(*watchers)
        return elapsed

    # -- reconciliation --------------------------------------------------------------------------------------------
    def reconcile(self) -> dict:
        """Stored counts per (user, target, behaviour) against the acknowledged events."""
        acked = Counter(self.tally.acked.values())
        maybe = Counter(self.tally.unacked.values())  # may or may not have been stored
        rels = sorted(set(REL_FOR_EVENT.values()))
        stored = Counter()
        for rec in self.driver.execute_query(
                "MATCH (u:User)-[r]->(t) WHERE type(r) IN $rels RETURN u.id AS u, t.id AS t, type(r) AS rel, "
                "r.count AS n", rels=rels).records:
            stored[(rec["u"], rec["t"], rec["rel"])] += rec["n"]
        lost = sum(max(0, n - stored[key]) for key, n in acked.items())
        duplicated = sum(max(0, n - acked[key] - maybe[key]) for key, n in stored.items())
        seen = self.driver.execute_query("MATCH (s:Seen) WHERE s.id STARTS WITH 'soak-' RETURN count(s) AS n"
                                         ).records[0]["n"]
        return {"lost": lost, "duplicated": duplicated, "stored_events": sum(stored.values()),
                "seen_ids": seen, "acknowledged": len(self.tally.acked), "unacknowledged": len(self.tally.unacked)}


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
    parser.add_argument("--delta-rate", type=float, default=20.0, help="embedding upserts/s on the delta stream")
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--users", type=int, default=2000)
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
        log(f"traffic for {args.duration_s:.0f} s (RSS baseline after {args.warmup_s:.0f} s); processes "
            f"{soak.processes}")
        elapsed = asyncio.run(soak.run_traffic())
        counts = soak.reconcile()
        server_alive = soak.children["server"].poll() is None
    finally:
        soak.stop()
    growth = {name: round(samples[-1][1] - samples[0][1], 1) for name, samples in soak.rss.items() if samples}
    queries = {k: n for k, n in soak.tally.codes.items() if not k.startswith("IngestEvents")}
    result = {
        "bench": "soak", "duration_s": round(elapsed, 1), "events": counts["acknowledged"],
        "lost": counts["lost"], "duplicated": counts["duplicated"], "errors": soak.tally.error_count(),
        "rss_growth_mb": growth,
        "queries": sum(queries.values()), "deltas": soak.tally.deltas, "server_alive": server_alive,
        "machine": f"{os.cpu_count()} cores, no GPU",
        # other processes share the machine: the load average (1, 5, 15 min) at start and end says how much
        "load_average": {"start": [round(x, 2) for x in load_before], "end": [round(x, 2) for x in os.getloadavg()]},
        "details": {"reconciliation": counts, "calls": dict(sorted(soak.tally.codes.items())),
                    "resent_streams": soak.tally.resent, "resent_all_duplicates": soak.tally.resent_all_duplicates,
                    "rss_mb": {k: {"first": v[0], "last": v[-1], "max": max(s[1] for s in v), "samples": len(v)}
                               for k, v in soak.rss.items() if v},
                    "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")}},
    }
    emit_result(result, args.out)


if __name__ == "__main__":
    main()
