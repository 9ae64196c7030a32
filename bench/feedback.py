"""Negative feedback benchmark: what hiding an item does to a shopper's answer, and what the re-rank costs.

``python -m bench.feedback [--shoppers 500] [--dim 1024] [--out FILE]`` fits the served model on gowalla (its
spectral fit at the served settings, as bench.serving does), serves its item vectors from the server's engine
(``server.engine.Engine``, default settings: the IVF index, the feedback rule of ``server.feedback``) over a real
Neo4j started on a free loopback port, and for each of ``--shoppers`` gowalla users (their served vectors):

1. asks RecommendForUser for the top 20 (``before``; include_seen, so only the hide differs);
2. hides the top item through the engine's ingestion (a NOT_INTERESTED event, stored in Neo4j), and takes the
   hidden item's top-10 neighbours from SimilarItems;
3. asks again at once: ``after`` (the served rule), and the same call on a second engine serving the same index
   with ``IG_SERVER_FEEDBACK_STRENGTH=0`` (``exclusion``: the hidden item removed, nothing pushed down).

It reports how many of the hidden item's top-10 neighbours that were in the shopper's top 20 leave it, with the
rule and with exclusion alone (no change to the neighbours), and the latency of each call in the same run:
``before`` (the shopper hid nothing: one Neo4j read, one search), ``after`` (the same read, a search of
k + IG_SERVER_FEEDBACK_POOL and the re-rank) and ``exclusion`` (the read and a search of k): after - exclusion is
the re-rank's cost. Each timed call is repeated ``--repeats`` times per shopper (the median is kept).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import emit_result
from graphdb import localstack
from graphdb.dataset_paths import find_dataset
from graphdb.driver import connect
from graphdb.pseudonym import pseudonymise
from graphdb.schema import migrate
from graphdb.settings import EMBEDDING_DIM, GraphSettings, LocalStackSettings, Neo4jSettings
from server.engine import Engine, ItemFilter
from server.settings import ServerSettings

K, NEIGHBOURS = 20, 10
VERSION = "bench-feedback"


def log(msg: str) -> None:
    print(f"[feedback] {msg}", flush=True)


def gowalla_vectors(data_dir: Path | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """gowalla's (user, item) vectors as the served model embeds them (as bench.serving.gowalla_items)."""
    from ml.dataset_files import load_gowalla
    from ml.embed import served_vectors
    from ml.settings import ModelSettings, TrainSettings
    from ml.train_served import fit_served

    split = load_gowalla(find_dataset("gowalla", data_dir))
    model = fit_served(split.train, ModelSettings(dim=dim, select_filter=False), TrainSettings(), progress=False).model
    users, items = served_vectors(model, split.train)
    return np.ascontiguousarray(users.numpy()), np.ascontiguousarray(items.numpy())


def timed(call, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0, out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(driver, graph: GraphSettings, users: np.ndarray, items: np.ndarray, shoppers: int, repeats: int, seed: int) -> dict:
    served = ServerSettings(snapshot_dir=None, redis_url=None)
    engines = {
        "rule": Engine(served, graph, driver),
        "exclusion": Engine(served.model_copy(update={"feedback_strength": 0.0}), graph, driver),
    }
    ids = [f"g{j}" for j in range(len(items))]
    t0 = time.perf_counter()
    rule, plain = engines["rule"], engines["exclusion"]
    index = rule.load_vectors(ids, items, VERSION)
    log(f"index of {len(ids)} items built in {time.perf_counter() - t0:.1f}s")
    rule.install(index)
    plain.labels, plain.facets = rule.labels, rule.facets  # one index, served by both: only the rule differs
    plain.install(index)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(users), size=min(shoppers, len(users)), replace=False)
    key = graph.pseudonym_key.get_secret_value()
    flt = ItemFilter()
    rows = []
    now = time.time()
    for n, u in enumerate(picked.tolist()):
        shopper = f"bench-shopper-{u}"
        for engine in engines.values():
            assert engine.serving is not None
            engine.serving.users.put(pseudonymise(key, shopper), users[u], now)
        before_ms, before = timed(lambda: rule.recommend_for_user(shopper, K, flt, include_seen=True), repeats)
        top = [i for i, _ in before.items]  # type: ignore[attr-defined]
        hidden = top[0]
        neighbours = {i for i, _ in rule.similar_items(hidden, NEIGHBOURS, flt).items}
        event = {"event_id": f"hide-{u}", "user_id": shopper, "type": "not_interested", "item_id": hidden, "ts": now}
        assert rule.ingest([event]).accepted == 1
        after_ms, after = timed(lambda: rule.recommend_for_user(shopper, K, flt, include_seen=True), repeats)
        excl_ms, excl = timed(lambda: plain.recommend_for_user(shopper, K, flt, include_seen=True), repeats)
        after_ids = [i for i, _ in after.items]  # type: ignore[attr-defined]
        excl_ids = [i for i, _ in excl.items]  # type: ignore[attr-defined]
        assert hidden not in after_ids and hidden not in excl_ids
        present = neighbours & set(top)
        rows.append(
            {
                "present": len(present),
                "left_rule": len(present - set(after_ids)),
                "left_exclusion": len(present - set(excl_ids)),
                "kept_overlap": len(set(after_ids) & set(excl_ids)) / K,
                "before_ms": before_ms,
                "after_ms": after_ms,
                "exclusion_ms": excl_ms,
            }
        )
        if (n + 1) % 100 == 0:
            log(f"{n + 1} shoppers")
    present = sum(r["present"] for r in rows)
    lat = {name: [r[f"{name}_ms"] for r in rows] for name in ("before", "after", "exclusion")}
    return {
        "shoppers": len(rows),
        "neighbours_in_top20_mean": present / len(rows),
        "left_with_rule_mean": sum(r["left_rule"] for r in rows) / len(rows),
        "left_with_exclusion_only_mean": sum(r["left_exclusion"] for r in rows) / len(rows),
        "share_left_with_rule": sum(r["left_rule"] for r in rows) / max(present, 1),
        "share_left_with_exclusion_only": sum(r["left_exclusion"] for r in rows) / max(present, 1),
        "answer_overlap_with_exclusion_only": sum(r["kept_overlap"] for r in rows) / len(rows),
        "latency_ms": {name: {"p50": pct(v, 50), "p99": pct(v, 99), "mean": float(np.mean(v))} for name, v in lat.items()},
        "rerank_cost_ms_p50": pct(lat["after"], 50) - pct(lat["exclusion"], 50),
        "after_vs_exclusion_p50": pct(lat["after"], 50) / pct(lat["exclusion"], 50),
        "settings": {
            k: getattr(ServerSettings(snapshot_dir=None), k)
            for k in ("feedback_pool", "feedback_max_hidden", "feedback_strength", "feedback_threshold")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shoppers", type=int, default=500)
    parser.add_argument("--dim", type=int, default=EMBEDDING_DIM, help="the served width (IG_EMBEDDING_DIM)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per shopper and kind (median kept)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    t0 = time.perf_counter()
    users, items = gowalla_vectors(args.data_dir, args.dim)
    log(f"gowalla: {len(users)} users, {len(items)} items ({args.dim}-d) in {time.perf_counter() - t0:.1f}s")
    var = Path(tempfile.mkdtemp(prefix="ig-bench-feedback-"))
    stack = LocalStackSettings(var_dir=var, neo4j_port=localstack.free_port(), redis_port=localstack.free_port())
    service = localstack.start_neo4j(stack)
    graph = GraphSettings(pseudonym_key="bench-feedback-key", embedding_dim=args.dim)
    driver = connect(Neo4jSettings(uri=f"bolt://127.0.0.1:{stack.neo4j_port}"))
    try:
        migrate(driver, graph)
        figures = run(driver, graph, users, items, args.shoppers, args.repeats, args.seed)
    finally:
        driver.close()
        localstack.stop_service(service)
        shutil.rmtree(var, ignore_errors=True)
    emit_result(
        {
            "bench": "feedback",
            "dataset": "gowalla",
            "items": len(items),
            "dim": args.dim,
            "k": K,
            "neighbours": NEIGHBOURS,
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items() if k != "latency_ms"},
            "latency_ms": {name: {q: round(x, 3) for q, x in v.items()} for name, v in figures["latency_ms"].items()},
            "machine": f"{os.cpu_count()} cores, no GPU",
        },
        args.out,
    )


if __name__ == "__main__":
    main()
