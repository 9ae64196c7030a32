"""Three ``python -m server`` processes ingesting into one Neo4j at once, four client streams each, every event on
a few hub items and hub shoppers (so the transactions fight for the same node locks): no client sees an error,
and the graph holds each distinct event exactly once, however often and wherever its batch was sent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graphdb import localstack
from graphdb.pseudonym import pseudonymise
from graphdb.schema import REL_FOR_EVENT
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVERS = 3
STREAMS = 4  # per server
ROUNDS = 8  # batches per stream
BATCH = 40
HUB_ITEMS = [f"hub-{j}" for j in range(3)]
HUB_USERS = [f"regular-{j}" for j in range(4)]
TYPES = [(pb.EVENT_TYPE_VIEW, "view"), (pb.EVENT_TYPE_CLICK, "click"), (pb.EVENT_TYPE_ADD_TO_CART, "add_to_cart")]
KEY = "test-pseudonym-key"


def _wait_serving(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"server on {port} not SERVING: " + log.read_text()[-3000:]
            time.sleep(0.2)


def _batch(rng: random.Random, stream: str, n: int) -> list[pb.Event]:
    """Events on the hubs; every tenth describes its item too (the catalogue upsert locks the item first)."""
    out = []
    for j in range(n):
        type_, _ = rng.choice(TYPES)
        ev = pb.Event(
            event_id=f"{stream}-{j}",
            user_id=rng.choice(HUB_USERS),
            item_id=rng.choice(HUB_ITEMS),
            type=type_,
            ts=time.time() - rng.uniform(0, 3600),
        )
        if j % 10 == 0:
            ev.item.title = f"Hub item {ev.item_id}"
        out.append(ev)
    return out


def test_three_servers_ingest_hub_events_concurrently_without_errors_or_double_counts(stack, graph, tmp_path) -> None:
    ports = [localstack.free_port() for _ in range(SERVERS)]
    procs, logs = [], []
    for n, port in enumerate(ports):
        log = tmp_path / f"server-{n}.log"
        env = dict(
            os.environ,
            NEO4J_URI=stack.neo4j_uri,
            IG_PSEUDONYM_KEY=KEY,
            IG_EMBEDDING_DIM="16",
            IG_SERVER_HOST="127.0.0.1",
            IG_SERVER_PORT=str(port),
            IG_SERVER_METRICS_PORT="0",
            IG_SERVER_SNAPSHOT_DIR=str(tmp_path / f"snap-{n}"),
            IG_SERVER_REDIS_URL=stack.redis_url,
            # its own clients' streams plus the neighbour's clients' second sends, all at once
            IG_SERVER_STREAM_THREADS=str(2 * STREAMS),
            IG_SERVER_WAIT_THREADS=str(2 * STREAMS + 2),
        )
        env.pop("IG_SERVER_AUTH_TOKENS", None)
        procs.append(
            subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        )
        logs.append(log)
    try:
        for port, proc, log in zip(ports, procs, logs):
            _wait_serving(port, proc, log)
        channels = [grpc.insecure_channel(f"127.0.0.1:{p}") for p in ports]
        stubs = [pb_grpc.InterestServiceStub(ch) for ch in channels]
        sent: dict[str, tuple[str, str, str]] = {}  # distinct event id -> (user pseudonym, item, rel)
        errors: list[str] = []
        summaries = Counter()  # accepted / duplicates over every answer
        lock = threading.Lock()
        start = threading.Barrier(SERVERS * STREAMS)

        def client(server: int, stream: int) -> None:
            rng = random.Random(server * 100 + stream)
            name = f"s{server}c{stream}"
            start.wait()
            for r in range(ROUNDS):
                events = _batch(rng, f"{name}r{r}", BATCH)
                cut = BATCH // 2
                messages = [pb.IngestEventsRequest(events=events[:cut]), pb.IngestEventsRequest(events=events[cut:])]
                # Every other round the same batch goes to the next server too, at the same time: a client's retry after
                # a lost answer, landing on another replica while the first is still writing it.
                targets = [server] + ([(server + 1) % SERVERS] if r % 2 else [])
                calls = [(target, stubs[target].IngestEvents.future(iter(messages), timeout=120)) for target in targets]
                for target, call in calls:
                    try:
                        resp = call.result()
                    except grpc.RpcError as err:
                        with lock:
                            errors.append(f"{name} round {r} on server {target}: {err.code().name} {err.details()}")
                        continue
                    with lock:
                        summaries["accepted"] += resp.accepted
                        summaries["duplicates"] += resp.duplicates
                        if resp.rejected or resp.received != BATCH or resp.accepted + resp.duplicates != BATCH:
                            errors.append(f"{name} round {r}: summary {resp}")
                with lock:
                    for ev in events:
                        rel = REL_FOR_EVENT[dict(TYPES)[ev.type]]
                        sent[ev.event_id] = (pseudonymise(KEY, ev.user_id), ev.item_id, rel)

        threads = [threading.Thread(target=client, args=(s, c)) for s in range(SERVERS) for c in range(STREAMS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for ch in channels:
            ch.close()

        assert errors == []
        distinct = len(sent)
        assert distinct == SERVERS * STREAMS * ROUNDS * BATCH
        sends = SERVERS * STREAMS * (ROUNDS + ROUNDS // 2) * BATCH
        # each distinct event was accepted by exactly one answer; every other copy was a duplicate
        assert summaries == {"accepted": distinct, "duplicates": sends - distinct}
        stored = Counter()
        for rec in graph.execute_query(
            "MATCH (u:User)-[r]->(t:Item) RETURN u.id AS u, t.id AS t, type(r) AS rel, r.count AS n"
        ).records:
            stored[(rec["u"], rec["t"], rec["rel"])] += rec["n"]
        # one relationship per (user, item, type): MERGE under concurrency made no twin
        twins = "MATCH (u:User)-[r]->(t:Item) WITH u, t, type(r) AS rel, count(r) AS copies WHERE copies > 1 RETURN count(*) AS n"
        assert graph.execute_query(twins).records[0]["n"] == 0
        assert stored == Counter(sent.values())
        assert sum(stored.values()) == distinct
        seen = graph.execute_query("MATCH (s:Seen) RETURN count(s) AS n").records[0]["n"]
        assert seen == distinct
        nodes = graph.execute_query("MATCH (u:User) RETURN count(u) AS users").records[0]["users"]
        assert nodes == len(HUB_USERS)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
