"""Contrastive training of `EgoGIN` and the users' graph-level vectors ("users with similar interests").

Two objectives (``views``), both InfoNCE over a batch of users:

- ``"future"``: a user's ego-graph without their latest item must be nearest to the ego-graph of
  another user who has that item (one drawn at random), and not to the other users' in the batch. That is the
  question the vectors answer later: does a user's nearest user have what the user does next? Training reads the
  training graph only (its latest items stand in for the held-out ones).
- ``"halves"`` (the default): the two views of a user are a random split of the user's items in two halves; each half's
  ego-graph must be nearer to the other half's than to any other user's.

Receives tensors and item lists, never talks to Neo4j.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn.functional import cross_entropy, normalize

from ml.embed import item_bases
from ml.encoders.ego_gin import EgoGIN, ego_batch
from ml.encoders.spectral_sage import SpectralSAGE
from ml.interaction_graph import InteractionGraph
from ml.runtime import seed_everything
from ml.settings import ModelSettings, TrainSettings


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
    out: int | None = None,
    layers: int = 2,
    lr: float = 1e-2,
    batch: int = 128,
    temperature: float = 0.1,
    budget_s: float = 60.0,
    max_steps: int = 2000,
    seed: int = 2026,
    views: str = "halves",
    latest: np.ndarray | None = None,
) -> tuple[EgoGIN, dict]:
    """An `EgoGIN` trained for ``budget_s`` seconds (or ``max_steps``) on users with at least two items (module
    docstring; ``latest`` [U]: each user's latest item index, -1 for none, needed by ``views="future"``);
    returns it (in eval mode) with {steps, train_s, loss}."""
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    sizes = np.fromiter((len(it) for it in items), np.int64, len(items))
    users = np.flatnonzero(sizes >= 2)
    if views == "future":
        if latest is None:
            raise ValueError("fit_ego: views='future' needs each user's latest item")
        owners = _owners(items, item_vectors.size(0))
        n_owners = np.diff(owners.indptr)
        users = users[(latest[users] >= 0) & (n_owners[np.maximum(latest[users], 0)] >= 2)]
    elif views != "halves":
        raise ValueError(f"fit_ego: unknown views {views!r}")
    model = EgoGIN(item_vectors.size(1), hidden, out or hidden, layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0, steps, loss_v = time.perf_counter(), 0, float("nan")
    model.train()
    while steps < max_steps and time.perf_counter() - t0 < budget_s:
        b = rng.choice(users, size=min(batch, len(users)), replace=False)
        halves = _future_views(b, items, latest, owners, rng) if views == "future" else _halves(b, items, rng)
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


def _halves(b: np.ndarray, items: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    halves: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for u in b:
        it = rng.permutation(items[u])
        cut = len(it) // 2
        halves[0].append(it[:cut])
        halves[1].append(it[cut:])
    return halves


def _owners(items: Sequence[np.ndarray], n_items: int) -> sp.csc_matrix:
    """[U, I] item -> users (CSC: a column's rows are the users who have the item)."""
    rows = np.repeat(np.arange(len(items)), [len(it) for it in items])
    cols = np.concatenate(items) if len(items) else np.zeros(0, np.int64)
    return sp.csc_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(items), n_items))


def _future_views(
    b: np.ndarray, items: Sequence[np.ndarray], latest: np.ndarray, owners: sp.csc_matrix, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(each user's items but the latest, the items of another user who has that latest item)."""
    past, peer = [], []
    for u in b:
        it = latest[u]
        past.append(items[u][items[u] != it])
        who = owners.indices[owners.indptr[it] : owners.indptr[it + 1]]
        who = who[who != u]
        peer.append(items[int(who[rng.integers(len(who))])])
    return past, peer


def latest_items(r: sp.csr_matrix, times: sp.csr_matrix | None) -> np.ndarray:
    """[U] each user's latest item by ``times`` (ties: the highest index), -1 for a user without items or times."""
    out = np.full(r.shape[0], -1, np.int64)
    if times is None:
        return out
    t = sp.csr_matrix(times)
    if t.nnz == 0 or np.all(t.data == t.data[0]):
        return out  # no order (gowalla): nothing is the latest
    for u in range(r.shape[0]):
        s, e = t.indptr[u], t.indptr[u + 1]
        if e > s:
            cols, ts_ = t.indices[s:e], t.data[s:e]
            out[u] = cols[np.lexsort((cols, ts_))[-1]]
    return out


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
    r, times = graph.interactions(), graph.interaction_times()
    items = user_items(r, times, ms.user_cap)
    latest = latest_items(r, times)
    # a graph without times has no "next": the halves objective there
    views = ms.ego_views if (latest >= 0).any() else "halves"
    ego, info = fit_ego(
        items,
        item_in,
        graph.item_category,
        graph.item_brand,
        hidden=ms.ego_hidden or ms.hidden,
        out=ms.ego_dim,
        layers=ms.ego_hops,
        budget_s=ms.ego_train_s,
        max_steps=ms.ego_steps,
        seed=ts.seed,
        views=views,
        latest=latest,
    )
    return {"hparams": ego.hparams(), "state_dict": ego.state_dict()}, {**info, "views": views}
