"""bench.serving's explanations section: ``explain`` on against off, on the same server in the same run.

The whole pipeline (``bench._stack``): a dataset loaded into a real Neo4j, the served model trained by the worker
and rolled out, ``python -m server`` loading it from the graph. Then, for ``RecommendForUser`` (a sample of the
dataset's shoppers) and ``SimilarItems`` (a sample of its items), rounds that alternate explain off and on at
the same client concurrency (a Python ``grpc.aio`` client, one connection), so drift on a shared machine hits
both alike. Reported: p50/p99 latency and calls/s of each, the p99 ratio on/off, and with explain on the share of
returned items with at least one reason, reasons per item and the share of items with each kind.

``RecommendForSession`` is measured the same way, each asked shopper's latest purchases sent as a session.

Negative feedback's serving cost on the same server (``_feedback``): RecommendForUser of the same shoppers before
and after half of them hide an item and return a purchase through ``IngestEvents``, the other half as the peer.
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

SESSION_EVENTS = 20  # at most this many of a shopper's latest purchases make their session


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


async def _feedback(
    port: int, shoppers: list[str], bought: dict[str, str], k: int, concurrency: int, seconds: float, rounds: int
) -> dict[str, Any]:
    """RecommendForUser of the same shoppers without, then with negative feedback, through the stubs: half of them
    (the hiders) hide the top item of their answer (``NOT_INTERESTED``) and return their latest purchase
    (``RETURN``) with ``IngestEvents``; the other half, given none, is measured alongside as the peer, so drift
    of a shared machine between the phases shows in its ratio. Each phase alternates the two groups in rounds."""
    half = len(shoppers) // 2
    groups = {"hiders": shoppers[:half], "control": shoppers[half:]}
    lat: dict[tuple[str, str], list[float]] = {}
    busy: dict[tuple[str, str], float] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InterestServiceStub(channel)

        async def load(phase: str, group: str) -> None:
            users = groups[group]
            out = lat.setdefault((phase, group), [])
            stop = time.perf_counter() + seconds
            counter = iter(range(10**9))

            async def worker() -> None:
                while time.perf_counter() < stop:
                    request = pb.RecommendForUserRequest(user_id=users[next(counter) % len(users)], k=k)
                    t0 = time.perf_counter()
                    await stub.RecommendForUser(request, timeout=10)
                    out.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            busy[(phase, group)] = busy.get((phase, group), 0.0) + time.perf_counter() - t0

        for _ in range(rounds):
            for group in groups:
                await load("without", group)
        hidden = {}
        for u in groups["hiders"]:
            resp = await stub.RecommendForUser(pb.RecommendForUserRequest(user_id=u, k=k), timeout=10)
            hidden[u] = resp.items[0].item_id
        now = time.time()
        events = [
            pb.Event(event_id=f"bench-hide-{u}", user_id=u, type=pb.EVENT_TYPE_NOT_INTERESTED, item_id=i, ts=now)
            for u, i in hidden.items()
        ]
        events += [
            pb.Event(event_id=f"bench-return-{u}", user_id=u, type=pb.EVENT_TYPE_RETURN, item_id=bought[u], ts=now)
            for u in groups["hiders"]
            if u in bought
        ]
        ack = await stub.IngestEvents(iter([pb.IngestEventsRequest(events=events)]), timeout=60)
        assert ack.accepted == len(events), ack
        # every hidden item has left its shopper's answer before the second phase (observed, not waited for)
        deadline = time.monotonic() + 60
        pending = dict(hidden)
        while pending:
            for u, item_id in list(pending.items()):
                resp = await stub.RecommendForUser(pb.RecommendForUserRequest(user_id=u, k=k), timeout=10)
                if item_id not in {i.item_id for i in resp.items}:
                    del pending[u]
            assert time.monotonic() < deadline, f"{len(pending)} hidden items still answered after 60 s"
        for _ in range(rounds):
            for group in groups:
                await load("with", group)

    def stats(key: tuple[str, str]) -> dict[str, float]:
        ms = np.asarray(lat[key]) * 1000
        return {
            "calls": len(ms),
            "calls_per_s": round(len(ms) / busy[key], 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
        }

    out: dict[str, Any] = {"hiders": len(groups["hiders"]), "returns": len(events) - len(hidden), "hidden": len(hidden)}
    for group in groups:
        without, with_ = stats(("without", group)), stats(("with", group))
        out[group] = {
            "without": without,
            "with": with_,
            "p50_with_over_without": round(with_["p50_ms"] / without["p50_ms"], 3),
            "p99_with_over_without": round(with_["p99_ms"] / without["p99_ms"], 3),
        }
    return out


def measure(dataset: str, *, users: int, k: int, concurrency: int, seconds: float, rounds: int, seed: int = 0) -> dict[str, Any]:
    """Starts the pipeline on ``dataset``, measures, stops everything."""
    root = DataSettings().dataset_dir(dataset)
    rng = random.Random(seed)
    events = list(DATASETS[dataset].events(root))
    shoppers = sorted({e["user_id"] for e in events})
    history: dict[str, list[dict[str, Any]]] = {}
    for e in sorted(events, key=lambda e: e["ts"]):
        if e["type"] == "purchase":
            history.setdefault(e["user_id"], []).append(e)
    bought = {u: evs[-1]["item_id"] for u, evs in history.items()}  # the latest
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
        # each asked shopper's latest purchases as an anonymous session (what RecommendForSession explains by)
        sessions = [
            [
                pb.SessionEvent(item_id=e["item_id"], type=pb.EVENT_TYPE_PURCHASE, ts=e["ts"])
                for e in history.get(u, [])[-SESSION_EVENTS:]
            ]
            for u in shoppers
        ]
        session = asyncio.run(
            _run(
                p.server_port,
                lambda i, e: pb.RecommendForSessionRequest(events=sessions[i], k=k, explain=e),
                "RecommendForSession",
                len(sessions),
                concurrency,
                seconds,
                rounds,
            )
        )
        feedback = asyncio.run(_feedback(p.server_port, shoppers, bought, k, concurrency, seconds, rounds))
    for group in ("hiders", "control"):
        f = feedback[group]
        log(
            f"negative feedback, {group}: RecommendForUser p50 {f['without']['p50_ms']:.2f} -> {f['with']['p50_ms']:.2f} ms "
            f"({f['p50_with_over_without']:.2f}x), p99 {f['without']['p99_ms']:.2f} -> {f['with']['p99_ms']:.2f} ms "
            f"({f['p99_with_over_without']:.2f}x)"
        )
    for name, r in (("RecommendForUser", recommend), ("SimilarItems", similar), ("RecommendForSession", session)):
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
        "recommend_for_session": session,
        "session_events": SESSION_EVENTS,
        "feedback": feedback,
    }
