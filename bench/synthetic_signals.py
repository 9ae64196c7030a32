"""Typed behaviour weights and searches in the user vector on a synthetic shop with planted interests (issue 16
item 2), in process (no services).

    python -m bench.synthetic_signals [--shoppers 3000] [--noise 1.0] [--searches 3] [--out FILE]

No dataset here carries behaviour types (view / click / cart / purchase), so the typed weights are measured on a
synthetic shop, and only there: bench.drift's catalogue (planted interests of items sharing a category path,
brands and titles, Zipf-like popularity inside each). Each shopper engages with items of their home interest in a
funnel (a view; some go on to a click, a cart, a purchase: the events of every step reached), and also window-shops:
``--noise`` view-only events per engagement on items of a second interest they never buy (70 %) or on any item
(30 %). Each shopper's last purchase of an item they had not met before is held out with everything after it;
the rest is the live graph, aggregated as ingestion stores it (one edge per behaviour type, a decayed count).

Every variant trains the served model on that graph in process (`workers.training.train_and_save`, the served
configuration from the environment with one setting changed) and ranks every item for the held-out shoppers as the
worker's recompute embeds them (`workers.live.LiveEncoder`: capped live edges, `pair_strengths` with the version's
type weights), their own items left out. Reported per variant: hit rate of the held-out purchase in the top 10 and
20 (Recall@K with one held-out item), and its median rank; popularity (train counts) is the peer.

Searches (``--searches`` per shopper, before the held-out purchase): each names the shopper's home interest in the
catalogue's own words (its product noun, a brand and the noun, or its leaf category): 70 % their home interest,
30 % the one they window-shop.
Per trained variant, the same users are embedded again with each ``IG_MODEL_SEARCH_WEIGHT`` of ``--search-weights``
(their newest ``IG_MODEL_SEARCH_CAP`` searches added through the text model, `LiveEncoder.users`); weight 0 is off.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from bench._common import emit_result
from bench.drift import DAY_S, INTERESTS, make_shop
from bench.item_trend import _cats
from graphdb.ingest import LN2, decayed_weight
from graphdb.schema import REL_FOR_EVENT
from graphdb.searches import SearchRow
from graphdb.settings import GraphSettings
from graphdb.subgraph import EdgeRow, ItemRow
from ml.checkpoint import load_checkpoint, resolve
from ml.runtime import set_threads
from ml.settings import ModelSettings, TrainSettings
from ml.text import TextEncoder
from workers.live import LiveEncoder, training_graph
from workers.settings import WorkerSettings
from workers.training import train_and_save
from workers.user_side import capped_neighbours, latest_searches, latest_times, pair_strengths

# How far a home-interest engagement goes: a view only, or on to a click, a cart, a purchase.
DEPTH = (0.45, 0.3, 0.1, 0.15)
STEPS = ("view", "click", "add_to_cart", "purchase")
TYPED = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
VARIANTS: dict[str, dict] = {
    "equal": {"behaviour_power": 0.0},  # every pair weighs 1 (the default before typed weights)
    "counts": {"behaviour_power": 1.0, "behaviour_weights": {}},  # summed decayed counts, every type alike
    "typed": {"behaviour_power": 1.0, "behaviour_weights": TYPED},
    "typed-sqrt": {"behaviour_power": 0.5, "behaviour_weights": TYPED},
}


@dataclass(frozen=True)
class Ev:
    user: str
    item: str
    kind: str  # event type
    ts: float


def shop_events(shoppers: int, interests: int, items_per: int, engagements: int, noise: float, now: float, seed: int):
    shop = make_shop(interests, items_per, shoppers, seed)
    rng = np.random.default_rng(seed + 1)
    events: list[Ev] = []
    browsing: dict[str, int] = {}
    for user, home in shop.home.items():
        browse = browsing[user] = int((home + 1 + rng.integers(interests - 1)) % interests)  # a second interest, never bought
        n = int(rng.integers(engagements // 2, engagements + engagements // 2 + 1))
        for t in rng.uniform(now - 60 * DAY_S, now - DAY_S, size=n):
            item = shop.pick(home, rng)[0]
            depth = int(rng.choice(len(DEPTH), p=DEPTH))
            events += [Ev(user, item, STEPS[s], float(t) + 30 * s) for s in range(depth + 1)]
        for t in rng.uniform(now - 60 * DAY_S, now - DAY_S, size=int(round(noise * n))):
            item = shop.pick(browse, rng)[0] if rng.random() < 0.7 else shop.items[int(rng.integers(len(shop.items)))]
            events.append(Ev(user, item, "view", float(t)))
    return shop, events, browsing


def search_rows(shop, browsing: dict[str, int], held_before: dict[str, float], per: int, now: float, seed: int) -> list[SearchRow]:
    """``per`` searches of each shopper, each before their held-out purchase, naming their home interest (70 %) or
    the interest they window-shop (30 %)."""
    rng = np.random.default_rng(seed + 2)
    out = []
    for user, home in shop.home.items():
        end = held_before.get(user, now - DAY_S)
        for k, t in enumerate(np.sort(rng.uniform(now - 60 * DAY_S, end, size=per))):
            path, brands, noun = INTERESTS[(home if rng.random() < 0.7 else browsing[user]) % len(INTERESTS)]
            words = [noun, f"{brands[0]} {noun}", f"{brands[1]} {noun}", path[-1].lower()]
            text = words[int(rng.integers(len(words)))]
            out.append(SearchRow(user, f"q-{user}-{k}", text, float(t)))
    return out


def split_last_purchase(events: list[Ev]) -> tuple[list[Ev], dict[str, str], dict[str, float]]:
    """(the live graph's events, shopper -> held-out item): a shopper's last purchase of an item they had not met
    before is held out with everything from its engagement on (the steps before it are 30 s apart)."""
    by_user: dict[str, list[Ev]] = {}
    for e in events:
        by_user.setdefault(e.user, []).append(e)
    train: list[Ev] = []
    held: dict[str, str] = {}
    cut: dict[str, float] = {}
    for user, evs in by_user.items():
        evs.sort(key=lambda e: (e.ts, STEPS.index(e.kind)))
        last = next((e for e in reversed(evs) if e.kind == "purchase"), None)
        if last is not None:
            start = last.ts - 30 * STEPS.index("purchase")
            before = [e for e in evs if e.ts < start]
            if last.item not in {e.item for e in before}:
                held[user], cut[user] = last.item, start
                train += before
                continue
        train += evs
    return train, held, cut


def edge_rows(events: list[Ev], half_life_s: float) -> list[EdgeRow]:
    """One row per (shopper, item, behaviour type) as ingestion aggregates them (`graphdb.ingest`)."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for e in events:
        groups.setdefault((e.user, e.item, REL_FOR_EVENT[e.kind]), []).append(e.ts)
    k = LN2 / half_life_s
    return [
        EdgeRow(u, i, 1.0 if len(ts) == 1 else decayed_weight(ts, max(ts), k), max(ts), min(ts), rel)
        for (u, i, rel), ts in sorted(groups.items())
    ]


def hits(ranks: list[int]) -> dict:
    r = np.asarray(ranks)
    return {
        "hit@10": round(float((r <= 10).mean()), 4),
        "hit@20": round(float((r <= 20).mean()), 4),
        "rank_median": float(np.median(r)),
        "asked": len(ranks),
    }


def main(
    shoppers: int = typer.Option(3000),
    interests: int = typer.Option(20),
    items_per: int = typer.Option(50),
    engagements: int = typer.Option(12, help="home-interest engagements per shopper (from half to 1.5 times)"),
    noise: float = typer.Option(1.0, help="window-shopping views per engagement (70 % on a second interest)"),
    searches: int = typer.Option(3, help="searches per shopper naming their home interest (0: none)"),
    search_weights: str = typer.Option("0,0.03,0.1,0.3,1,3", help="IG_MODEL_SEARCH_WEIGHT values tried on each variant"),
    variants: str = typer.Option(",".join(VARIANTS), help="which behaviour variants to train"),
    seed: int = typer.Option(16),
    threads: int = typer.Option(2),
    out: Path | None = typer.Option(None),
) -> None:
    set_threads(threads)
    now = time.time()
    shop, events, browsing = shop_events(shoppers, interests, items_per, engagements, noise, now, seed)
    train, held, cut = split_last_purchase(events)
    searched = latest_searches(search_rows(shop, browsing, cut, searches, now, seed), ModelSettings().search_cap) if searches else {}
    half_life = GraphSettings().half_life_days
    edges = edge_rows(train, half_life * DAY_S)
    rows = [
        ItemRow(i, _cats(list(shop.info[i].categories[0].names)), shop.info[i].brand, shop.info[i].title, shop.info[i].description)
        for i in shop.items
    ]
    asked = sorted(held)
    seen: dict[str, set[str]] = {}
    for e in edges:
        seen.setdefault(e.user, set()).add(e.item)
    ids = [r.id for r in rows]
    col = {i: n for n, i in enumerate(ids)}
    kinds: dict[str, int] = {}
    for e in events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    result: dict = {
        "bench": "synthetic_signals",
        "synthetic": True,
        "shoppers": shoppers,
        "items": len(ids),
        "events": len(events),
        "events_by_type": kinds,
        "noise_views_per_engagement": noise,
        "held_out": len(asked),
        "searches_per_shopper": searches,
    }
    counts = np.zeros(len(ids))
    for e in edges:
        counts[col[e.item]] += 1
    pop_ranks = []
    for user in asked:
        s = counts.copy()
        s[[col[i] for i in seen.get(user, ())]] = -np.inf
        pop_ranks.append(int((s > s[col[held[user]]]).sum()) + 1)
    result["popularity"] = hits(pop_ranks)
    print(f"popularity: {result['popularity']}", flush=True)
    base = ModelSettings()
    with tempfile.TemporaryDirectory() as tmp:
        ws = WorkerSettings(model_dir=Path(tmp) / "models", text_cache_dir=Path(tmp) / "text")
        text = TextEncoder(ws.text_cache_dir)
        for name in variants.split(","):
            change = VARIANTS[name]
            ms = base.model_copy(update=change)
            ms = ModelSettings.model_validate(ms.model_dump())  # the settings' own checks on the variant
            t0 = time.perf_counter()
            graph = training_graph(edges, rows, ms.typed_weights())
            trained = train_and_save(graph, None, ms, TrainSettings(threads=threads), ws, source="graph", progress=False)
            ck = load_checkpoint(resolve(ws.model_dir, trained["version"]))
            enc = LiveEncoder(ck, ms.user_cap, half_life, text, **ms.fold(), **ms.searches())
            table = enc.known_vectors(ids).cpu()
            mine = [e for e in edges if e.user in held]
            nb, times, strength = (
                capped_neighbours(mine, enc.user_cap, enc.half_life_days),
                latest_times(mine),
                pair_strengths(mine, enc.behaviour_weights),
            )

            def ranks_at(search_weight: float) -> list[int]:
                e = dataclasses.replace(enc, search_weight=search_weight)
                scores = (e.users(nb, asked, {}, times, strength, searched).cpu() @ table.T).numpy()
                out = []
                for n, user in enumerate(asked):
                    s = scores[n]
                    s[[col[i] for i in seen.get(user, ())]] = -np.inf
                    out.append(int((s > s[col[held[user]]]).sum()) + 1)
                return out

            m = ck.model
            result[name] = {
                **hits(ranks_at(enc.search_weight)),
                "behaviour_power": m.behaviour_power,
                "behaviour_weights": dict(getattr(m, "behaviour_weights", {}) or {}),
                "s": round(time.perf_counter() - t0, 1),
            }
            if searches:
                result[name]["searches"] = {w: hits(ranks_at(float(w))) for w in search_weights.split(",")}
            print(f"{name}: {result[name]}", flush=True)
    emit_result(result, out)


if __name__ == "__main__":
    typer.run(main)
