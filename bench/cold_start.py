"""Cold start of new items: hold out 20% of amazon-office items with all their interactions, train on the rest,
embed the held-out items from their metadata and graph links (text, category path, brand) only, and rank only
the held-out items for every user who interacted with one (Recall@20 / NDCG@20 over those users).

References measured in the same run:
  * random;
  * popularity (oracle): held-out items ranked by their number of held-out interactions, i.e. popularity
    taken from the test itself, which no deployed system has for a new item (an upper bound of popularity);
  * category popularity: a new item scored by the mean training popularity of the items sharing its most
    specific category (the popularity a real system can compute for a new item).

The served model embeds a new item as the softmax-weighted mean of its 30 nearest warm items by text
(`workers.cold`); category and brand enter through the metadata layers fitted by ridge regression.

    python -m bench.cold_start [--budget-min 5] [--out docs/results/cold_start-amazon-office.json]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import typer
from rich.console import Console

from bench._common import emit_result, rounded
from workers.baselines import fit_random
from workers.data import InteractionGraph
from workers.datasets import load_amazon_office
from workers.embed import served_scorer
from workers.metrics import item_recall
from workers.runtime import pick_device, set_threads
from workers.settings import ModelSettings, TrainSettings, WorkerSettings
from workers.text import TextEncoder
from workers.train_served import fit_served

SERVED = "spectral-sage"
console = Console(stderr=True)


def cold_split(graph: InteractionGraph, fraction: float, seed: int):
    """(warm training graph, cold item indices, held-out interactions CSR [U, I])."""
    r = graph.interactions()
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(graph.num_items, size=int(round(fraction * graph.num_items)), replace=False))
    is_cold = np.zeros(graph.num_items, bool)
    is_cold[cold] = True
    coo = r.tocoo()
    keep = ~is_cold[coo.col]
    warm = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=r.shape)
    held = sp.csr_matrix((coo.data[~keep], (coo.row[~keep], coo.col[~keep])), shape=r.shape)
    return graph.with_interactions(warm, relation="reviewed"), cold, held


def category_popularity(graph: InteractionGraph, warm: sp.csr_matrix):
    """Score of an item = mean warm popularity of the items in its most specific category."""
    pop = np.asarray(warm.sum(0)).ravel()
    ic = graph.item_category.numpy()
    # most specific = the category with the fewest items among an item's categories
    size = np.bincount(ic[1], minlength=graph.num_categories)
    best = np.full(graph.num_items, -1)
    best_size = np.full(graph.num_items, np.iinfo(np.int64).max)
    for item, cat in zip(ic[0], ic[1]):
        if size[cat] < best_size[item]:
            best[item], best_size[item] = cat, size[cat]
    warm_items = pop > 0
    cat_sum = np.zeros(graph.num_categories)
    cat_cnt = np.zeros(graph.num_categories)
    ok = (best >= 0) & warm_items
    np.add.at(cat_sum, best[ok], pop[ok])
    np.add.at(cat_cnt, best[ok], 1)
    cat_mean = np.divide(cat_sum, np.maximum(cat_cnt, 1))
    score = np.where(best >= 0, cat_mean[np.maximum(best, 0)], 0.0)
    s = torch.from_numpy(score).float()
    return lambda users: s.expand(len(users), -1).clone()


def run_cold_start(graph: InteractionGraph, item_text: torch.Tensor | None, ms: ModelSettings,
                   ts: TrainSettings, fraction: float = 0.2, budget_s: float = 300.0,
                   progress: bool = True) -> dict:
    train_graph, cold, held = cold_split(graph, fraction, ts.seed)
    warm = train_graph.interactions()
    fitted = fit_served(train_graph, ms, ts, item_text=item_text, budget_s=budget_s, progress=progress)
    oracle = torch.from_numpy(np.asarray(held.sum(0)).ravel()).float()
    scorers = {
        SERVED: served_scorer(fitted.model, train_graph, item_text),
        "popularity": lambda users: oracle.expand(len(users), -1).clone(),
        "category-popularity": category_popularity(train_graph, warm),
        "random": fit_random(graph.num_items, ts.seed),
    }
    models = {}
    for name, scorer in scorers.items():
        m = item_recall(scorer, held, cold, k=ts.eval_k)
        if name == SERVED:
            m["train_s"] = fitted.train_s
        models[name] = rounded(m)
        console.print(f"{name}: {models[name]}")
    n_users = int((np.diff(held[:, cold].tocsr().indptr) > 0).sum())
    return {"bench": "cold_start", "dataset": "amazon-office", "served": SERVED, "models": models,
            "cold_items": int(len(cold)), "held_out_interactions": int(held.nnz), "test_users": n_users,
            "device": str(pick_device(ts.device))}


def main(data_dir: Path = typer.Option(Path("../shared/datasets")),
         budget_min: float = typer.Option(5.0, help="training budget, minutes"),
         fraction: float = typer.Option(0.2, help="share of items held out as new"),
         dim: int = typer.Option(256, help="embedding width"),
         epochs: int = typer.Option(0, help="fine-tune epochs: 0 (measured best for new items: the fine-tune "
                                           "moves warm vectors away from what metadata predicts)"),
         text_cache: Path = typer.Option(WorkerSettings().text_cache_dir),
         threads: int = typer.Option(2), out: Path = typer.Option(None)):
    set_threads(threads)
    graph, _ = load_amazon_office(data_dir / "amazon-office")
    text = TextEncoder(text_cache).encode(graph.item_text, progress=True)
    ms = ModelSettings(dim=dim)
    ts = TrainSettings(threads=threads, budget_min=budget_min, batch_size=512)
    ts = ts.model_copy(update={"max_epochs": epochs})
    emit_result(run_cold_start(graph, text, ms, ts, fraction, budget_min * 60), out)


if __name__ == "__main__":
    typer.run(main)
