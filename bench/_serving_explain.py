"""bench.serving's explanations section: ``explain`` on against off, on the same server in the same run.

The whole pipeline (``bench._stack``): a dataset loaded into a real Neo4j, the served model trained by the worker
and rolled out, ``python -m server`` loading it from the graph. Then, for ``RecommendForUser`` (a sample of the
dataset's shoppers) and ``SimilarItems`` (a sample of its items), rounds that alternate explain off and on at
the same client concurrency (a Python ``grpc.aio`` client, one connection), so drift on a shared machine hits
both alike. Reported: p50/p99 latency and calls/s of each, the p99 ratio on/off, and with explain on the share of
returned items with at least one reason, reasons per item and the share of items with each kind.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np

from bench._stack import pipeline
from graphdb.loaders import DATASETS
from graphdb.settings import DataSettings
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc


def log(msg: str) -> None:
    print(f"[serving/explain] {msg}", flush=True)


async def _run(
    port: int, make: Callable[[int, bool], Any], call: str, n: int, concurrency: int, seconds: float, rounds: int
) -> dict[str, Any]:
    lat: dict[bool, list[float]] = {False: [], True: []}
    busy: dict[bool, float] = {False: 0.0, True: 0.0}
    items = with_reason = reasons = errors = 0
    kinds: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = getattr(pb_grpc.InterestServiceStub(channel), call)
        for _ in range(rounds):
            for explain in (False, True):
                stop = time.perf_counter() + seconds
                counter = iter(range(10**9))

                async def worker(explain: bool = explain, stop: float = stop, counter: Any = counter) -> None:
                    nonlocal items, with_reason, reasons, errors
                    while time.perf_counter() < stop:
                        request = make(next(counter) % n, explain)
                        t0 = time.perf_counter()
                        try:
                            resp = await method(request, timeout=10)
                        except grpc.aio.AioRpcError:
                            errors += 1
                            continue
                        lat[explain].append(time.perf_counter() - t0)
                        if explain:
                            for item in resp.items:
                                items += 1
                                reasons += len(item.reasons)
                                with_reason += bool(item.reasons)
                                kinds.update({pb.ReasonKind.Name(k) for k in (r.kind for r in item.reasons)})

                t0 = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                busy[explain] += time.perf_counter() - t0

    def stats(explain: bool) -> dict[str, float]:
        ms = np.asarray(lat[explain]) * 1000
        return {
            "calls": len(ms),
            "calls_per_s": round(len(ms) / busy[explain], 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
        }

    off, on = stats(False), stats(True)
    return {
        "off": off,
        "on": on,
        "p99_on_over_off": round(on["p99_ms"] / off["p99_ms"], 3),
        "p50_on_over_off": round(on["p50_ms"] / off["p50_ms"], 3),
        "items_returned": items,
        "share_with_a_reason": round(with_reason / max(items, 1), 4),
        "reasons_per_item": round(reasons / max(items, 1), 3),
        "share_with_kind": {k: round(v / max(items, 1), 4) for k, v in sorted(kinds.items())},
        "errors": errors,
    }


def measure(dataset: str, *, users: int, k: int, concurrency: int, seconds: float, rounds: int, seed: int = 0) -> dict[str, Any]:
    """Starts the pipeline on ``dataset``, measures, stops everything."""
    root = DataSettings().dataset_dir(dataset)
    rng = random.Random(seed)
    shoppers = sorted({e["user_id"] for e in DATASETS[dataset].events(root)})
    shoppers = rng.sample(shoppers, min(users, len(shoppers)))
    with tempfile.TemporaryDirectory(prefix="ig-bench-explain-") as tmp, pipeline(Path(tmp), dataset=dataset, server=True) as p:
        assert p.server_port is not None
        ids = sorted(r["id"] for r in p.driver.execute_query("MATCH (i:Item) WHERE i.embedding IS NOT NULL RETURN i.id AS id").records)
        asked = rng.sample(ids, min(users, len(ids)))
        log(f"{dataset}: model {p.version}; {len(shoppers)} shoppers and {len(asked)} items asked, k {k}, concurrency {concurrency}")
        recommend = asyncio.run(
            _run(
                p.server_port,
                lambda i, e: pb.RecommendForUserRequest(user_id=shoppers[i], k=k, explain=e),
                "RecommendForUser",
                len(shoppers),
                concurrency,
                seconds,
                rounds,
            )
        )
        similar = asyncio.run(
            _run(
                p.server_port,
                lambda i, e: pb.SimilarItemsRequest(item_id=asked[i], k=k, explain=e),
                "SimilarItems",
                len(asked),
                concurrency,
                seconds,
                rounds,
            )
        )
    for name, r in (("RecommendForUser", recommend), ("SimilarItems", similar)):
        log(
            f"{name}: p99 {r['off']['p99_ms']:.2f} ms off, {r['on']['p99_ms']:.2f} ms on ({r['p99_on_over_off']:.2f}x); "
            f"{r['share_with_a_reason']:.1%} of {r['items_returned']} items with a reason, {r['reasons_per_item']:.2f} per item; "
            f"{r['errors']} errors"
        )
    return {
        "dataset": dataset,
        "shoppers": len(shoppers),
        "items_asked": len(asked),
        "k": k,
        "concurrency": concurrency,
        "seconds_per_round_and_mode": seconds,
        "rounds": rounds,
        "recommend_for_user": recommend,
        "similar_items": similar,
    }
