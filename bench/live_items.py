"""Items learn from their shoppers without a retrain: frozen, fold-in and retrained.

    python -m bench.live_items [--dataset amazon-hin] [--new-share 0.1] [--k 20] [--out FILE]

A random ``--new-share`` of the catalogue is new to the active version: it is trained on every other item's
events. Every shopper with two or more items holds out their latest one; all the rest, the new items' events
included, is the live graph. Each variant ranks every item for those shoppers through the worker's own encoding
(`workers.gate.served_recall`: item vectors as the recompute writes them, users from their capped live edges,
live items masked):

- ``frozen``: new items from their metadata only (``IG_MODEL_FOLD_USERS=0``, the behaviour before the fold-in);
- ``fold_in``: new items from their first shoppers too (the default);
- ``fold_in_count`` / ``fold_in_trend``: the fold-in with the popularity prior from the first shoppers' count, or
  from their rate (`ml.trend`, ``--trend-horizon-days``), whatever the default is;
- ``retrained``: a version trained on the whole live graph, what the scheduled retrain would serve (the reference);
- ``popularity``: live interaction counts (the peer).

Recall@K is given over all held-out pairs and over those whose item is new to the active version.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import typer

from bench._common import emit_result
from graphdb.items import category_id
from graphdb.loaders import DATASETS
from graphdb.settings import DataSettings, GraphSettings
from graphdb.subgraph import EdgeRow, ItemRow
from ml.checkpoint import load_checkpoint, resolve
from ml.settings import ModelSettings, TrainSettings
from workers.gate import GateSplit, served_recall
from workers.live import LiveEncoder, training_graph
from workers.settings import WorkerSettings
from workers.training import train_and_save


def dataset_rows(name: str, root: Path) -> tuple[list[EdgeRow], list[ItemRow]]:
    """The dataset as the live graph holds it: one row per (user, item) with its first and last time, and the
    catalogue with each item's categories and their ancestors (`graphdb.subgraph.items` reads them so)."""
    ds = DATASETS[name]
    first: dict[tuple[str, str], float] = {}
    last: dict[tuple[str, str], float] = {}
    for e in ds.events(root):
        key, t = (e["user_id"], e["item_id"]), float(e["ts"])
        first[key] = min(t, first.get(key, t))
        last[key] = max(t, last.get(key, t))
    edges = [EdgeRow(u, i, 1.0, last[(u, i)], first[(u, i)]) for u, i in sorted(first)]
    items = [
        ItemRow(
            r.id,
            tuple(sorted({category_id(p[:n]) for p in r.categories for n in range(1, len(p) + 1)})),
            r.brand,
            r.title,
            r.description,
        )
        for r in ds.items(root)
    ]
    return edges, items


def item_split(edges: list[EdgeRow], share: float, seed: int) -> tuple[list[EdgeRow], GateSplit, set[str]]:
    """(the active version's edges, the live graph with each shopper's latest pair held out, the items new to the
    active version: a random ``share`` of the items, whose edges the active version never saw)."""
    rng = np.random.default_rng(seed)
    catalogue = sorted({e.item for e in edges})
    new_items = set(rng.choice(catalogue, size=int(len(catalogue) * share), replace=False).tolist())
    latest: dict[str, EdgeRow] = {}
    count: Counter[str] = Counter(e.user for e in edges)
    for e in edges:
        held = latest.get(e.user)
        if count[e.user] >= 2 and (held is None or (e.first, e.item) > (held.first, held.item)):
            latest[e.user] = e
    held_pairs = {(e.user, e.item) for e in latest.values()}
    live = [e for e in edges if (e.user, e.item) not in held_pairs]
    before = [e for e in live if e.item not in new_items]
    return before, GateSplit(live, {u: {e.item} for u, e in latest.items()}, 0.0), new_items


def popularity_recall(split: GateSplit, k: int) -> float:
    counts = Counter(e.item for e in split.train)
    ranked = [i for i, _ in sorted(counts.items(), key=lambda p: (-p[1], p[0]))]
    seen: dict[str, set[str]] = {}
    for e in split.train:
        seen.setdefault(e.user, set()).add(e.item)
    hits = []
    for user, held in split.held.items():
        top = [i for i in ranked if i not in seen.get(user, ())][:k]
        hits.append(len(held & set(top)) / len(held))
    return float(np.mean(hits)) if hits else 0.0


def main(
    dataset: str = typer.Option("amazon-hin", help="a dataset with real timestamps and a catalogue"),
    new_share: float = typer.Option(0.1, help="share of the catalogue new to the active version"),
    seed: int = typer.Option(0),
    k: int = typer.Option(20),
    fold_users: int = typer.Option(ModelSettings().fold_users, help="the fold-in's first shoppers (the default setting)"),
    trend_horizon_days: float = typer.Option(30.0, help="the fold_in_trend row's IG_MODEL_FOLD_TREND_HORIZON_DAYS"),
    out: Path | None = typer.Option(None),
) -> None:
    root = DataSettings().dataset_dir(dataset)
    edges, items = dataset_rows(dataset, root)
    before, split, new_items = item_split(edges, new_share, seed)
    new_split = GateSplit(split.train, {u: h for u, h in split.held.items() if h <= new_items}, 0.0)
    print(
        f"{dataset}: {len(edges):,} pairs, {len(before):,} seen by the active version; {len(split.held):,} shoppers "
        f"hold out their latest pair, {len(new_split.held):,} of them on one of the {len(new_items):,} new items",
        flush=True,
    )
    ms, ts = ModelSettings(), TrainSettings()
    result: dict = {"bench": "live_items", "dataset": dataset, "new_share": new_share, "k": k, "held_users": len(split.held)}
    result["held_on_new_items"] = len(new_split.held)
    with tempfile.TemporaryDirectory() as tmp:
        ws = WorkerSettings(model_dir=Path(tmp) / "models", text_cache_dir=Path(tmp) / "text")

        def encoder(train: list[EdgeRow], **fold: float) -> tuple[LiveEncoder, float]:
            t0 = time.perf_counter()
            trained = train_and_save(training_graph(train, items), None, ms, ts, ws, source="graph", progress=False)
            ck = load_checkpoint(resolve(ws.model_dir, trained["version"]))
            return LiveEncoder(ck, ms.user_cap, GraphSettings().half_life_days, **fold), time.perf_counter() - t0

        active, result["train_s"] = encoder(before)
        variants = {
            "frozen": LiveEncoder(active.ck, ms.user_cap, active.half_life_days, fold_users=0),
            "fold_in": LiveEncoder(active.ck, ms.user_cap, active.half_life_days, **{**ms.fold(), "fold_users": fold_users}),
        }
        # the popularity prior from the first shoppers' rate (ml.trend), on and off whatever the default is
        for name, horizon in (("fold_in_count", 0.0), ("fold_in_trend", trend_horizon_days)):
            fold = {**ms.fold(), "fold_users": fold_users, "fold_trend_horizon_days": horizon}
            variants[name] = LiveEncoder(active.ck, ms.user_cap, active.half_life_days, **fold)
        variants["retrained"], result["retrain_s"] = encoder(split.train)
        for name, enc in variants.items():
            t0 = time.perf_counter()
            result[f"{name}_recall@{k}"] = round(served_recall(enc, split, items, k), 4)
            result[f"{name}_new_recall@{k}"] = round(served_recall(enc, new_split, items, k), 4)
            took = time.perf_counter() - t0
            print(f"{name}: {result[f'{name}_recall@{k}']} ({result[f'{name}_new_recall@{k}']} on new items), {took:.1f} s")
    result[f"popularity_recall@{k}"] = round(popularity_recall(split, k), 4)
    result[f"popularity_new_recall@{k}"] = round(popularity_recall(new_split, k), 4)
    result["config"] = {
        "dim": ms.dim,
        "fold_users": fold_users,
        "fold_context": ms.fold_context,
        "fold_prior": ms.fold_prior,
        "fold_trend_horizon_days": ms.fold_trend_horizon_days,
        "trend_row": {
            "horizon_days": trend_horizon_days,
            "prior_days": ms.fold_trend_prior_days,
            "min_shoppers": ms.fold_trend_min_shoppers,
        },
    }
    emit_result(result, out)


if __name__ == "__main__":
    typer.run(main)
