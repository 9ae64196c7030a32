"""Similar users: do a user's nearest users (by the ego-graph vector) share the user's held-out items?

Split: each user's latest interaction is held out (leave last out, as `bench.quality`). The served model is
fitted on the training part (the live training, `ml.train_served`); what its items send to their users
(``item_in``, as the worker has them) are the item inputs of the users' ego-graphs (user, their training items,
those items' categories and brands), which `EgoGIN` embeds, trained as the train job trains it
(`ml.train_ego.fit_served_ego`: contrastive, IG_MODEL_EGO_STEPS steps within IG_MODEL_EGO_TRAIN_S, on the
training split only; IG_MODEL_EGO_VIEWS picks the objective).

For every user with a held-out item, k neighbours are taken by each method, and scored by
``hit@k`` (some neighbour has the held-out item among their training items) and ``precision@k`` (the share of
neighbours that have it). Methods:

- ``ego-gin``: cosine nearest users by the ego-graph vector (what SimilarUsers serves);
- ``co-occurrence``: the users with most training items in common (ties by index), what the analysts' Cypher
  "users who bought the same" gives;
- ``random``: k users drawn uniformly;
- ``mean-items`` and ``user-vector`` (labelled peers, not served): the mean of the user's unit item vectors
  (a readout with no trained weights) and the served model's own user vector.

    python -m bench.similar_users [--dataset amazon-office] [--ego-steps N] [--out docs/results/similar_users-amazon-office.json]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import typer
from rich.console import Console
from torch.nn.functional import normalize

from bench._common import emit_result, rounded
from graphdb.dataset_paths import find_dataset
from ml.dataset_files import Split, load_split
from ml.embed import item_bases, served_vectors
from ml.runtime import set_threads
from ml.settings import ModelSettings, TrainSettings
from ml.train_ego import ego_vectors, fit_served_ego, user_items
from ml.train_served import fit_served
from workers.ego_live import load_ego
from workers.settings import WorkerSettings
from workers.training import item_texts

KS = (10, 50)
DATASETS = ("amazon-office", "amazon-hin", "gowalla")
console = Console(stderr=True)


def neighbour_scores(neighbours: np.ndarray, users: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix) -> dict[str, float]:
    """``neighbours`` [len(users), max k] (best first) -> hit@k and precision@k for each k in KS."""
    out: dict[str, float] = {}
    for k in KS:
        nb = neighbours[:, :k]
        owners = train[nb.ravel()]
        wanted = test[np.repeat(users, k)]
        has = (np.asarray(owners.multiply(wanted).sum(axis=1)).ravel() > 0).reshape(len(users), k)
        out[f"hit@{k}"] = float(has.any(axis=1).mean())
        out[f"precision@{k}"] = float(has.mean())
    return out


def nearest_by_vector(vectors: torch.Tensor, users: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Cosine k nearest other users of each of ``users`` (ties by index, as `torch.topk` is not stable: sorted)."""
    v = normalize(vectors.float(), dim=-1)
    out = []
    for s in range(0, len(users), chunk):
        b = torch.from_numpy(users[s : s + chunk])
        sim = v[b] @ v.T
        sim[torch.arange(len(b)), b] = -float("inf")
        out.append(torch.topk(sim, k, dim=1).indices.numpy())
    return np.concatenate(out)


def nearest_by_cooccurrence(train: sp.csr_matrix, users: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """The k users with most training items in common with each of ``users`` (ties: lower index first)."""
    n = train.shape[0]
    tie = 0.5 * (1.0 - np.arange(n) / n)  # below 1: breaks ties without reordering different counts
    out = []
    for s in range(0, len(users), chunk):
        b = users[s : s + chunk]
        shared = (train[b] @ train.T).toarray().astype(np.float64) + tie
        shared[np.arange(len(b)), b] = -np.inf
        top = np.argpartition(-shared, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(shared, top, axis=1), axis=1)
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def random_users(n: int, users: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k distinct users other than the user, uniformly."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(users), k), np.int64)
    for row, u in enumerate(users):
        pick = rng.choice(n - 1, size=k, replace=False)
        out[row] = pick + (pick >= u)
    return out


def run_similar_users(split: Split, ms: ModelSettings, ts: TrainSettings, progress: bool = True) -> dict:
    g = split.train
    train = g.interactions()
    users = np.flatnonzero((np.diff(split.test.indptr) > 0) & (np.diff(train.indptr) > 0))
    kmax = max(KS)
    text = item_texts(g, WorkerSettings(), progress)
    t0 = time.perf_counter()
    fitted = fit_served(g, ms, ts, item_text=text, progress=progress)
    user_vecs, _ = served_vectors(fitted.model, g, text)
    with torch.no_grad():  # what each item sends to its users, as the worker feeds the ego-graphs (workers.ego_live)
        item_vecs = fitted.model.item_in(item_bases(fitted.model, g, text))
    served_s = time.perf_counter() - t0
    items = user_items(train, g.interaction_times(), ms.user_cap)
    state, info = fit_served_ego(fitted.model, g, text, ms, ts)  # the train job's own call
    model = load_ego(state)
    assert model is not None
    console.print(f"ego-gin: {info}")
    t1 = time.perf_counter()
    ego = ego_vectors(model, items, item_vecs, g.item_category, g.item_brand)
    embed_s = time.perf_counter() - t1
    unit = normalize(item_vecs, dim=-1)
    mean_items = torch.stack([unit[torch.from_numpy(it)].mean(0) if len(it) else unit.new_zeros(unit.size(1)) for it in items])
    methods: dict[str, Callable[[], np.ndarray]] = {
        "ego-gin": lambda: nearest_by_vector(ego, users, kmax),
        "co-occurrence": lambda: nearest_by_cooccurrence(train, users, kmax),
        "random": lambda: random_users(g.num_users, users, kmax, ts.seed),
        "mean-items": lambda: nearest_by_vector(mean_items, users, kmax),
        "user-vector": lambda: nearest_by_vector(user_vecs, users, kmax),
    }
    out: dict[str, dict] = {}
    for name, nearest in methods.items():
        t = time.perf_counter()
        nb = nearest()
        out[name] = rounded({**neighbour_scores(nb, users, train, split.test), "search_s": time.perf_counter() - t})
        console.print(f"{name}: {out[name]}")
    out["ego-gin"].update(rounded({"train_s": info["train_s"], "steps": info["steps"], "loss": info["loss"], "embed_s": embed_s}))
    return {
        "bench": "similar_users",
        "dataset": split.name,
        "users": int(len(users)),
        "item_inputs": {"model": "spectral-sage", "dim": int(item_vecs.size(1)), "train_s": round(served_s, 2)},
        "ego_gin": {**model.hparams(), "steps": ms.ego_steps, "budget_s": ms.ego_train_s, "views": info["views"]},
        "served": "ego-gin",
        "peers_not_served": ["mean-items", "user-vector"],
        "models": out,
        "threads": torch.get_num_threads(),
    }


def main(
    dataset: str = typer.Option("amazon-office", help="amazon-office | amazon-hin (leave last out) | gowalla (its split)"),
    data_dir: Path = typer.Option(None, help="folder holding the datasets (default: IG_DATASETS_DIR, ../shared/datasets, then data/)"),
    ego_steps: int = typer.Option(None, help="training steps of the ego-graph GIN (default: IG_MODEL_EGO_STEPS, as served)"),
    threads: int = typer.Option(2),
    out: Path = typer.Option(None, help="also write RESULT JSON here"),
):
    set_threads(threads)
    if dataset not in DATASETS:
        raise typer.BadParameter(f"unknown dataset {dataset!r} (one of {', '.join(DATASETS)})")
    split = load_split(dataset, find_dataset(dataset, data_dir))
    ms = ModelSettings() if ego_steps is None else ModelSettings(ego_steps=ego_steps)
    emit_result(run_similar_users(split, ms, TrainSettings(threads=threads)), out)


if __name__ == "__main__":
    typer.run(main)
