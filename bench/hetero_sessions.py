"""RecommendForSession under a served 2-layer heterogeneous version, against RecommendForUser in the same run.

The whole pipeline (`bench._stack`): the dataset loaded into Neo4j, the worker trains ``--model`` (hetero-sage by
default) on the live graph and rolls it out (vectors to Neo4j, the layer store and the version's card to Redis), and
the gRPC server (``python -m server``) serves it. For ``--sessions`` shoppers of the dataset with at most
``--max-events`` events, the shopper's own events are sent as a session (RecommendForSession: the server reads the
card and the items' stored numbers from Redis and embeds the session in NumPy, `workers.hetero_side`) and the
shopper is asked for by id (RecommendForUser: the stored vector, read from Neo4j on a shopper's first call with
their recent rows), one call at a time on one connection, alternating, then by id again (both now cached).
Reported: each call's latency p50/p99 on the client, the share of sessions whose top ``k`` (ids, and scores
within 1e-5) equals their shopper's, and the mean share of the session's top ``k`` in the shopper's. Under SAGE's
weighted mean a session that repeats a stored shopper's events is that shopper (`docs/api.md`); under GIN's sum it
is one more shopper of the items it shares, as a new shopper with those events would be.

    python -m bench.hetero_sessions [--dataset amazon-hin] [--model hetero-sage] [--sessions 300] [--out FILE]
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import grpc
import numpy as np
import typer

from bench._common import emit_result
from bench._stack import log, pipeline
from graphdb.loaders import DATASETS
from graphdb.settings import DataSettings, GraphSettings
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server.service import SESSION_EVENT_TYPES

TYPES = {name: number for number, name in SESSION_EVENT_TYPES.items()}


def _shoppers(dataset: str, n: int, max_events: int, seed: int) -> dict[str, list[dict]]:
    """``n`` shoppers of the dataset drawn at random among those with 2..``max_events`` item events: their events."""
    by_user: dict[str, list[dict]] = defaultdict(list)
    for e in DATASETS[dataset].events(DataSettings().dataset_dir(dataset)):
        if e["type"] in TYPES:
            by_user[e["user_id"]].append(e)
    fit = sorted(u for u, es in by_user.items() if 2 <= len(es) <= max_events)
    return {u: by_user[u] for u in random.Random(seed).sample(fit, min(n, len(fit)))}


def _session(events: list[dict]) -> list[pb.SessionEvent]:
    return [pb.SessionEvent(item_id=e["item_id"], type=TYPES[e["type"]], ts=e["ts"], rating=int(e.get("rating") or 0)) for e in events]


def _percentiles(xs: list[float]) -> dict[str, float]:
    a = np.array(xs) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3), "n": len(xs)}


def main(
    dataset: str = typer.Option("amazon-hin"),
    model: str = typer.Option("hetero-sage", help="hetero-sage or hetero-gin"),
    dim: int = typer.Option(64, help="embedding width (IG_EMBEDDING_DIM of the run)"),
    sessions: int = typer.Option(300, help="shoppers asked, by session and by id"),
    max_events: int = typer.Option(50, help="the most events of a shopper drawn"),
    k: int = typer.Option(10),
    seed: int = typer.Option(0),
    out: Path = typer.Option(None, help="also write the RESULT JSON here"),
    var: Path = typer.Option(None, help="keep data and logs here (default: a temporary directory)"),
) -> None:
    extra = {"IG_MODEL_LAYERS": "2", "IG_TRAIN_MAX_EPOCHS": "1", "IG_TRAIN_VAL_FRACTION": "0"}
    gs = GraphSettings(embedding_dim=dim)
    with (
        contextlib.nullcontext(str(var)) if var else tempfile.TemporaryDirectory(prefix="bench-hetero-sessions-") as tmp,
        pipeline(Path(tmp), dataset=dataset, model=model, graph=gs, worker_extra=extra, server=True) as p,
    ):
        shoppers = _shoppers(dataset, sessions, max_events, seed)
        log(f"{len(shoppers)} shoppers, {sum(len(es) for es in shoppers.values())} events; asking the server")
        channel = grpc.insecure_channel(f"127.0.0.1:{p.server_port}")
        stub = pb_grpc.InterestServiceStub(channel)
        timed: dict[str, list[float]] = {"session": [], "user": [], "user_again": []}
        same = cold = 0
        overlap: list[float] = []
        for n, (user, events) in enumerate(shoppers.items()):
            req_s = pb.RecommendForSessionRequest(events=_session(events), k=k, include_seen=True)
            req_u = pb.RecommendForUserRequest(user_id=user, k=k, include_seen=True)
            calls = [("session", stub.RecommendForSession, req_s), ("user", stub.RecommendForUser, req_u)]
            answers = {}
            # alternating: neither always goes first; then the shopper again, its vector and recent rows now cached
            for name, call, req in [*(calls if n % 2 else calls[::-1]), ("user_again", stub.RecommendForUser, req_u)]:
                t = time.perf_counter()
                answers[name] = call(req, timeout=30)
                timed[name].append(time.perf_counter() - t)
            got, want = answers["session"], answers["user"]
            cold += got.cold_start
            overlap.append(len({i.item_id for i in got.items} & {i.item_id for i in want.items}) / k)
            same += (
                not got.cold_start
                and [i.item_id for i in got.items] == [i.item_id for i in want.items]
                and np.allclose([i.score for i in got.items], [i.score for i in want.items], atol=1e-5, rtol=0)
            )
        channel.close()
        result = {
            "bench": "hetero_sessions",
            "dataset": dataset,
            "model": model,
            "version": p.version,
            "dim": dim,
            "sessions": len(shoppers),
            "events_per_session_mean": round(float(np.mean([len(es) for es in shoppers.values()])), 1),
            "k": k,
            "session": _percentiles(timed["session"][5:]),  # the first calls warm the server's caches
            "user": _percentiles(timed["user"][5:]),
            "user_again": _percentiles(timed["user_again"][5:]),
            "same_answer_share": round(same / max(len(shoppers), 1), 4),
            "overlap_at_k_mean": round(float(np.mean(overlap)), 4),  # the session's top k among the shopper's
            "cold_start_sessions": cold,
        }
        for peer in ("user", "user_again"):
            result[f"session_over_{peer}_p50"] = round(result["session"]["p50_ms"] / result[peer]["p50_ms"], 2)
        log(f"{result}")
    emit_result(result, out)


if __name__ == "__main__":
    typer.run(main)
