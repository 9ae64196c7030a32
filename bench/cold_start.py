"""Cold start of new items: hold out 20% of amazon-office items with all their interactions, train on the rest,
embed the held-out items from their metadata and graph links (text, category path, brand) only, and rank only
the held-out items for every user who interacted with one (Recall@20 / NDCG@20 over those users).

References measured in the same run:
  * random;
  * popularity (oracle): held-out items ranked by their number of held-out interactions, i.e. popularity
    taken from the test itself, which no deployed system has for a new item (an upper bound of popularity);
  * category popularity: a new item scored by the mean training popularity of the items sharing its most
    specific category (the popularity a real system can compute for a new item).

The served model embeds a new item from the softmax-weighted mean of its 30 nearest warm items by text
(`ml.cold`); category and brand enter through the metadata layers fitted by ridge regression. The served
row is ranked by the server's engine at the live defaults (`bench._served`).

    python -m bench.cold_start [--out docs/results/cold_start-amazon-office.json]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import typer
from rich.console import Console

from bench._common import emit_result, rounded
from bench._served import engine_metrics, index_config, served_engine
from bench.baselines.training_free import fit_random
from graphdb.dataset_paths import find_dataset
from ml.dataset_files import load_amazon_office
from ml.embed import served_vectors
from ml.interaction_graph import InteractionGraph
from ml.ranking_metrics import item_recall
from ml.runtime import pick_device, set_threads
from ml.settings import ModelSettings, TrainSettings
from ml.text import TextEncoder
from ml.train_served import fit_served
from workers.settings import WorkerSettings

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


def run_cold_start(
    graph: InteractionGraph,
    item_text: torch.Tensor | None,
    ms: ModelSettings,
    ts: TrainSettings,
    fraction: float = 0.2,
    progress: bool = True,
) -> dict:
    train_graph, cold, held = cold_split(graph, fraction, ts.seed)
    warm = train_graph.interactions()
    fitted = fit_served(train_graph, ms, ts, item_text=item_text, progress=progress)
    oracle = torch.from_numpy(np.asarray(held.sum(0)).ravel()).float()
    scorers = {
        "popularity": lambda users: oracle.expand(len(users), -1).clone(),
        "category-popularity": category_popularity(train_graph, warm),
        "random": fit_random(graph.num_items, ts.seed),
    }
    # The served row: the new items' vectors as the worker writes them, ranked by the server's engine over an
    # index of the new items (the protocol ranks only those).
    users, items = served_vectors(fitted.model, train_graph, item_text)
    cold_ids = [train_graph.item_ids[j] for j in cold]
    engine = served_engine(cold_ids, items[torch.from_numpy(cold)].numpy(), "bench-cold-start")
    test = held[:, cold].tocsr()
    models = {
        SERVED: rounded(
            {
                **engine_metrics(engine, users.numpy(), cold_ids, sp.csr_matrix(test.shape), test, k=ts.eval_k, progress=progress),
                "train_s": fitted.train_s,
            }
        )
    }
    console.print(f"{SERVED}: {models[SERVED]}")
    for name, scorer in scorers.items():
        models[name] = rounded(item_recall(scorer, held, cold, k=ts.eval_k))
        console.print(f"{name}: {models[name]}")
    n_users = int((np.diff(held[:, cold].tocsr().indptr) > 0).sum())
    config = {
        "dim": fitted.model.dim,
        "user_norm": fitted.model.user_norm,
        "item_norm": fitted.model.item_norm,
        "recency_boost": fitted.model.recency_boost,
        "recency_scale": fitted.model.recency_scale,
        "cold_neighbours": ms.cold_neighbours,
        "served_epochs": ts.served_epochs,
        "index": index_config(engine),
    }
    return {
        "bench": "cold_start",
        "dataset": "amazon-office",
        "served": SERVED,
        "served_path": "engine",
        "config": config,
        "models": models,
        "cold_items": int(len(cold)),
        "held_out_interactions": int(held.nnz),
        "test_users": n_users,
        "device": str(pick_device(ts.device)),
    }


def main(
    data_dir: Path = typer.Option(None, help="folder holding the datasets (default: as the loaders)"),
    fraction: float = typer.Option(0.2, help="share of items held out as new"),
    text_cache: Path = typer.Option(WorkerSettings().text_cache_dir),
    threads: int = typer.Option(2),
    out: Path = typer.Option(None),
):
    """The served configuration comes from the environment, as the live service's does (IG_EMBEDDING_DIM,
    IG_MODEL_*, IG_TRAIN_*)."""
    set_threads(threads)
    graph, _ = load_amazon_office(find_dataset("amazon-office", data_dir))
    text = TextEncoder(text_cache).encode(graph.item_text, progress=True)
    emit_result(run_cold_start(graph, text, ModelSettings(), TrainSettings(threads=threads), fraction), out)


if __name__ == "__main__":
    typer.run(main)
