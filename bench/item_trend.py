"""Where a trending new item ranks for shoppers like its buyers, with the fold-in's popularity prior from its first
shoppers' count or from their rate (`ml.trend`), in process (no services).

    python -m bench.item_trend [--shoppers 3000] [--buyers 20] [--out FILE]

The shop is bench.drift's (planted interests, Zipf-like popularity inside each); the served model is trained on
it in process (`workers.training.train_and_save`, the served configuration). Then, per interest, an item new to
the version is bought by ``--buyers`` of its shoppers within ``--buyers`` seconds, and for 5 other shoppers of
the interest every item is ranked as `workers.gate.served_recall` ranks them (the recompute's item vectors, users
from their capped live edges, their own items left out): the long-term ranking only, without the server's
short-term slots. Reported: the new item's rank per variant, and how many shoppers of the next interest
("strangers") get it in their top 10. bench.drift measures the same on the served path, with its latency.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import typer

from bench._common import emit_result
from bench.drift import INTERESTS, history, make_shop
from graphdb.items import category_id
from graphdb.settings import GraphSettings
from graphdb.subgraph import EdgeRow, ItemRow
from ml.checkpoint import load_checkpoint, resolve
from ml.settings import ModelSettings, TrainSettings
from workers.live import LiveEncoder, training_graph
from workers.settings import WorkerSettings
from workers.training import train_and_save
from workers.user_side import capped_neighbours, latest_times, pair_strengths

WATCHERS = 5


def _cats(path: list[str]) -> tuple[str, ...]:
    return tuple(sorted(category_id(tuple(path[:n])) for n in range(1, len(path) + 1)))


def main(
    shoppers: int = typer.Option(3000),
    interests: int = typer.Option(20),
    items_per: int = typer.Option(50),
    events_per: int = typer.Option(30),
    buyers: int = typer.Option(20, help="a new item's buyers, one a second"),
    trend_horizon_days: float = typer.Option(30.0, help="the trend row's IG_MODEL_FOLD_TREND_HORIZON_DAYS"),
    seed: int = typer.Option(16),
    out: Path | None = typer.Option(None),
) -> None:
    now = time.time()
    shop = make_shop(interests, items_per, shoppers, seed)
    events = history(shop, events_per, 0.03, now, seed + 1)
    pairs: dict[tuple[str, str], list[float]] = {}
    for e in events:
        t = pairs.setdefault((e.user_id, e.item_id), [e.ts, e.ts])
        t[0], t[1] = min(t[0], e.ts), max(t[1], e.ts)
    edges = [EdgeRow(u, i, 1.0, last, first) for (u, i), (first, last) in sorted(pairs.items())]
    rows = [
        ItemRow(i, _cats(list(shop.info[i].categories[0].names)), shop.info[i].brand, shop.info[i].title, shop.info[i].description)
        for i in shop.items
    ]
    launches, new_rows, live = [], [], list(edges)
    for c in range(interests):
        like = [u for u in shop.home if shop.home[u] == c]
        strangers = [u for u in shop.home if shop.home[u] == (c + 1) % interests][-WATCHERS:]
        path, brands, noun = INTERESTS[c % len(INTERESTS)]
        item = f"sku-{c:02d}-new"
        new_rows.append(ItemRow(item, _cats(path), brands[0], f"{brands[0]} {noun} new", None))
        live += [EdgeRow(u, item, 1.0, now + b, now + b) for b, u in enumerate(like[:buyers])]
        launches.append((item, like[buyers : buyers + WATCHERS], strangers))
    ms, ts = ModelSettings(), TrainSettings()
    result: dict = {"bench": "item_trend", "shoppers": shoppers, "items": len(shop.items), "events": len(events), "buyers": buyers}
    with tempfile.TemporaryDirectory() as tmp:
        ws = WorkerSettings(model_dir=Path(tmp) / "models", text_cache_dir=Path(tmp) / "text")
        t0 = time.perf_counter()
        trained = train_and_save(training_graph(edges, rows), None, ms, ts, ws, source="graph", progress=False)
        result["train_s"] = round(time.perf_counter() - t0, 1)
        ck = load_checkpoint(resolve(ws.model_dir, trained["version"]))
        half_life = GraphSettings().half_life_days
        all_rows = rows + new_rows
        ids = [r.id for r in all_rows]
        col = {i: n for n, i in enumerate(ids)}
        seen: dict[str, set[str]] = {}
        for e in live:
            seen.setdefault(e.user, set()).add(e.item)
        for name, horizon in (("count", 0.0), ("trend", trend_horizon_days)):
            enc = LiveEncoder(ck, ms.user_cap, half_life, **{**ms.fold(), "fold_trend_horizon_days": horizon})
            table = torch.zeros(len(ids), enc.dim)
            table[: len(rows)] = enc.known_vectors([r.id for r in rows]).cpu()
            new_out, new_in = enc.new_items(new_rows, live)
            table[len(rows) :] = new_out.cpu()
            asked = sorted({u for _, w, s in launches for u in w + s})
            u = enc.users(
                capped_neighbours(live, enc.user_cap, enc.half_life_days),
                asked,
                dict(zip([r.id for r in new_rows], new_in)),
                latest_times(live),
                pair_strengths(live, enc.behaviour_weights),
            ).cpu()
            at = {user: n for n, user in enumerate(asked)}

            def rank(user: str, item: str, u: torch.Tensor = u, at: dict[str, int] = at, table: torch.Tensor = table) -> int:
                scores = (u[at[user]] @ table.T).numpy()
                scores[[col[i] for i in seen.get(user, ())]] = -np.inf
                return int((scores > scores[col[item]]).sum()) + 1

            ranks = [rank(w, item) for item, watchers, _ in launches for w in watchers]
            result[name] = {
                "ranks_median": float(np.median(ranks)),
                "ranks_min_max": [min(ranks), max(ranks)],
                "in_top10": sum(r <= 10 for r in ranks),
                "asked": len(ranks),
                "stranger_top10": sum(rank(s, item) <= 10 for item, _, strangers in launches for s in strangers),
                "new_item_degree_max": float(
                    enc._fold(new_rows, live, torch.zeros(len(new_rows), enc.dim), torch.ones(len(new_rows)))[1].max()
                ),
            }
            print(f"{name}: {result[name]}", flush=True)
    result["config"] = {
        "fold_users": ms.fold_users,
        "trend_horizon_days": trend_horizon_days,
        "min_shoppers": ms.fold_trend_min_shoppers,
    }
    emit_result(result, out)


if __name__ == "__main__":
    typer.run(main)
