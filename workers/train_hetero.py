"""Link-prediction training of the K-layer `HeteroGNN` encoders (SAGE / GCN / GIN) and of `EgoGIN`.

HeteroGNN: each epoch splits the interaction edges into message edges (70%) and supervision edges (30%) so a
positive pair is never visible to its own prediction; the loss is BPR against uniform negatives (rejected
when positive) or a sampled softmax over the batch's items. Early stopping on a validation split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from workers.data import InteractionGraph
from workers.metrics import rank_metrics
from workers.models.ego_gin import EgoGIN, batch_ego_graphs, ego_graph
from workers.models.hetero_gnn import HeteroGNN, typed_edges
from workers.runtime import seed_everything
from workers.sampling import NegativeSampler
from workers.settings import ModelSettings, TrainSettings
from workers.train_bpr import bpr_loss
from workers.train_served import holdout


@dataclass
class HeteroFitted:
    model: HeteroGNN
    history: list[dict] = field(default_factory=list)
    train_s: float = 0.0


def build_hetero(graph: InteractionGraph, ms: ModelSettings, text_dim: int) -> HeteroGNN:
    index, _ = typed_edges(graph, ms.neighbour_cap)
    # Items without any metadata (gowalla) would all start equal: their identity is then their only input.
    id_rows = 0 if (text_dim or graph.num_categories or graph.num_brands) else graph.num_items
    return HeteroGNN(
        list(index),
        graph.num_categories,
        graph.num_brands,
        text_dim,
        ms.hidden,
        ms.layers,
        ms.encoder,
        ms.aggr,
        num_items=id_rows,
        neighbour_cap=ms.neighbour_cap,
    )


def encode(model: HeteroGNN, graph: InteractionGraph, cap: int, item_text=None, query_text=None):
    """{node type: [N, hidden]} for the whole graph (or any subgraph in the same container)."""
    index, weight = typed_edges(graph, cap)
    return model(model.inputs(graph, item_text, query_text), index, weight)


def fit_hetero(
    graph: InteractionGraph, ms: ModelSettings, ts: TrainSettings, item_text=None, budget_s: float | None = None, progress: bool = True
) -> HeteroFitted:
    t0 = time.perf_counter()
    budget_s = ts.budget_min * 60 if budget_s is None else budget_s
    seed_everything(ts.seed)
    rng = np.random.default_rng(ts.seed)
    r_all = graph.interactions()
    r_fit, r_val = holdout(r_all, ts.val_fraction, ts.seed) if ts.val_fraction > 0 else (r_all, None)
    fit_graph = graph.with_interactions(r_fit)
    model = build_hetero(graph, ms, 0 if item_text is None else item_text.size(1))
    opt = torch.optim.Adam(model.parameters(), lr=ts.lr, weight_decay=ts.weight_decay)
    sampler = NegativeSampler(r_fit, rng)
    coo = r_fit.tocoo()
    best, best_state, bad, history = -1.0, None, 0, []
    for epoch in range(1, ts.max_epochs + 1):
        perm = rng.permutation(coo.nnz)
        n_sup = max(1, int(0.3 * coo.nnz))
        sup, msg = perm[:n_sup], perm[n_sup:]
        msg_graph = graph.with_interactions(type(r_fit)((coo.data[msg], (coo.row[msg], coo.col[msg])), shape=r_fit.shape))
        index, weight = typed_edges(msg_graph, ms.neighbour_cap)  # once per epoch: the message graph is fixed
        model.train()
        total, steps = 0.0, 0
        for s in tqdm(range(0, n_sup, ts.batch_size), desc=f"{ms.encoder} epoch {epoch}", leave=False, disable=not progress):
            b = sup[s : s + ts.batch_size]
            users, pos = coo.row[b], coo.col[b]
            out = model(model.inputs(msg_graph, item_text), index, weight)
            u, i = out["user"], out["item"]
            if ts.loss == "bpr":
                neg = sampler.sample(users)
                loss = bpr_loss(u[users], i[pos], i[neg])
            else:
                logits = u[users] @ i[pos].T / ts.temperature
                loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(b)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        total /= max(steps, 1)
        rec = _validate(model, fit_graph, r_fit, r_val, ms, ts, item_text) if r_val is not None else -total
        history.append({"epoch": epoch, "loss": total, "val": rec, "s": time.perf_counter() - t0})
        if rec > best:
            best, bad = rec, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if bad >= ts.patience or time.perf_counter() - t0 > budget_s:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return HeteroFitted(model, history, time.perf_counter() - t0)


@torch.no_grad()
def _validate(model, fit_graph, r_fit, r_val, ms, ts, item_text) -> float:
    model.eval()
    out = encode(model, fit_graph, ms.neighbour_cap, item_text)
    u, i = out["user"], out["item"]
    return rank_metrics(lambda b: u[b] @ i.T, r_fit, r_val, k=ts.eval_k)[f"recall@{ts.eval_k}"]


def fit_ego_gin(
    graph: InteractionGraph,
    item_vectors: torch.Tensor,
    ms: ModelSettings,
    ts: TrainSettings,
    users: np.ndarray | None = None,
    steps: int = 50,
    batch: int = 32,
) -> EgoGIN:
    """Contrastive training: two views of a user's ego-graph (each keeps a random half of the user's items)
    must be nearer to each other than to other users' views (InfoNCE)."""
    seed_everything(ts.seed)
    rng = np.random.default_rng(ts.seed)
    r = graph.interactions()
    users = np.flatnonzero(np.diff(r.indptr) >= 2) if users is None else users
    model = EgoGIN(item_vectors.size(1), ms.hidden, ms.hidden, ms.ego_hops)
    opt = torch.optim.Adam(model.parameters(), lr=ts.lr)
    for _ in range(steps):
        b = rng.choice(users, size=min(batch, len(users)), replace=False)
        views = []
        for _ in range(2):
            gs = []
            for u in b:
                items = r.indices[r.indptr[u] : r.indptr[u + 1]]
                keep = items[rng.random(len(items)) < 0.5]
                keep = keep if len(keep) else items[:1]
                sub = graph.with_interactions(
                    type(r)((np.ones(len(keep)), (np.zeros(len(keep), int), keep)), shape=(1, graph.num_items))
                )
                gs.append(ego_graph(sub, 0, item_vectors))
            views.append(model(*batch_ego_graphs(gs)))
        a, c = (torch.nn.functional.normalize(v, dim=-1) for v in views)
        loss = torch.nn.functional.cross_entropy(a @ c.T / 0.2, torch.arange(len(b)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model
