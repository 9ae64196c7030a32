"""No stall on the port during a model switch over 1M items (issue 20, item 3).

One server process (the native front end, IG_SERVER_FRONT=auto) serves model ``bench-a`` over ``--items``
synthetic items in the served format (bench.serving's ``synthetic``: PQ4 IVF over the first 256 components,
re-ranked at ``--dim``). A load process calls grpc.health.v1 Check and SimilarItems at a steady ``--rate`` each,
with their deadlines (``--health-deadline-ms``, ``--similar-deadline-ms``), before, during and after a real switch
to ``bench-b``: OP_ACTIVATE_MODEL on the delta stream (Redis), taken by the server's Lifecycle, which builds the
new index in a thread beside the served one, replays the deltas that came meanwhile and swaps it in under the
engine's lock, as at every rollout. Only where the vectors come from differs: here they are generated in that
thread (``Lifecycle.build_version``), as 1M items' vectors cannot be written to and read from the Neo4j here in
reasonable time; the read they stand in for holds the GIL as the generation does.

    python -m bench.switch_stall [--items 1000000] [--dim 1024] [--rate 50] [--out FILE]

Prints ``RESULT {json}`` last: the switch's duration (and its generation and index build), and per kind the
calls made while it ran (sent after it began, answered before it ended), their p50/p99/max latency and how many
missed their deadline or failed, beside the same figures for the calls before the switch (the peer).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import redis

from bench._common import emit_result
from bench._stack import log
from bench.serving import synthetic
from graphdb import localstack
from graphdb.settings import EMBEDDING_DIM, GraphSettings, LocalStackSettings
from server.app import create_server
from server.delta import FIELD, connect_redis, encode_activate
from server.engine import Engine
from server.index import ItemIndex
from server.lifecycle import Lifecycle
from server.settings import ServerSettings

STREAM = "ig:bench-switch-stall"
OLD, NEW = "bench-a", "bench-b"
SEEDS = {OLD: 0, NEW: 1}
Record = tuple[str, float, float, str]  # kind, sent at (time.time()), latency ms, status code name


def paced_load(port: int, ids: list[str], rate: float, deadlines_s: dict[str, float], stop: Any, out: Connection) -> None:
    """The load process: one thread per kind, a call every 1/rate s (the next at once if one ran longer), each
    with its deadline, until ``stop`` is set; sends back every call's record."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from proto.interest.v1 import interest_pb2 as pb
    from proto.interest.v1 import interest_pb2_grpc as pb_grpc

    records: list[Record] = []
    lock = threading.Lock()

    def run(kind: str) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health, stub = health_pb2_grpc.HealthStub(channel), pb_grpc.InterestServiceStub(channel)
        rng = np.random.default_rng(len(kind))
        timeout = deadlines_s[kind]
        due = time.perf_counter()
        while not stop.is_set():
            sent_wall, sent = time.time(), time.perf_counter()
            try:
                if kind == "health":
                    health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
                else:
                    stub.SimilarItems(pb.SimilarItemsRequest(item_id=ids[int(rng.integers(len(ids)))], k=10), timeout=timeout)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
            with lock:
                records.append((kind, sent_wall, (time.perf_counter() - sent) * 1e3, code))
            due = max(due + 1.0 / rate, time.perf_counter())
            stop.wait(max(0.0, due - time.perf_counter()))
        channel.close()

    threads = [threading.Thread(target=run, args=(kind,)) for kind in deadlines_s]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.send(records)


def summary(records: list[Record], kind: str, start: float, end: float, deadline_ms: float) -> dict[str, Any]:
    """The calls of ``kind`` sent at or after ``start`` and answered by ``end`` (wall clock)."""
    inside = [(ms, code) for k, sent, ms, code in records if k == kind and sent >= start and sent + ms / 1e3 <= end]
    lat = np.asarray([ms for ms, _ in inside], np.float64)
    missed = sum(1 for ms, code in inside if code == "DEADLINE_EXCEEDED" or ms > deadline_ms)
    failed = sum(1 for _, code in inside if code not in ("OK", "DEADLINE_EXCEEDED"))
    if not len(lat):
        return {"calls": 0}
    return {
        "calls": len(inside),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "missed_deadline": missed,
        "other_errors": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=EMBEDDING_DIM, help="the served width (IG_EMBEDDING_DIM)")
    parser.add_argument("--rate", type=float, default=50.0, help="calls/s of each kind")
    parser.add_argument("--health-deadline-ms", type=float, default=100.0)
    parser.add_argument("--similar-deadline-ms", type=float, default=250.0)
    parser.add_argument("--calm-s", type=float, default=3.0, help="load before the switch (the peer) and after it")
    parser.add_argument("--front", default="auto", choices=["auto", "native", "grpc"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    var = Path(tempfile.mkdtemp(prefix="ig-bench-switch-"))
    stack = LocalStackSettings(var_dir=var, neo4j_port=localstack.free_port(), redis_port=localstack.free_port())
    redis_service = localstack.start_redis(stack)
    redis_url = f"redis://127.0.0.1:{stack.redis_port}/0"
    settings = ServerSettings(port=0, front=args.front, redis_url=redis_url, delta_stream=STREAM, snapshot_dir=None, delta_block_ms=20)
    graph = GraphSettings(pseudonym_key="bench-switch-stall-key", embedding_dim=args.dim)
    ids = [f"i{j}" for j in range(args.items)]
    scales = np.random.default_rng(3).uniform(0.05, 1.0, args.items).astype(np.float32)
    timings: dict[str, float] = {}

    def build_version(version: str | None) -> ItemIndex:
        """The version's synthetic vectors, generated here (standing in for Neo4j's read), then its index."""
        version = version or OLD
        t0 = time.perf_counter()
        vecs = synthetic(args.items, args.dim, seed=SEEDS[version])
        t1 = time.perf_counter()
        index = engine.load_vectors(ids, vecs, version, None, scales)
        timings[version] = t1 - t0
        timings[version + "_build"] = time.perf_counter() - t1
        log(f"{version}: {args.items} x {args.dim} generated in {t1 - t0:.1f}s, index built in {timings[version + '_build']:.1f}s")
        return index

    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    engine = Engine(settings, graph, None)

    async def boot() -> tuple[Any, int, Lifecycle]:
        server, port = create_server(settings, engine, graph)
        server.start()
        lifecycle = Lifecycle(engine, connect_redis(redis_url, settings.delta_block_ms))
        lifecycle.build_version = build_version
        await lifecycle.start()
        return server, port, lifecycle

    redis.Redis.from_url(redis_url).delete(STREAM)
    server, port, lifecycle = asyncio.run_coroutine_threadsafe(boot(), loop).result(1800)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    deadlines = {"health": args.health_deadline_ms / 1e3, "similar": args.similar_deadline_ms / 1e3}
    load = ctx.Process(target=paced_load, args=(port, ids[:: max(1, args.items // 10_000)], args.rate, deadlines, stop, send))
    try:
        load.start()
        time.sleep(2.0 + args.calm_s)  # the load process's start (imports, channels), then the calm period
        calm_start = time.time() - args.calm_s
        switch_start = time.time()
        redis.Redis.from_url(redis_url).xadd(STREAM, {FIELD: encode_activate(NEW)})
        while engine.serving is None or engine.serving.index.model_version != NEW:
            time.sleep(0.05)
        switch_end = time.time()
        log(f"switched to {NEW} in {switch_end - switch_start:.1f}s")
        time.sleep(args.calm_s)
        stop.set()
        records: list[Record] = receive.recv()
        load.join(30)
    finally:
        stop.set()
        if load.is_alive():
            load.terminate()
        asyncio.run_coroutine_threadsafe(lifecycle.stop(snapshot=False), loop).result(60)
        server.stop(0).wait(30)
        loop.call_soon_threadsafe(loop.stop)
        localstack.stop_service(redis_service)
        shutil.rmtree(var, ignore_errors=True)
    kinds = {"health": args.health_deadline_ms, "similar": args.similar_deadline_ms}
    during = {kind: summary(records, kind, switch_start, switch_end, ms) for kind, ms in kinds.items()}
    before = {kind: summary(records, kind, calm_start, switch_start, ms) for kind, ms in kinds.items()}
    for kind in kinds:
        log(f"{kind}: during the switch {during[kind]}; before it {before[kind]}")
    emit_result(
        {
            "bench": "switch_stall",
            "front": type(server.front).__name__ if hasattr(server, "front") else "grpc",
            "items": args.items,
            "dim": args.dim,
            "rate_per_kind": args.rate,
            "deadline_ms": kinds,
            "switch_s": round(switch_end - switch_start, 2),
            "generation_s": round(timings.get(NEW, 0.0), 2),
            "index_build_s": round(timings.get(NEW + "_build", 0.0), 2),
            "during_switch": during,
            "before_switch": before,
            "missed_deadline": sum(d.get("missed_deadline", 0) + d.get("other_errors", 0) for d in during.values()),
            "machine": f"{os.cpu_count()} cores, no GPU",
        },
        args.out,
    )


if __name__ == "__main__":
    main()
