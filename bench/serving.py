"""Serving benchmark: raw in-process FAISS against ``SimilarItems`` over gRPC on loopback, at the served width.

``python -m bench.serving [--items 1000000] [--dim 1024] [--compare-dim 64] [--out FILE]`` measures, for
synthetic item vectors shaped like the served model's and for gowalla's items as the served model embeds them:

- the served format: ``--dim`` (default ``IG_EMBEDDING_DIM``, the one width setting) with the index at the
  server's defaults: an IVF over the leading ``IG_SERVER_IVF_DIM`` components, holding them as 4-bit PQ codes
  (``IG_SERVER_IVF_CODES``), whose best ``IG_SERVER_IVF_REFINE`` candidates are re-ranked exactly at the full
  width (exact below ``IG_SERVER_ANN_MIN_ITEMS``);
- raw FAISS queries/s on one thread doing the same work (``IndexRefineFlat`` over that same IVF, one query per
  call);
- ``SimilarItems`` over gRPC against real server processes (client concurrency 8, 16, 32): throughput, p50/p99,
  with one server process and with one per core (``IG_SERVER_PROCESSES``, SO_REUSEPORT). The driver is
  bench/loadgen (Go, pre-serialised requests, built with ``go build``) over 32 connections; ghz runs once
  at 16 as a cross-check, and a Python ``grpc.aio`` client (one connection, one process) supplies the served
  answers. The client shares the two cores with the server, so its cost per call is reported too;
- the same servers at stated offered loads (``--rates``): bench/loadgen's open loop, calls due at a fixed rate
  over 16 callers, latency counted from each call's due time (so a call queued behind busy callers counts its
  wait), up to the first rate whose p99 passes ``--p99-target-ms``. The closed loop above measures p99 at
  whatever rate the machine saturates at; both are reported;
- two peers, one process per core, driven the same way at 16: our server on grpc's Python server alone
  (``IG_SERVER_FRONT=grpc``: what the native front end, ``server/native``, saves), and the floor under any
  servicer on grpc's Python server: a process that only looks up the item's vector, searches the index and
  returns the ids (``bench._serving_server.floor``);
- ``RecommendForSession`` (a session of 20 item events embedded at request time) against ``RecommendForUser``
  (a stored vector of a shopper with the same events) in the same run, same client and concurrency (16), each
  session's answer checked against its shopper's;
- recall@10 of the served answers against exact inner-product search, also under category filters;
- how long an upsert on the delta stream (a real redis-server) takes to show up in query answers;
- memory: the index's arrays per million items, and a serving process's resident memory;
- with ``--compare-dim``, the synthetic set again at that width in the same run, indexed as it was served then
  (the whole vector in an IVF of floats, no re-rank).

Synthetic vectors are shaped like the model's (``z = |h|^1/2 d^b x``): clustered, components of decaying scale
(a spectral filter), norms spread by a popularity prior. Vectors are not normalised: the engine ranks by inner
product, as the model scores.

- explanations (``bench._serving_explain``): ``RecommendForUser`` and ``SimilarItems`` with ``explain`` on against
  off, alternating on one server in one run, on a dataset loaded, trained and served by the whole pipeline
  (amazon-office by default): p99 on/off, and the share of returned items with at least one reason.

The RESULT line reports the synthetic set at concurrency 16 with one server process per core, driven by
bench/loadgen (or the Python client when Go is not available: ``client`` says which), served by the native
front end when it is built (``front`` says which); everything else is in ``details``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import psutil

from bench import _serving_explain as serving_explain
from bench._common import emit_result
from bench._serving_server import bench_card
from graphdb import localstack
from graphdb.dataset_paths import find_dataset
from graphdb.events import validate_events
from graphdb.ingest import aggregate
from graphdb.pseudonym import pseudonymise
from graphdb.schema import ITEM_INTERACTIONS
from graphdb.settings import EMBEDDING_DIM, GraphSettings, LocalStackSettings
from graphdb.subgraph import EdgeRow
from server.front import available as front_built
from server.index import IndexParams, ItemIndex, LabelMap, normalise
from server.settings import ServerSettings
from server.snapshot import save_snapshot
from workers.user_side import user_vector

STREAM = "ig:bench-embeddings"
ROOT = Path(__file__).resolve().parents[1]
GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz@v0.93.0"  # the version the Go module proxy serves here
CACHE_BIN = Path.home() / ".cache" / "interest-graph" / "bin"
# Several clients' connections, so SO_REUSEPORT can spread them over the processes. The kernel hashes them: with
# 8, one process sometimes got all or most of them and the run measured one process (2,157 against ~3,400
# calls/s); with 32 the per-process CPU came out even in every run. ``server_cpu_share`` reports it.
CONNECTIONS = 32


def log(msg: str) -> None:
    print(f"[serving] {msg}", flush=True)


SESSION_EVENTS = 20  # a browsing session's worth of item events
SESSION_KINDS = ("view", "view", "view", "click", "add_to_cart", "view", "click", "purchase")


# -- data ------------------------------------------------------------------------------------------------
def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors shaped like the served model's: 1 cluster centre per 1,000 items plus as much noise, components
    scaled like a spectral filter (sigma^0.75 of a decaying spectrum), norms spread by a popularity prior
    (Zipf degrees^0.4)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 1000), dim)).astype(np.float32)
    scale = np.geomspace(1.0, 0.05, dim).astype(np.float32)
    prior = (rng.zipf(1.8, n).clip(max=10_000) ** 0.4).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim)).astype(np.float32)
        out[start : start + m] = normalise(block) * scale * prior[start : start + m, None]
    return out


def gowalla_items(data_dir: Path | None, dim: int) -> np.ndarray:
    """gowalla's item vectors as the served model embeds them (its spectral fit at the served settings, without
    the validation selection, to keep the run short)."""
    from ml.dataset_files import load_gowalla
    from ml.embed import served_vectors
    from ml.settings import ModelSettings, TrainSettings
    from ml.train_served import fit_served

    split = load_gowalla(find_dataset("gowalla", data_dir))
    model = fit_served(split.train, ModelSettings(dim=dim, select_filter=False), TrainSettings(), progress=False).model
    _, items = served_vectors(model, split.train)
    return np.ascontiguousarray(items.numpy())


# -- measurements ----------------------------------------------------------------------------------------
def exact_neighbours(vecs: np.ndarray, qpos: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[set]:
    faiss.omp_set_num_threads(2)
    if mask is None:  # brute force without a second copy of the vectors (1M x 1024 floats are 4 GB)
        _, idx = faiss.knn(vecs[qpos], vecs, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        return [set([int(j) for j in row if j != q][:k]) for row, q in zip(idx, qpos)]
    cand = np.flatnonzero(mask)
    scores = vecs[qpos] @ vecs[cand].T
    out = []
    for row, q in zip(scores, qpos):
        order = cand[np.argsort(-row)[: k + 1]]
        out.append(set([int(j) for j in order if j != q][:k]))
    return out


def raw_index(index: ItemIndex, vecs: np.ndarray) -> faiss.Index:
    """Raw FAISS doing the server's work: the base as it is, or, when its scores are approximate (it holds the
    leading components, or codes), an ``IndexRefineFlat`` over that same base re-ranking as many candidates at
    the full width."""
    base = index.base
    dim = vecs.shape[1]
    if base.width == dim and base.codes == "flat":
        return base.index
    inner = (
        base.index
        if base.width == dim
        else faiss.IndexPreTransform(faiss.RemapDimensionsTransform(dim, base.width, False), base.index)
    )
    full = np.ascontiguousarray(vecs[base.labels])  # position p holds the vector of base.labels[p], as in the base
    raw = faiss.IndexRefineFlat(inner, faiss.swig_ptr(full))
    raw.k_factor = index.params.refine / 11
    return raw


def raw_qps(raw: faiss.Index, vecs: np.ndarray, qpos: np.ndarray, min_s: float = 3.0) -> tuple[float, float]:
    """Single-thread, one query per call."""
    faiss.omp_set_num_threads(1)
    n, start = 0, time.perf_counter()
    while True:
        for q in qpos:
            raw.search(vecs[q : q + 1], 11)
            n += 1
        if time.perf_counter() - start >= min_s:
            break
    return n / (time.perf_counter() - start), n


def index_bytes(index: ItemIndex) -> dict:
    """Memory of the serving index: the full-width vectors every query may re-rank (with the headroom kept for
    new items) and the FAISS base (its serialised size: codes, ids and centroids), per million items."""
    n = max(len(index), 1)
    vec = index._vec.nbytes  # noqa: SLF001 - measured, not changed
    faiss_bytes = int(faiss.serialize_index(index.base.index).nbytes)
    return {"vectors_bytes": vec, "faiss_bytes": faiss_bytes, "gb_per_million_items": round((vec + faiss_bytes) / n * 1e6 / 2**30, 3)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def engine_cost(index: ItemIndex, names: list[str], qpos: np.ndarray) -> float:
    """Microseconds per SimilarItems answer computed in-process by the serving engine (no gRPC)."""
    from threadpoolctl import threadpool_limits

    from graphdb.settings import GraphSettings
    from server.engine import Engine, ItemFilter

    threadpool_limits(1)  # the server runs single-threaded BLAS too (see server/__main__.py)
    engine = Engine(ServerSettings(snapshot_dir=None, redis_url=None), GraphSettings(embedding_dim=index.dim), None)
    engine.labels = index.labels
    engine.install(index)
    flt = ItemFilter()
    start = time.perf_counter()
    for q in qpos:
        engine.similar_items(names[q], 10, flt)
    return (time.perf_counter() - start) / len(qpos) * 1e6


async def grpc_load(port: int, queries: list[str], concurrency: int, seconds: float, answers: dict, flt=None, rules=None) -> dict:
    import grpc

    from proto.interest.v1 import interest_pb2 as pb
    from proto.interest.v1 import interest_pb2_grpc as pb_grpc

    latencies: list[float] = []
    counter = iter(range(10**12))
    deadline = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InterestServiceStub(channel)
        await stub.SimilarItems(pb.SimilarItemsRequest(item_id=queries[0], k=10))  # connect

        async def worker():
            while time.perf_counter() < deadline:
                j = next(counter) % len(queries)
                t0 = time.perf_counter()
                resp = await stub.SimilarItems(pb.SimilarItemsRequest(item_id=queries[j], k=10, filter=flt, rules=rules), timeout=5)
                latencies.append(time.perf_counter() - t0)
                if j not in answers:
                    answers[j] = [i.item_id for i in resp.items]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "qps": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "calls": len(lat),
    }


async def batch_load(port: int, queries: list[str], entries: int, concurrency: int, seconds: float, answers: dict) -> dict:
    """BatchRecommend calls of ``entries`` SimilarItems entries each (a page of lists), with the same client as
    ``grpc_load``; each batched answer is checked against the single call's (``answers``)."""
    import grpc

    from proto.interest.v1 import interest_pb2 as pb
    from proto.interest.v1 import interest_pb2_grpc as pb_grpc

    latencies: list[float] = []
    counter = iter(range(10**12))
    mismatches = 0
    deadline = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InterestServiceStub(channel)
        await stub.SimilarItems(pb.SimilarItemsRequest(item_id=queries[0], k=10))  # connect

        async def worker() -> None:
            nonlocal mismatches
            while time.perf_counter() < deadline:
                js = [next(counter) % len(queries) for _ in range(entries)]
                request = pb.BatchRecommendRequest(
                    entries=[pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id=queries[j], k=10)) for j in js]
                )
                t0 = time.perf_counter()
                resp = await stub.BatchRecommend(request, timeout=5)
                latencies.append(time.perf_counter() - t0)
                for j, r in zip(js, resp.results):
                    got = [i.item_id for i in r.similar.items]
                    mismatches += r.code != 0 or (j in answers and got != answers[j])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    return {
        "entries": entries,
        "concurrency": concurrency,
        "calls_per_s": len(lat) / elapsed,
        "lists_per_s": len(lat) * entries / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "calls": len(lat),
        "answers_differing_from_single_calls": int(mismatches),
    }


def shoppers(names: list[str], vecs: np.ndarray, scales: np.ndarray, n: int, seed: int = 2) -> tuple[list[list[dict]], dict]:
    """``n`` sessions of ``SESSION_EVENTS`` item events (as RecommendForSession sends them) and, keyed by the
    pseudonym of ``shopper-<i>``, the stored vector of a shopper with exactly those events (as a snapshot holds
    it), computed with the same user side (``workers.user_side``, the server's card ``bench_card``)."""
    rng = np.random.default_rng(seed)
    graph = GraphSettings()
    key = graph.pseudonym_key.get_secret_value()
    now = time.time() - 3600
    sessions, users = [], {}
    row = {name: j for j, name in enumerate(names)}
    for u in range(n):
        items = rng.choice(len(names), size=SESSION_EVENTS * 3 // 4, replace=False)
        events = [
            {"item_id": names[int(items[e % len(items)])], "type": SESSION_KINDS[e % len(SESSION_KINDS)], "ts": now + 20.0 * (e // 2)}
            for e in range(SESSION_EVENTS)
        ]
        valid, _ = validate_events([{**e, "event_id": f"s{u}-{k}", "user_id": "x"} for k, e in enumerate(events)], graph, time.time())
        rows = aggregate([(ev, "x") for _, ev in valid], graph.half_life_s)
        edges = [EdgeRow("x", r["target"], r["weight"], r["last"]) for rel in ITEM_INTERACTIONS for r in rows.get(rel, ())]
        known = {e.item: (vecs[row[e.item]], float(scales[row[e.item]])) for e in edges}
        embedded = user_vector(edges, known, bench_card("", vecs.shape[1]))
        assert embedded is not None
        sessions.append(events)
        users[pseudonymise(key, f"shopper-{u}")] = (embedded[0], now)
    return sessions, users


async def session_load(
    port: int, sessions: list[list[dict]], concurrency: int, seconds: float, server_cpu: Callable[[], float] | None = None
) -> dict:
    """RecommendForUser of ``shopper-<i>`` and RecommendForSession of their session (``shoppers``), each for
    ``seconds`` in two alternating halves, same client and concurrency; every session's answer is checked
    against its shopper's (same items, scores within 1e-5). ``server_cpu``: the server processes' CPU seconds so
    far, for each kind's server CPU per call."""
    import grpc

    from proto.interest.v1 import interest_pb2 as pb
    from proto.interest.v1 import interest_pb2_grpc as pb_grpc

    kinds = {"view": pb.EVENT_TYPE_VIEW, "click": pb.EVENT_TYPE_CLICK, "add_to_cart": pb.EVENT_TYPE_ADD_TO_CART}
    kinds["purchase"] = pb.EVENT_TYPE_PURCHASE
    requests = {
        "user": [pb.RecommendForUserRequest(user_id=f"shopper-{u}", k=10, include_seen=True) for u in range(len(sessions))],
        "session": [
            pb.RecommendForSessionRequest(
                events=[pb.SessionEvent(item_id=e["item_id"], type=kinds[e["type"]], ts=e["ts"]) for e in events],
                k=10,
                include_seen=True,
            )
            for events in sessions
        ],
    }
    latencies: dict[str, list[float]] = {"user": [], "session": []}
    elapsed = {"user": 0.0, "session": 0.0}
    cpu = {"user": 0.0, "session": 0.0}
    answers: dict[str, dict[int, list[tuple[str, float]]]] = {"user": {}, "session": {}}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InterestServiceStub(channel)
        calls = {"user": stub.RecommendForUser, "session": stub.RecommendForSession}
        for kind in ("user", "session"):
            await calls[kind](requests[kind][0], timeout=5)  # connect, warm
        for kind in ("user", "session", "user", "session"):
            counter = iter(range(10**12))
            deadline = time.perf_counter() + seconds / 2

            async def worker(kind: str = kind) -> None:
                while time.perf_counter() < deadline:
                    j = next(counter) % len(sessions)
                    t0 = time.perf_counter()
                    resp = await calls[kind](requests[kind][j], timeout=5)
                    latencies[kind].append(time.perf_counter() - t0)
                    if resp.cold_start:
                        raise RuntimeError(f"{kind} {j} got the cold-start answer")
                    answers[kind].setdefault(j, [(i.item_id, i.score) for i in resp.items])

            start, cpu0 = time.perf_counter(), server_cpu() if server_cpu else 0.0
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed[kind] += time.perf_counter() - start
            cpu[kind] += (server_cpu() - cpu0) if server_cpu else 0.0
    differing = 0
    for j, got in answers["session"].items():
        want = answers["user"].get(j)
        if want is not None:
            same = [i for i, _ in got] == [i for i, _ in want] and np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
            differing += not same
    out: dict = {"concurrency": concurrency, "session_events": SESSION_EVENTS}
    for kind, lat in latencies.items():
        ms = np.asarray(lat) * 1000
        out[kind] = {"qps": len(ms) / elapsed[kind], "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
        out[kind]["calls"] = len(ms)
        if server_cpu:
            out[kind]["server_cpu_us_per_call"] = cpu[kind] / len(ms) * 1e6
    out["p50_ratio"] = out["session"]["p50_ms"] / out["user"]["p50_ms"]
    out["p99_ratio"] = out["session"]["p99_ms"] / out["user"]["p99_ms"]
    out["compared"] = len(set(answers["session"]) & set(answers["user"]))
    out["answers_differing"] = differing
    return out


async def echo_load(port: int, concurrency: int, seconds: float) -> float:
    """Calls/s of a bare gRPC echo with the same client: what this machine allows any Python servicer."""
    import grpc

    payload = b"x" * 200  # about the size of a SimilarItems answer
    n = 0
    deadline = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/bench.Echo/Echo")
        await call(payload)

        async def worker():
            nonlocal n
            while time.perf_counter() < deadline:
                await call(payload, timeout=5)
                n += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - start)


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of a process so far; this process when pid is None."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_echo(seconds: float) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "bench._serving_server", "echo"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        s0, c0 = cpu_seconds(proc.pid), cpu_seconds()
        qps = asyncio.run(echo_load(port, 16, seconds))
        calls = qps * seconds
        return {
            "qps": qps,
            "server_cpu_us_per_call": (cpu_seconds(proc.pid) - s0) / calls * 1e6,
            "client_cpu_us_per_call": (cpu_seconds() - c0) / calls * 1e6,
        }
    finally:
        proc.terminate()
        proc.wait(30)


def ghz_binary() -> Path | None:
    """The ghz load generator: on PATH, cached, or built once by ``go install`` from the Go module proxy."""
    for found in (shutil.which("ghz"), CACHE_BIN / "ghz"):
        if found and Path(found).exists():
            return Path(found)
    go = shutil.which("go")
    if go is None:
        log("no ghz and no Go toolchain: the Python client alone drives the server")
        return None
    log(f"building the ghz load generator once: go install {GHZ_MODULE}")
    built = subprocess.run([go, "install", GHZ_MODULE], env=dict(os.environ, GOBIN=str(CACHE_BIN)), capture_output=True, text=True)
    if built.returncode != 0:
        log(f"ghz could not be built ({built.stderr.strip()[-300:]}); the Python client alone drives the server")
        return None
    return CACHE_BIN / "ghz"


def write_protoset(path: Path) -> Path:
    """The service's descriptors for ghz (its own .proto parser predates proto3 ``optional``)."""
    from grpc_tools import protoc

    if (
        protoc.main(
            [
                "protoc",
                f"-I{ROOT}",
                f"--descriptor_set_out={path}",
                "--include_imports",
                str(ROOT / "proto" / "interest" / "v1" / "interest.proto"),
            ]
        )
        != 0
    ):
        raise RuntimeError("protoc could not write the descriptor set for ghz")
    return path


def ghz_load(ghz: Path, protoset: Path, data: Path, port: int, concurrency: int, seconds: float) -> dict:
    """``SimilarItems`` calls/s and latencies under ghz (the queries of ``data`` round-robin)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(
        [
            str(ghz),
            "--insecure",
            "--protoset",
            str(protoset),
            "--call",
            "interest.v1.InterestService.SimilarItems",
            "--data-file",
            str(data),
            "--concurrency",
            str(concurrency),
            "--connections",
            str(min(CONNECTIONS, concurrency)),
            "--duration",
            f"{seconds}s",
            "--duration-stop",
            "wait",
            "--cpus",
            "1",
            "--timeout",
            "5s",
            "--format",
            "json",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0 and not run.stdout.strip():
        raise RuntimeError(f"ghz failed: {run.stderr.strip()[-500:]}")
    report = json.loads(run.stdout)
    lat = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    codes = report.get("statusCodeDistribution") or {}
    calls = int(codes.get("OK", 0))
    return {
        "concurrency": concurrency,
        "qps": calls / (report["total"] / 1e9),
        "p50_ms": lat.get(50),
        "p99_ms": lat.get(99),
        "calls": calls,
        "errors": int(sum(codes.values()) - calls),
        "client_cpu_us_per_call": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / max(calls, 1) * 1e6,
    }


def loadgen_binary(out_dir: Path) -> Path | None:
    """bench/loadgen (Go: raw pre-serialised requests, so it leaves the shared cores to the server), built
    with ``go build`` (its modules come from the Go module proxy the first time)."""
    go = shutil.which("go")
    if go is None:
        log("no Go toolchain on PATH: bench/loadgen cannot be built, the Python client drives the server")
        return None
    target = out_dir / "loadgen"
    built = subprocess.run([go, "build", "-o", str(target), "."], cwd=ROOT / "bench" / "loadgen", capture_output=True, text=True)
    if built.returncode != 0:
        log(f"bench/loadgen could not be built ({built.stderr.strip()[-300:]})")
        return None
    return target


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_requests(path: Path, queries: list[str]) -> Path:
    """The SimilarItems requests for bench/loadgen: serialised, each after its varint length."""
    from proto.interest.v1 import interest_pb2 as pb

    with path.open("wb") as f:
        for q in queries:
            raw = pb.SimilarItemsRequest(item_id=q, k=10).SerializeToString()
            f.write(_varint(len(raw)) + raw)
    return path


def loadgen_load(binary: Path, requests: Path, port: int, concurrency: int, seconds: float, rate: float = 0.0) -> dict:
    """``SimilarItems`` calls/s and latencies under bench/loadgen (one OS thread: GOMAXPROCS=1, as ghz --cpus 1).
    ``rate`` > 0: open loop, that many calls due a second (evenly spaced) over ``concurrency`` callers, latency
    counted from each call's due time (bench/loadgen's package comment); 0: closed loop, as fast as they go."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(
        [
            str(binary),
            "-addr",
            f"127.0.0.1:{port}",
            "-method",
            "/interest.v1.InterestService/SimilarItems",
            "-data",
            str(requests),
            "-c",
            str(concurrency),
            "-conns",
            str(CONNECTIONS),
            "-duration",
            f"{seconds}s",
            "-rate",
            str(rate),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, GOMAXPROCS="1"),
        timeout=seconds + 60,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise RuntimeError(f"loadgen failed: {run.stderr.strip()[-500:]}")
    report = json.loads(run.stdout)
    calls = int(report["ok"])
    out = {
        "concurrency": concurrency,
        "qps": report["qps"],
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "calls": calls,
        "errors": int(sum(report["codes"].values()) - calls),
        "client_cpu_us_per_call": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / max(calls, 1) * 1e6,
    }
    if rate:
        out["rate"] = rate
        out |= {
            key: report[key] for key in ("p999_ms", "max_ms", "service_p50_ms", "service_p99_ms", "send_lag_p50_ms", "send_lag_p99_ms")
        }
    return out


def offered_load(binary: Path, requests: Path, port: int, procs: list, args, what: str) -> list[dict]:
    """bench/loadgen's open loop at each of ``--rates`` (calls due a second, ascending) with 16 callers, on
    servers already warm, up to the first rate whose p99 exceeds ``--p99-target-ms`` (the rates above it only
    queue more): p99 at a stated offered load, where the closed loop's is at the load the machine saturates at."""
    out = []
    for rate in args.rates:
        s0 = servers_cpu(procs)
        split: list = []
        watch = threading.Thread(target=connections_per_process, args=(port, procs, split))
        watch.start()
        run = loadgen_load(binary, requests, port, 16, args.seconds, rate)
        watch.join()
        run["client"] = "loadgen-open"
        run["connections_per_process"] = split[0] if split else None
        run["server_cpu_us_per_call"] = (servers_cpu(procs) - s0) / max(run["calls"], 1) * 1e6
        out.append(run)
        log(
            f"{what}, open loop at {rate:.0f} calls/s due, 16 callers: {run['qps']:.0f} calls/s done, from the due time "
            f"p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms (from the send: p99 {run['service_p99_ms']:.2f} ms; "
            f"send lag p99 {run['send_lag_p99_ms']:.2f} ms), {run['errors']} errors; server CPU per call "
            f"{run['server_cpu_us_per_call']:.0f} us, client {run['client_cpu_us_per_call']:.0f} us; connections "
            f"{run['connections_per_process']}"
        )
        if run["p99_ms"] > args.p99_target_ms:
            break
    return out


def start_servers(
    snap: Path, redis_url: str, n_categories: int, nprobe: int, processes: int, dim: int, floor: bool = False, front: str = "auto"
) -> tuple[list, int]:
    """``processes`` bench servers on one port (each loads the snapshot); returns them once all serve.
    ``floor``: the least Python gRPC server instead (``bench._serving_server.floor``); ``front``: who owns
    the port (``IG_SERVER_FRONT``)."""
    port = localstack.free_port() if processes > 1 else 0
    # Ours with the environment `python -m server` has (no OMP_NUM_THREADS: the engine keeps each search on its
    # thread); the floor searches from grpc's threads without the engine, so one OpenMP thread is set for it.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"IG_SERVER_FRONT": front, "IG_EMBEDDING_DIM": str(dim)}
    if floor:
        env["OMP_NUM_THREADS"] = "1"
    args = ["floor", str(snap), str(nprobe)] if floor else [str(snap), redis_url, STREAM, str(n_categories), str(nprobe)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench._serving_server", *args, str(port), str(processes)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(processes)
    ]
    ports = set()
    for proc in procs:
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            stop_servers(procs)
            raise RuntimeError(f"server did not start: {line!r}")
        ports.add(int(line.split()[1]))
    return procs, ports.pop()


def stop_servers(procs: list) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)


def servers_cpu(procs: list) -> float:
    return sum(cpu_seconds(p.pid) for p in procs)


def connections_per_process(port: int, procs: list, out: list, after_s: float = 1.0) -> None:
    """Appends to ``out`` how many of the client's connections each server process holds, ``after_s`` into a
    run (psutil; bench/loadgen connects on first use, so those are the connections that carry calls). At c=16
    its calls take the lowest-numbered idle connection, so 16 carry them, and the kernel's SO_REUSEPORT hash
    splits those between the processes: the process holding more of them queues more of the calls."""
    time.sleep(after_s)
    if len(procs) < 2:
        return
    counts = []
    for p in procs:
        conns = psutil.Process(p.pid).net_connections(kind="tcp")
        counts.append(sum(c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port for c in conns))
    out.append(counts)


async def visibility(port: int, redis_url: str, model_version: str, dim: int, n: int = 200) -> dict:
    """Time from XADD of an upsert to the first NearestItems answer that contains it."""
    import grpc
    import redis.asyncio as aioredis

    from proto.interest.v1 import interest_pb2 as pb
    from proto.interest.v1 import interest_pb2_grpc as pb_grpc
    from server.delta import FIELD, encode_upsert

    rng = np.random.default_rng(5)
    r = aioredis.from_url(redis_url)
    out = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InterestServiceStub(channel)
        for j in range(n):
            # far out along its direction, so it is the top answer to a query along it whatever the others' norms
            vec = 1e4 * normalise(rng.standard_normal((1, dim)).astype(np.float32))[0]
            item = f"fresh-{j}"
            t0 = time.perf_counter()
            await r.xadd(STREAM, {FIELD: encode_upsert(pb.NODE_TYPE_ITEM, item, vec, model_version)})
            while True:
                resp = await stub.NearestItems(pb.NearestItemsRequest(vector=vec.tolist(), k=1), timeout=5)
                if resp.items and resp.items[0].item_id == item:
                    break
                if time.perf_counter() - t0 > 5:
                    raise RuntimeError(f"upsert {item} not visible after 5 s")
            out.append((time.perf_counter() - t0) * 1000)
    await r.aclose()
    lat = np.asarray(out)
    return {"upserts": n, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max())}


def recall(answers: dict, gt: list[set], qpos: np.ndarray, names: list[str]) -> float:
    pos_of = {name: i for i, name in enumerate(names)}
    hits = [len({pos_of[a] for a in ans if a in pos_of} & gt[j]) / 10 for j, ans in answers.items()]
    return float(np.mean(hits))


def rules_cost(port: int, queries: list[str], n_categories: int, seconds: float, name: str) -> dict:
    """SimilarItems (k 10, c 16, the Python client) without and with ranking rules, on the same server and queries,
    alternated twice so drift hits both alike. Item j is in category c{j % N} and brand b{j % 7}
    (bench._serving_server); the caps are checked in every answer."""
    from proto.interest.v1 import interest_pb2 as pb

    cases = {
        "none": None,
        "caps": pb.RankingRules(max_per_category=1, max_per_brand=2),
        "boosts": pb.RankingRules(boosts=[pb.Boost(category_id=f"c{c}", multiplier=2.0) for c in range(3)]),
        "caps_and_boosts": pb.RankingRules(
            max_per_category=1, max_per_brand=2, boosts=[pb.Boost(category_id=f"c{c}", multiplier=2.0) for c in range(3)]
        ),
    }
    runs: dict[str, list[dict]] = {key: [] for key in cases}
    answers: dict[str, dict] = {key: {} for key in cases}
    for _ in range(2):
        for key, rules in cases.items():
            runs[key].append(asyncio.run(grpc_load(port, queries, 16, seconds / 2, answers[key], rules=rules)))
    out: dict = {}
    for key in cases:
        calls = sum(r["calls"] for r in runs[key])
        qps = sum(r["qps"] for r in runs[key]) / len(runs[key])
        out[key] = {
            "qps": qps,
            "p50_ms": float(np.mean([r["p50_ms"] for r in runs[key]])),
            "p99_ms": float(np.mean([r["p99_ms"] for r in runs[key]])),
            "calls": calls,
            "short_answers": sum(len(a) < 10 for a in answers[key].values()),
        }
        if key.startswith("caps"):
            out[key]["cap_violations"] = sum(_violations(a, n_categories) for a in answers[key].values())
    for key in cases:
        out[key]["qps_vs_none"] = out[key]["qps"] / out["none"]["qps"]
        out[key]["p99_vs_none"] = out[key]["p99_ms"] / out["none"]["p99_ms"]
        log(
            f"{name}: rules {key}: {out[key]['qps']:.0f} calls/s ({out[key]['qps_vs_none']:.2f}x none), p50 "
            f"{out[key]['p50_ms']:.2f} ms, p99 {out[key]['p99_ms']:.2f} ms ({out[key]['p99_vs_none']:.2f}x); "
            f"{out[key]['short_answers']} answers under 10 items, {out[key].get('cap_violations', 0)} cap violations"
        )
    return out


def _violations(items: list[str], n_categories: int) -> int:
    """Items past the caps of ``rules_cost`` (1 per category, 2 per brand) in one answer."""
    js = [int(i[1:]) for i in items]
    _, per_cat = np.unique([j % n_categories for j in js], return_counts=True)
    _, per_brand = np.unique([j % 7 for j in js], return_counts=True)
    return int(np.maximum(per_cat - 1, 0).sum() + np.maximum(per_brand - 2, 0).sum())


def index_params(args, codes: str) -> IndexParams:
    """The served index's defaults, with the bench's ``--nprobe`` and what the IVF lists hold."""
    defaults = ServerSettings(snapshot_dir=None, redis_url=None)
    return IndexParams(
        nprobe=args.nprobe,
        ivf_dim=defaults.ivf_dim,
        refine=defaults.ivf_refine,
        ann_min_items=defaults.ann_min_items,
        ivf_codes=codes,
    )


def synthetic_snapshot(work: Path, args) -> tuple[Path, list[str], int]:
    """``--items`` x ``--dim`` synthetic items in the served index (``--ivf-codes``, ``--nprobe``), saved as the
    snapshot the front-end benches' servers load: (snapshot folder, item ids, width)."""
    vecs = synthetic(args.items, args.dim)
    n, dim = vecs.shape
    names = [f"i{j}" for j in range(n)]
    faiss.omp_set_num_threads(2)
    scales = np.random.default_rng(3).uniform(0.05, 1.0, n).astype(np.float32)
    index = ItemIndex.build(dim, "bench-synthetic", LabelMap(), index_params(args, args.ivf_codes), names, vecs, None, scales)
    snap = work / "snap"
    snap.mkdir()
    save_snapshot(snap, index, {}, stream_id="0-0")
    return snap, names, dim


def session_only(args, redis_url: str) -> dict:
    """``--session-only``: the synthetic set as ``run_dataset`` serves it (one server process), and only
    RecommendForSession against RecommendForUser (``session_load``), ``--rounds`` times on that server."""
    vecs = synthetic(args.items, args.dim)
    n, dim = vecs.shape
    names = [f"i{j}" for j in range(n)]
    params = index_params(args, args.ivf_codes)
    faiss.omp_set_num_threads(2)
    scales = np.random.default_rng(3).uniform(0.05, 1.0, n).astype(np.float32)  # as run_dataset
    index = ItemIndex.build(dim, "bench-synthetic", LabelMap(), params, names, vecs, None, scales)
    snap = Path(tempfile.mkdtemp(prefix="ig-bench-"))
    import redis

    redis.Redis.from_url(redis_url).delete(STREAM)
    sessions, users = shoppers(names, vecs, scales, args.sessions)
    save_snapshot(snap, index, users, stream_id="0-0")
    del index, vecs
    rounds = []
    procs, port = start_servers(snap, redis_url, args.categories, args.nprobe, 1, dim)
    try:
        for r in range(args.rounds):
            session = asyncio.run(session_load(port, sessions, 16, args.seconds, lambda: servers_cpu(procs)))
            rounds.append(session)
            log(
                f"round {r + 1}: RecommendForSession ({SESSION_EVENTS} events) vs RecommendForUser, c=16: "
                f"{session['session']['qps']:.0f} vs {session['user']['qps']:.0f} calls/s, p50 {session['session']['p50_ms']:.2f} "
                f"vs {session['user']['p50_ms']:.2f} ms ({session['p50_ratio']:.2f}x), p99 {session['session']['p99_ms']:.2f} vs "
                f"{session['user']['p99_ms']:.2f} ms ({session['p99_ratio']:.2f}x); server CPU per call "
                f"{session['session']['server_cpu_us_per_call']:.0f} vs {session['user']['server_cpu_us_per_call']:.0f} us; "
                f"{session['answers_differing']} of {session['compared']} session answers differ from their shopper's"
            )
    finally:
        stop_servers(procs)
        shutil.rmtree(snap, ignore_errors=True)
    return {"items": n, "dim": dim, "rounds": rounds}


def run_dataset(name: str, vecs: np.ndarray, prefix: str, args, redis_url: str, n_categories: int, codes: str | None = None) -> dict:
    n, dim = vecs.shape
    names = [f"{prefix}{j}" for j in range(n)]
    params = index_params(args, codes or args.ivf_codes)
    t0 = time.perf_counter()
    faiss.omp_set_num_threads(2)
    # each item's in_scale s_j = d_j^(-a-b) (sessions): a spread like the model's over Zipf degrees
    scales = np.random.default_rng(3).uniform(0.05, 1.0, n).astype(np.float32)
    index = ItemIndex.build(dim, f"bench-{name}", LabelMap(), params, names, vecs, None, scales)
    build_s = time.perf_counter() - t0
    kind = (
        (
            f"IVF ({index.base.codes}) over {index.base.width} of {dim} components, nlist {index.base.index.nlist}, "
            f"nprobe {args.nprobe}" + (f", re-rank {params.refine}" if index.base.width < dim or index.base.codes != "flat" else "")
        )
        if index.base.is_ivf
        else f"flat, {dim} components"
    )
    log(f"{name}: {n} items, index built in {build_s:.1f}s ({kind})")
    memory = index_bytes(index)
    log(f"{name}: index memory {memory['gb_per_million_items']} GB per million items")
    rng = np.random.default_rng(1)
    qpos = rng.choice(n, size=min(args.queries, n), replace=False)
    gt = exact_neighbours(vecs, qpos, 10)
    raw = raw_index(index, vecs)
    qps, _ = raw_qps(raw, vecs, qpos)
    _, raw_idx = raw.search(vecs[qpos], 11)
    raw_recall = float(
        np.mean(
            [
                len(set(int(index.base.labels[p]) for p in row if p >= 0 and index.base.labels[p] != q).intersection(g)) / 10
                for row, q, g in zip(raw_idx, qpos, gt)
            ]
        )
    )
    del raw
    log(f"{name}: raw FAISS {qps:.0f} q/s on one thread, recall@10 {raw_recall:.3f}")
    engine_us = engine_cost(index, names, qpos)
    log(f"{name}: the server's search path without gRPC (id lookup, search, exclusion, ids): {engine_us:.0f} us/call")

    snap = Path(tempfile.mkdtemp(prefix="ig-bench-"))
    import redis

    redis.Redis.from_url(redis_url).delete(STREAM)  # the server replays the stream from its start
    sessions, users = shoppers(names, vecs, scales, args.sessions)
    save_snapshot(snap, index, users, stream_id="0-0")
    del index
    queries = [names[q] for q in qpos]
    runs, answers, filtered, rules = [], {}, {}, {}
    procs, port = start_servers(snap, redis_url, n_categories, args.nprobe, 1, dim)
    server_rss_mb = rss_mb(procs[0].pid)
    try:
        # The Python client, one connection, one server process: also the source of the served answers.
        for c in (8, 16, 32):
            s0, c0 = servers_cpu(procs), cpu_seconds()
            runs.append(asyncio.run(grpc_load(port, queries, c, args.seconds, answers)))
            calls = runs[-1]["calls"]
            runs[-1]["server_cpu_us_per_call"] = (servers_cpu(procs) - s0) / calls * 1e6
            runs[-1]["client_cpu_us_per_call"] = (cpu_seconds() - c0) / calls * 1e6
            log(
                f"{name}: Python client, 1 server process, c={c}: {runs[-1]['qps']:.0f} calls/s, p50 "
                f"{runs[-1]['p50_ms']:.2f} ms, p99 {runs[-1]['p99_ms']:.2f} ms; CPU per call: server "
                f"{runs[-1]['server_cpu_us_per_call']:.0f} us, client {runs[-1]['client_cpu_us_per_call']:.0f} us"
            )
        # A page of 8 lists in one BatchRecommend call, against the same lists as 8 single calls (c=16 above).
        batch = asyncio.run(batch_load(port, queries, 8, 16, args.seconds, answers))
        single = next(r for r in runs if r["concurrency"] == 16)
        batch["lists_per_s_vs_single_calls"] = batch["lists_per_s"] / single["qps"]
        log(
            f"{name}: BatchRecommend of 8 lists, c=16: {batch['calls_per_s']:.0f} calls/s = {batch['lists_per_s']:.0f} "
            f"lists/s ({batch['lists_per_s_vs_single_calls']:.2f}x single calls), p50 {batch['p50_ms']:.2f} ms, p99 "
            f"{batch['p99_ms']:.2f} ms; {batch['answers_differing_from_single_calls']} answers differ from single calls"
        )
        # Anonymous sessions against stored shoppers with the same events (the same 16 concurrent calls).
        session = asyncio.run(session_load(port, sessions, 16, args.seconds, lambda: servers_cpu(procs)))
        log(
            f"{name}: RecommendForSession ({SESSION_EVENTS} events) vs RecommendForUser, c=16: "
            f"{session['session']['qps']:.0f} vs {session['user']['qps']:.0f} calls/s, p50 {session['session']['p50_ms']:.2f} vs "
            f"{session['user']['p50_ms']:.2f} ms ({session['p50_ratio']:.2f}x), p99 {session['session']['p99_ms']:.2f} vs "
            f"{session['user']['p99_ms']:.2f} ms ({session['p99_ratio']:.2f}x); {session['answers_differing']} of "
            f"{session['compared']} session answers differ from their shopper's; server CPU per call "
            f"{session['session']['server_cpu_us_per_call']:.0f} vs {session['user']['server_cpu_us_per_call']:.0f} us"
        )
        echo_run = measure_echo(args.seconds)
        echo = echo_run["qps"]
        log(
            f"{name}: bare gRPC echo (same client, c=16): {echo:.0f} calls/s; CPU per call: server "
            f"{echo_run['server_cpu_us_per_call']:.0f} us, client {echo_run['client_cpu_us_per_call']:.0f} us"
        )
        rec = recall(answers, gt, qpos, names)
        log(f"{name}: served recall@10 {rec:.3f} over {len(answers)} queries")
        if n_categories:
            from proto.interest.v1 import interest_pb2 as pb

            cat = np.arange(n) % n_categories
            for label, cats in (("1_category", [0]), ("5_categories", [0, 1, 2, 3, 4])):
                mask = np.isin(cat, cats)
                fq = qpos[: min(300, len(qpos))]
                fgt = exact_neighbours(vecs, fq, 10, mask)
                fans: dict = {}
                flt = pb.ItemFilter(category_ids=[f"c{c}" for c in cats])
                run = asyncio.run(grpc_load(port, [names[q] for q in fq], 16, min(args.seconds, 3.0), fans, flt))
                filtered[label] = {
                    "selectivity": float(mask.mean()),
                    "recall_at_10": recall(fans, fgt, fq, names),
                    "qps": run["qps"],
                    "p99_ms": run["p99_ms"],
                }
                log(
                    f"{name}: filter {label} ({mask.mean():.1%} of items): recall@10 "
                    f"{filtered[label]['recall_at_10']:.3f}, {run['qps']:.0f} calls/s, p99 {run['p99_ms']:.2f} ms"
                )
            rules = rules_cost(port, queries, n_categories, args.seconds, name)
        vis = asyncio.run(visibility(port, redis_url, f"bench-{name}", dim, args.upserts))
        log(f"{name}: upsert visible after p50 {vis['p50_ms']:.1f} ms, p99 {vis['p99_ms']:.1f} ms")
    finally:
        stop_servers(procs)

    # Go clients against one server process, one per core, and the floor server: bench/loadgen at 8, 16 and 32,
    # ghz (the common tool, costlier per call) at 16 as a cross-check.
    configs: dict[str, list] = {}
    open_loop: dict[str, list] = {}
    try:
        work = Path(tempfile.mkdtemp(prefix="ig-bench-go-"))
        loadgen = loadgen_binary(work) if not args.no_go else None
        ghz = ghz_binary() if not args.no_go else None
        requests = write_requests(work / "queries.bin", queries)
        protoset = write_protoset(work / "interest.protoset") if ghz else None
        data = work / "queries.json"
        data.write_text(json.dumps([{"item_id": q, "k": 10} for q in queries]))
        ncpu = max(1, os.cpu_count() or 1)
        # Ours as served (native front end when built), ours on grpc's Python server alone, and the floor.
        peers = [
            ("1", 1, False, "auto"),
            (str(ncpu), ncpu, False, "auto"),
            ("grpc_front", ncpu, False, "grpc"),
            ("floor", ncpu, True, "auto"),
        ]
        for key, processes, floor, front in peers if loadgen else []:
            if key in configs:
                continue  # one core: "1" is also one per core
            procs, port = start_servers(snap, redis_url, n_categories, args.nprobe, processes, dim, floor, front)
            try:
                loadgen_load(loadgen, requests, port, 16, 1.0)  # warm-up: connections, first calls
                configs[key] = []
                clients = (
                    [("loadgen", 16)]
                    if floor or front == "grpc"
                    else [("loadgen", 8), ("loadgen", 16), ("loadgen", 32)] + ([("ghz", 16)] if ghz else [])
                )
                for client, c in clients:
                    s0, each0 = servers_cpu(procs), [cpu_seconds(p.pid) for p in procs]
                    split: list = []
                    watch = threading.Thread(target=connections_per_process, args=(port, procs, split))
                    watch.start()
                    if client == "loadgen":
                        run = loadgen_load(loadgen, requests, port, c, args.seconds)
                    else:
                        run = ghz_load(ghz, protoset, data, port, c, args.seconds)
                    watch.join()
                    run["client"] = client
                    run["connections_per_process"] = split[0] if split else None
                    run["server_cpu_us_per_call"] = (servers_cpu(procs) - s0) / max(run["calls"], 1) * 1e6
                    each = [cpu_seconds(p.pid) - t for p, t in zip(procs, each0)]
                    run["server_cpu_share"] = [round(t / max(sum(each), 1e-9), 3) for t in each]
                    configs[key].append(run)
                    what = (
                        f"{processes} server process(es)"
                        + (" of the floor server" if floor else "")
                        + (" on grpc's Python server alone" if front == "grpc" else "")
                    )
                    log(
                        f"{name}: {client}, {what}, c={c}: {run['qps']:.0f} calls/s, p50 "
                        f"{run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms, {run['errors']} errors; CPU per call: "
                        f"servers {run['server_cpu_us_per_call']:.0f} us, "
                        f"client {run['client_cpu_us_per_call']:.0f} us; share of the processes "
                        f"{run['server_cpu_share']}, connections {run['connections_per_process']}"
                    )
                if not floor and front != "grpc" and args.rates:
                    open_loop[key] = offered_load(loadgen, requests, port, procs, args, f"{name}: {processes} server process(es)")
            finally:
                stop_servers(procs)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(snap, ignore_errors=True)
    if configs:
        served_by = str(max(1, os.cpu_count() or 1))
        client, primary = "loadgen", next(r for r in configs[served_by] if r["client"] == "loadgen" and r["concurrency"] == 16)
    else:
        served_by, client, primary = "1", "python-aio", runs[1]
    floor_qps = configs["floor"][0]["qps"] if "floor" in configs else None
    grpc_front_qps = configs["grpc_front"][0]["qps"] if "grpc_front" in configs else None
    return {
        "items": n,
        "dim": dim,
        "index": kind,
        "memory": {**memory, "server_rss_mb": server_rss_mb},
        "build_s": build_s,
        "raw_qps": qps,
        "raw_recall_at_10": raw_recall,
        "grpc": runs,
        "batch": batch,
        "session": session,
        "go_clients": configs,
        "open_loop": open_loop,
        "client": client,
        "server_processes": int(served_by),
        "grpc_qps": primary["qps"],
        "ratio": primary["qps"] / qps,
        "p50_ms": primary["p50_ms"],
        "p99_ms": primary["p99_ms"],
        "connections_per_process": primary.get("connections_per_process"),
        "recall_at_10": rec,
        "filtered": filtered,
        "rules": rules,
        "upsert_visibility": vis,
        "echo_qps": echo,
        "echo": echo_run,
        "engine_us_per_call": engine_us,
        "python_client_qps": runs[1]["qps"],
        "grpc_vs_echo": runs[1]["qps"] / echo,
        "floor_qps": floor_qps,
        "floor_ratio": floor_qps / qps if floor_qps else None,
        "grpc_front_qps": grpc_front_qps,
        "grpc_front_ratio": grpc_front_qps / qps if grpc_front_qps else None,
    }


def open_rows(run: dict) -> dict:
    """The open loop's rows for the RESULT: per server-process count, each offered rate's calls/s done and
    latencies from the due time (and the p99 from the send)."""
    keys = ("rate", "qps", "p50_ms", "p99_ms", "service_p99_ms", "server_cpu_us_per_call", "connections_per_process")
    return {
        procs: [{k: round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys} for r in rows]
        for procs, rows in run["open_loop"].items()
    }


# What the RESULT says of gowalla served end to end (the rest is in details).
SUMMARY = ("items", "dim", "index", "raw_qps", "grpc_qps", "p50_ms", "p99_ms", "recall_at_10", "client", "server_processes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=EMBEDDING_DIM, help="the served width (IG_EMBEDDING_DIM)")
    parser.add_argument(
        "--compare-dim",
        type=int,
        default=64,
        help="also run the synthetic set at this width (0 = not): the previous served width, in the same run",
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=6.0, help="per concurrency level")
    defaults = ServerSettings(snapshot_dir=None, redis_url=None)
    parser.add_argument("--nprobe", type=int, default=defaults.ivf_nprobe)
    parser.add_argument(
        "--ivf-codes", default=defaults.ivf_codes, choices=["pq4", "flat"], help="what the IVF lists hold (IG_SERVER_IVF_CODES)"
    )
    parser.add_argument(
        "--rates",
        type=lambda text: sorted(float(r) for r in text.split(",") if r.strip()),
        default=[2000.0, 2250.0, 2500.0, 2750.0, 3000.0, 3500.0],
        help="open loop (bench/loadgen -rate): calls/s offered, comma-separated, ascending ('' = none)",
    )
    parser.add_argument("--p99-target-ms", type=float, default=10.0, help="the open loop stops past the first rate above it")
    parser.add_argument("--upserts", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=500, help="sessions (and shoppers with the same events) measured")
    parser.add_argument("--categories", type=int, default=50, help="synthetic categories (item j in c{j %% N})")
    parser.add_argument("--no-gowalla", action="store_true")
    parser.add_argument(
        "--gowalla-only", action="store_true", help="only gowalla served end to end (a long run split in two under the CPU lock)"
    )
    parser.add_argument("--redis-url", help="use a running Redis instead of starting one")
    parser.add_argument("--no-go", action="store_true", help="drive the server with the Python client only")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-explain", action="store_true", help="skip the explanations section (bench._serving_explain)")
    parser.add_argument("--explain-only", action="store_true", help="run only the explanations section")
    parser.add_argument("--explain-dataset", default="amazon-office", help="loaded, trained and served for that section")
    parser.add_argument("--explain-users", type=int, default=500, help="shoppers (and items) asked")
    parser.add_argument("--explain-concurrency", type=int, default=4)
    parser.add_argument("--explain-seconds", type=float, default=4.0, help="per round and mode (explain off, on)")
    parser.add_argument("--explain-rounds", type=int, default=3)
    parser.add_argument(
        "--session-only", action="store_true", help="run only RecommendForSession against RecommendForUser (--rounds times)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --session-only: rounds on the same server")
    args = parser.parse_args()
    explained = None
    if args.session_only:
        args.no_explain = True
    if not args.no_explain:
        # First, on its own stack: the pipeline it starts (Neo4j, Redis, a worker, a server) is gone before the rest.
        explained = serving_explain.measure(
            args.explain_dataset,
            users=args.explain_users,
            k=10,
            concurrency=args.explain_concurrency,
            seconds=args.explain_seconds,
            rounds=args.explain_rounds,
        )
    if args.explain_only:
        assert explained is not None, "--explain-only with --no-explain measures nothing"
        emit_result({"bench": "serving", "explain": explained, "machine": f"{os.cpu_count()} cores, no GPU"}, args.out)
        return

    started = None
    redis_url = args.redis_url
    if redis_url is None:
        var = Path(tempfile.mkdtemp(prefix="ig-bench-redis-"))
        stack = LocalStackSettings(var_dir=var, redis_port=localstack.free_port())
        started = (localstack.start_redis(stack), var)
        redis_url = f"redis://127.0.0.1:{stack.redis_port}/0"
    if args.session_only:
        try:
            only = session_only(args, redis_url)
        finally:
            if started is not None:
                localstack.stop_service(started[0])
                shutil.rmtree(started[1], ignore_errors=True)
        last = only["rounds"]
        result = {
            "bench": "serving",
            "session_only": True,
            "items": only["items"],
            "dim": only["dim"],
            "session_vs_user_p50": [round(r["p50_ratio"], 3) for r in last],
            "session_vs_user_p99": [round(r["p99_ratio"], 3) for r in last],
            "session_answers_differing": sum(r["answers_differing"] for r in last),
            "front": "native" if front_built() else "grpc",
            "machine": f"{os.cpu_count()} cores, no GPU",
            "details": only,
        }
        emit_result(result, args.out)
        return
    synth = compare = None
    try:
        if not args.gowalla_only:
            t0 = time.perf_counter()
            vecs = synthetic(args.items, args.dim)
            log(f"synthetic: {args.items} model-shaped {args.dim}-d vectors in {time.perf_counter() - t0:.1f}s")
            synth = run_dataset("synthetic", vecs, "i", args, redis_url, args.categories)
            del vecs
        if args.compare_dim and not args.gowalla_only:
            vecs = synthetic(args.items, args.compare_dim)
            # as served before: the whole vector in an IVF of floats, no re-rank
            compare = run_dataset(f"synthetic-{args.compare_dim}d", vecs, "i", args, redis_url, args.categories, "flat")
            del vecs
        gow = None
        if not args.no_gowalla:
            t0 = time.perf_counter()
            gvecs = gowalla_items(args.data_dir, args.dim)
            log(f"gowalla: {len(gvecs)} served item vectors ({args.dim}-d) in {time.perf_counter() - t0:.1f}s")
            gow = run_dataset("gowalla", gvecs, "g", args, redis_url, 0)
    finally:
        if started is not None:
            localstack.stop_service(started[0])
            shutil.rmtree(started[1], ignore_errors=True)

    gowalla = gow and {k: gow[k] for k in SUMMARY} | {
        "gb_per_million_items": gow["memory"]["gb_per_million_items"],
        "open_loop": open_rows(gow),
    }
    if synth is None:
        assert gow is not None, "--gowalla-only with --no-gowalla measures nothing"
        emit_result(
            {"bench": "serving", "gowalla": gowalla, "machine": f"{os.cpu_count()} cores, no GPU", "details": {"gowalla": gow}},
            args.out,
        )
        return
    result = {
        "bench": "serving",
        "items": synth["items"],
        "dim": synth["dim"],
        "index": synth["index"],
        "gb_per_million_items": synth["memory"]["gb_per_million_items"],
        "raw_qps": round(synth["raw_qps"], 1),
        "grpc_qps": round(synth["grpc_qps"], 1),
        "ratio": round(synth["ratio"], 3),
        "p50_ms": round(synth["p50_ms"], 3),
        "p99_ms": round(synth["p99_ms"], 3),
        "connections_per_process": synth["connections_per_process"],
        # p99 at stated offered loads (bench/loadgen's open loop, 16 callers), beside the closed loop's above
        "open_loop": open_rows(synth),
        "recall_at_10": round(synth["recall_at_10"], 4),
        "upsert_visible_p99_ms": round(synth["upsert_visibility"]["p99_ms"], 2),
        # SimilarItems with ranking rules against none, same server and queries (details.synthetic.rules)
        "rules": {k: {m: round(v[m], 3) for m in ("qps", "qps_vs_none", "p50_ms", "p99_ms")} for k, v in synth["rules"].items()},
        "session_vs_user_p50": round(synth["session"]["p50_ratio"], 3),
        "session_vs_user_p99": round(synth["session"]["p99_ratio"], 3),
        "session_answers_differing": synth["session"]["answers_differing"],
        "client": synth["client"],
        "server_processes": synth["server_processes"],
        "python_client_qps": round(synth["python_client_qps"], 1),
        "echo_qps": round(synth["echo_qps"], 1),
        "grpc_vs_echo": round(synth["grpc_vs_echo"], 3),
        "floor_qps": synth["floor_qps"] and round(synth["floor_qps"], 1),
        "floor_ratio": synth["floor_ratio"] and round(synth["floor_ratio"], 3),
        "front": "native" if front_built() else "grpc",
        "grpc_front_qps": synth["grpc_front_qps"] and round(synth["grpc_front_qps"], 1),
        "grpc_front_ratio": synth["grpc_front_ratio"] and round(synth["grpc_front_ratio"], 3),
        "machine": f"{os.cpu_count()} cores, no GPU",
        "compare": compare
        and {k: compare[k] for k in ("dim", "index", "raw_qps", "grpc_qps", "ratio", "p50_ms", "p99_ms", "recall_at_10", "memory")}
        | {"open_loop": open_rows(compare)},
        "gowalla": gowalla,
        "explain": explained,
        "details": {"synthetic": synth, "gowalla": gow, "compare": compare},
    }
    emit_result(result, args.out)


if __name__ == "__main__":
    main()
