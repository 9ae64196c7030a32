"""Contrastive training of `EgoGIN` and the users' graph-level vectors ("users with similar interests").

The two views of a user are a random split of the user's items in two halves: each half's ego-graph must be
nearer to the other half's than to any other user's in the batch (InfoNCE). That is the question the vectors
answer later: does a user's nearest user buy what the user will buy next?

Receives tensors and item lists, never talks to Neo4j.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn.functional import cross_entropy, normalize

from workers.data import InteractionGraph
from workers.embed import item_bases
from workers.models.ego_gin import EgoGIN, ego_batch
from workers.models.spectral_sage import SpectralSAGE
from workers.runtime import seed_everything
from workers.settings import ModelSettings, TrainSettings


def user_items(r: sp.csr_matrix, times: sp.csr_matrix | None = None, max_items: int = 200) -> list[np.ndarray]:
    """Each user's items (a row of ``r``), the latest ``max_items`` by ``times`` (ties by item index) when longer."""
    out = []
    for u in range(r.shape[0]):
        items = r.indices[r.indptr[u] : r.indptr[u + 1]]
        if len(items) > max_items:
            t = times[u].toarray()[0, items] if times is not None else np.zeros(len(items))
            items = items[np.lexsort((items, -t))[:max_items]]
        out.append(np.sort(items))
    return out


def fit_ego(
    items: Sequence[np.ndarray],
    item_vectors: torch.Tensor,
    item_category: torch.Tensor,
    item_brand: torch.Tensor,
    *,
    hidden: int = 64,
    layers: int = 2,
    lr: float = 1e-2,
    batch: int = 128,
    temperature: float = 0.1,
    budget_s: float = 60.0,
    max_steps: int = 2000,
    seed: int = 2026,
) -> tuple[EgoGIN, dict]:
    """An `EgoGIN` trained for ``budget_s`` seconds (or ``max_steps``) on users with at least two items;
    returns it (in eval mode) with {steps, train_s, loss}."""
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    users = np.flatnonzero(np.fromiter((len(it) for it in items), np.int64, len(items)) >= 2)
    model = EgoGIN(item_vectors.size(1), hidden, hidden, layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0, steps, loss_v = time.perf_counter(), 0, float("nan")
    model.train()
    while steps < max_steps and time.perf_counter() - t0 < budget_s:
        b = rng.choice(users, size=min(batch, len(users)), replace=False)
        halves: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        for u in b:
            it = rng.permutation(items[u])
            cut = len(it) // 2
            halves[0].append(it[:cut])
            halves[1].append(it[cut:])
        a, c = (normalize(model(*ego_batch(h, item_vectors, item_category, item_brand)), dim=-1) for h in halves)
        labels = torch.arange(len(b))
        logits = a @ c.T / temperature
        loss = (cross_entropy(logits, labels) + cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps, loss_v = steps + 1, loss.item()
    model.eval()
    return model, {"steps": steps, "train_s": time.perf_counter() - t0, "loss": loss_v}


@torch.no_grad()
def ego_vectors(
    model: EgoGIN,
    items: Sequence[np.ndarray],
    item_vectors: torch.Tensor,
    item_category: torch.Tensor,
    item_brand: torch.Tensor,
    chunk: int = 2048,
) -> torch.Tensor:
    """Unit-length graph vectors [len(items), out] of the users whose item lists are ``items``."""
    model.eval()
    parts = [
        normalize(model(*ego_batch(items[s : s + chunk], item_vectors, item_category, item_brand)), dim=-1)
        for s in range(0, len(items), chunk)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, model.head.out_features)


def fit_served_ego(
    model: SpectralSAGE, graph: InteractionGraph, item_text: torch.Tensor | None, ms: ModelSettings, ts: TrainSettings
) -> tuple[dict, dict]:
    """The ego encoder of a served model, trained on its graph with what each item sends to its users as the
    item inputs (`workers.ego_live` feeds the same): ({"hparams", "state_dict"} for the checkpoint, info)."""
    with torch.no_grad():
        item_in = model.item_in(item_bases(model, graph, item_text))
    items = user_items(graph.interactions(), graph.interaction_times(), ms.user_cap)
    ego, info = fit_ego(
        items,
        item_in,
        graph.item_category,
        graph.item_brand,
        hidden=ms.hidden,
        layers=ms.ego_hops,
        budget_s=ms.ego_train_s,
        max_steps=ms.ego_steps,
        seed=ts.seed,
    )
    return {"hparams": ego.hparams(), "state_dict": ego.state_dict()}, info
