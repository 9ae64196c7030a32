"""Restarts of real processes under a real ``python -m server``: Redis, Neo4j (during ingestion), the server.

The module starts its own Neo4j and Redis (free ports, a temporary directory), so the session-wide stack other
tests use is never disturbed. The tests run in file order and share the stack and the server process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from graphdb import localstack
from graphdb.driver import connect
from graphdb.embeddings import write_embeddings
from graphdb.items import ItemRecord, upsert_items
from graphdb.marks import new_token
from graphdb.pseudonym import pseudonymise
from graphdb.schema import migrate
from graphdb.settings import GraphSettings, LocalStackSettings, Neo4jSettings
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server.delta import FIELD, connect_redis, encode_upsert
from server.index import normalise
from server.lifecycle import Lifecycle
from tests.server.conftest import base_settings, start_harness

ROOT = Path(__file__).resolve().parents[2]
DIM = 16
N_ITEMS = 200
STREAM = "ig:restart-embeddings"
MODEL = "m1"
SERVING = health_pb2.HealthCheckResponse.SERVING


class ServerProcess:
    """``python -m server`` with settings from the environment, as operators run it; output to a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.port = int(env["IG_SERVER_PORT"])
        self.proc: subprocess.Popen | None = None
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.InterestServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server"], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def status(self):
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return None

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.status() != SERVING:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.channel.close()


def _vectors() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    return [f"item-{j}" for j in range(N_ITEMS)], normalise(rng.standard_normal((N_ITEMS, DIM)).astype(np.float32))


def _probe(axis: int, sign: float = 1.0) -> np.ndarray:
    v = np.full(DIM, 0.01, np.float32)
    v[axis] = 10.0 * sign
    return normalise(v.reshape(1, -1))[0]


def _top(server: ServerProcess, vec: np.ndarray) -> str:
    resp = server.stub.NearestItems(pb.NearestItemsRequest(vector=vec.tolist(), k=1), timeout=5)
    return resp.items[0].item_id


class _LateServer:
    """An in-process server whose lifecycle starts (in the background) while Neo4j may be down."""

    def __init__(self, rig) -> None:
        settings = base_settings(redis_url=f"redis://127.0.0.1:{rig.stack.redis_port}/0", delta_stream=STREAM)
        self.driver = connect(Neo4jSettings(uri=f"bolt://127.0.0.1:{rig.stack.neo4j_port}"), verify=False, max_retry_s=0.5)
        self.harness, self._stop = start_harness(settings, rig.graph, self.driver)
        self.lifecycle = Lifecycle(self.harness.engine, connect_redis(settings.redis_url, settings.delta_block_ms))
        self.loading = asyncio.run_coroutine_threadsafe(self.lifecycle.start(), self.harness.loop)
        self.stub = self.harness.stub()
        self.health = health_pb2_grpc.HealthStub(self.harness.channel())

    def status(self):
        return self.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status

    def close(self) -> None:
        async def down():
            self.loading.cancel()
            await self.lifecycle.stop(snapshot=False)
            await self.lifecycle.redis.aclose()

        self.harness.run(down())
        self._stop()
        self.driver.close()


def _crash(service: localstack.Service) -> None:
    pid = service.pid()
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: service.pid() is None, 30)


def _wait(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    var = tmp_path_factory.mktemp("restarts")
    stack = LocalStackSettings(
        var_dir=var,
        neo4j_port=localstack.free_port(),
        redis_port=localstack.free_port(),
        neo4j_heap_mb=512,
        neo4j_pagecache_mb=128,
        neo4j_tx_memory_mb=256,
    )
    graph = GraphSettings(pseudonym_key="restart-key", embedding_dim=DIM)
    server = driver = None
    services: dict[str, localstack.Service] = {}
    try:
        services = localstack.up(stack)
        driver = connect(Neo4jSettings(uri=f"bolt://127.0.0.1:{stack.neo4j_port}"))
        migrate(driver, graph)
        ids, vecs = _vectors()
        with driver.session() as session:
            session.execute_write(lambda tx: upsert_items(tx, [ItemRecord(id=i) for i in ids], token=new_token(), now=time.time()))
        assert write_embeddings(driver, "Item", zip(ids, vecs.tolist()), MODEL) == N_ITEMS
        env = dict(
            os.environ,
            NEO4J_URI=f"bolt://127.0.0.1:{stack.neo4j_port}",
            IG_EMBEDDING_DIM=str(DIM),
            IG_PSEUDONYM_KEY="restart-key",
            IG_SERVER_PORT=str(localstack.free_port()),
            IG_SERVER_SNAPSHOT_DIR=str(var / "snap"),
            IG_SERVER_SNAPSHOT_INTERVAL_S="3600",
            IG_SERVER_REDIS_URL=f"redis://127.0.0.1:{stack.redis_port}/0",
            IG_SERVER_DELTA_STREAM=STREAM,
            IG_SERVER_DELTA_BLOCK_MS="100",
            IG_SERVER_METRICS_PORT="0",
            IG_SERVER_GRACE_PERIOD_S="2",
            IG_SERVER_GRAPH_RETRY_S="1",
            IG_SERVER_AUTH_TOKENS="",
            IG_SERVER_HOST="127.0.0.1",
        )
        server = ServerProcess(env, var / "server.log")
        server.start()
        server.wait_serving()

        class Rig:
            pass

        rig = Rig()
        rig.stack, rig.services, rig.driver, rig.server, rig.graph = stack, services, driver, server, graph
        rig.redis = lambda: redis.Redis(host="127.0.0.1", port=stack.redis_port)
        yield rig
    finally:
        if server is not None:
            server.kill()
        if driver is not None:
            driver.close()
        if "neo4j" in services and services["neo4j"].pid() is not None:
            _crash(services["neo4j"])  # throw-away data: no need for a clean (slower) shutdown
        localstack.down(stack)


def test_redis_restart(rig) -> None:
    """Redis goes away: the server keeps answering from its index; when Redis is back, it reconnects and applies
    the deltas published after the restart."""
    server, r = rig.server, rig.redis()
    r.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, "before-redis-restart", _probe(0), MODEL)})
    _wait(lambda: _top(server, _probe(0)) == "before-redis-restart", 10)
    r.close()

    def read_failures() -> int:  # the consumer logs each failed read, then backs off before the next
        return server.log.read_text(errors="replace").count("delta stream read failed")

    failed_before = read_failures()
    localstack.stop_service(rig.services["redis"])
    deadline = time.monotonic() + 30
    while True:  # queries are answered from the index throughout
        resp = server.stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-3", k=5), timeout=5)
        assert len(resp.items) == 5 and resp.model_version == MODEL
        assert _top(server, _probe(0)) == "before-redis-restart"
        if read_failures() >= failed_before + 2:  # it noticed, backed off and retried: it runs without Redis
            break
        assert time.monotonic() < deadline, "the delta consumer never noticed that Redis was gone"
        time.sleep(0.05)
    assert server.status() == SERVING
    # ingestion needs only Neo4j: it goes on without Redis (the workers' wake-up signal is best effort)
    ev = pb.Event(event_id="ev-no-redis", user_id="u-no-redis", type=pb.EVENT_TYPE_VIEW, item_id="item-1", ts=time.time())
    assert server.stub.IngestEvents(iter([pb.IngestEventsRequest(events=[ev])]), timeout=30).accepted == 1

    localstack.start_redis(rig.stack)
    r = rig.redis()
    assert r.xlen(STREAM) >= 1  # the stream survived the restart (append-only file)
    r.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, "after-redis-restart", _probe(1), MODEL)})
    took = _wait(lambda: _top(server, _probe(1)) == "after-redis-restart", 20)
    assert _top(server, _probe(0)) == "before-redis-restart"
    print(f"delta after the Redis restart visible in {took:.2f} s")


def test_neo4j_restart_during_ingestion(rig) -> None:
    """Neo4j is killed (SIGKILL) and restarted while clients stream events: they get UNAVAILABLE (retryable)
    while it is down, their retries with the same event ids succeed afterwards, and every acknowledged event is in
    the graph exactly once."""
    server = rig.server
    clients, batch_size = 3, 10
    acked: list[str] = []
    codes: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    outage = {"down": False, "unavailable_while_down": 0, "other_reads_while_down": {}}

    def client(c: int) -> None:
        b = 0
        while not stop.is_set():
            events = [
                pb.Event(
                    event_id=f"c{c}-b{b}-e{j}",
                    user_id=f"shopper-{c}-{j % 4}",
                    type=pb.EVENT_TYPE_VIEW,
                    item_id=f"item-{(b * batch_size + j) % N_ITEMS}",
                    ts=time.time(),
                )
                for j in range(batch_size)
            ]
            while True:  # the same batch, same ids, until acknowledged
                try:
                    resp = server.stub.IngestEvents(iter([pb.IngestEventsRequest(events=events)]), timeout=15)
                except grpc.RpcError as err:
                    with lock:
                        codes[err.code().name] = codes.get(err.code().name, 0) + 1
                        if outage["down"] and err.code() == grpc.StatusCode.UNAVAILABLE:
                            outage["unavailable_while_down"] += 1
                    assert "Traceback" not in (err.details() or "")
                    time.sleep(0.2)  # the client's own retry backoff (part of the load), not a wait for a state
                    continue
                assert resp.accepted + resp.duplicates == batch_size and not resp.rejected
                with lock:
                    codes["OK"] = codes.get("OK", 0) + 1
                    acked.extend(e.event_id for e in events)
                break
            if b % 5 == 0:  # a client retrying an acknowledged batch (a lost answer, say): all duplicates
                try:
                    again = server.stub.IngestEvents(iter([pb.IngestEventsRequest(events=events)]), timeout=15)
                    assert (again.accepted, again.duplicates) == (0, batch_size)
                    with lock:
                        outage["duplicates_answered"] = outage.get("duplicates_answered", 0) + 1
                except grpc.RpcError as err:
                    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            b += 1
            time.sleep(0.02)  # the clients' pace while Neo4j goes down and comes back, not a wait for a state

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: len(acked) >= 10 * batch_size, 30)
        outage["down"] = True
        _crash(rig.services["neo4j"])  # kill -9: acknowledged means committed to Neo4j's log, crash or not
        # while Neo4j is down: queries are answered from the index; graph reads say UNAVAILABLE, not INTERNAL
        reads = outage["other_reads_while_down"]
        assert len(server.stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-3", k=5), timeout=5).items) == 5

        def read(call, req) -> None:
            try:
                call(req, timeout=15)
                reads[type(req).__name__] = "OK"
            except grpc.RpcError as err:
                reads[type(req).__name__] = err.code().name

        readers = [
            threading.Thread(target=read, args=a)
            for a in (
                (server.stub.RecommendForUser, pb.RecommendForUserRequest(user_id="someone-new", k=3)),
                (server.stub.GetEmbedding, pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_USER, id="x")),
                (server.stub.ForgetUser, pb.ForgetUserRequest(user_id="shopper-0-0")),
            )
        ]
        for t in readers:
            t.start()
        for t in readers:
            t.join(20)
        # a second server (in-process, no snapshot) starting now waits for Neo4j: NOT_SERVING, queries UNAVAILABLE
        late = _LateServer(rig)
        _wait(lambda: outage["unavailable_while_down"] >= clients, 30)
        assert late.status() == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            late.stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-3", k=5), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        acked_before_restart = len(acked)
        localstack.start_neo4j(rig.stack)
        outage["down"] = False
        _wait(lambda: len(acked) >= acked_before_restart + 6 * batch_size, 60)
        _wait(lambda: late.status() == SERVING, 30)  # it loaded once Neo4j was back
        assert len(late.stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-3", k=5), timeout=5).items) == 5
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if "late" in locals():
            late.close()
    assert not any(t.is_alive() for t in threads)
    assert set(reads.values()) == {"UNAVAILABLE"}, reads
    assert set(codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, codes
    assert codes.get("UNAVAILABLE", 0) >= clients, codes
    assert server.status() == SERVING

    # every acknowledged event exactly once: one Seen node each, and the interaction counts add up to them
    assert len(acked) == len(set(acked))
    seen = rig.driver.execute_query("MATCH (s:Seen) WHERE s.id IN $ids RETURN count(s) AS n", ids=acked)
    assert seen.records[0]["n"] == len(acked)
    shoppers = [pseudonymise("restart-key", f"shopper-{c}-{j}") for c in range(clients) for j in range(4)]
    total = rig.driver.execute_query(
        "MATCH (u:User)-[r:VIEWED]->(:Item) WHERE u.id IN $users RETURN sum(r.count) AS n", users=shoppers
    )
    stray = rig.driver.execute_query(
        "MATCH (s:Seen) WHERE s.id STARTS WITH 'c' AND NOT s.id IN $ids RETURN count(s) AS n", ids=acked
    ).records[0]["n"]
    # events whose batch was committed but never acknowledged cannot exist: every batch was retried until acked
    assert stray == 0
    assert total.records[0]["n"] == len(acked)
    assert outage.get("duplicates_answered", 0) > 0
    print(f"acknowledged {len(acked)} events; statuses {codes}; graph reads while down {reads}")


def test_server_restart_reloads_snapshot_and_catches_up(rig) -> None:
    """SIGTERM writes a snapshot; deltas published while the server is down are applied after the restart,
    and health says SERVING only once they are."""
    server, r = rig.server, rig.redis()
    r.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, "before-snapshot", _probe(2), MODEL)})
    _wait(lambda: _top(server, _probe(2)) == "before-snapshot", 10)
    assert server.stop() == 0
    log = server.log.read_text()
    assert "Traceback" not in log
    # while it is down: a backlog, the last of which is a recognisable item
    rng = np.random.default_rng(9)
    backlog = normalise(rng.standard_normal((10000, DIM)).astype(np.float32))
    pipe = r.pipeline(transaction=False)
    for j, vec in enumerate(backlog):
        pipe.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, f"backlog-{j}", vec, MODEL)})
    pipe.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, "while-down", _probe(3), MODEL)})
    pipe.execute()
    # the graph's copy of an item changes: a server rebuilding from Neo4j would differ from one loading its snapshot
    rig.driver.execute_query("MATCH (i:Item) SET i.emb_version = 'not-served'")

    server.start()
    seen_not_serving = False
    deadline = time.monotonic() + 60
    while True:
        status = server.status()
        if status == SERVING:
            break
        seen_not_serving |= status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    # the first SERVING answer already comes with the whole backlog applied
    assert _top(server, _probe(3)) == "while-down"
    assert _top(server, backlog[9876]) == "backlog-9876"
    assert _top(server, _probe(2)) == "before-snapshot"  # only in the snapshot and the stream before it
    assert _top(server, _probe(0)) == "before-redis-restart"
    log = server.log.read_text()
    assert "loaded snapshot" in log and "caught up with the delta stream" in log
    resp = server.stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-5", k=3), timeout=5)
    assert resp.model_version == MODEL and len(resp.items) == 3
    print(f"health NOT_SERVING observed before SERVING: {seen_not_serving}")
