"""Link-prediction training of the K-layer `HeteroGNN` encoders (SAGE / GCN / GIN) and of `EgoGIN`.

HeteroGNN: each epoch splits the (user, item) pairs into message pairs (70%) and supervision pairs (30%) so a
positive pair is never visible to its own prediction; every behaviour relation keeps its own edges, weights and
times (the model decays and caps them). The loss is BPR against uniform negatives (rejected when positive) or a
sampled softmax over the batch's items plus ``ts.negatives`` uniform items (the full softmax when that covers the
catalogue). Early stopping on a validation split (a user's latest interactions with ``val_split="latest"``),
and a wall-clock budget checked after every step. Training runs on ``ts.device`` (CUDA when present with
"auto"), every tensor on it; the fitted model is returned on the CPU.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from ml.encoders.ego_gin import EgoGIN, batch_ego_graphs, ego_graph
from ml.encoders.hetero_gnn import HeteroGNN, typed_edges
from ml.interaction_graph import InteractionGraph
from ml.losses import bpr_loss
from ml.ranking_metrics import rank_metrics
from ml.runtime import pick_device, seed_everything
from ml.sampling import NegativeSampler
from ml.settings import ModelSettings, TrainSettings
from ml.train_served import holdout

# scale of the ID rows started from served vectors (`init_item_ids`); the learned embeddings start at 0.1
INIT_SCALE = 0.1


@dataclass
class HeteroFitted:
    model: HeteroGNN
    history: list[dict] = field(default_factory=list)
    train_s: float = 0.0


def build_hetero(graph: InteractionGraph, ms: ModelSettings, text_dim: int) -> HeteroGNN:
    index, _ = typed_edges(graph, ms.neighbour_cap)
    # Items without any metadata (gowalla) would all start equal: their identity is then their only input.
    has_meta = bool(text_dim or graph.num_categories or graph.num_brands)
    id_rows = graph.num_items if ms.hetero_item_ids == "always" or (ms.hetero_item_ids == "auto" and not has_meta) else 0
    _, _, _, times = graph.interaction_edges()
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
        half_life_days=ms.hetero_half_life_days,
        time_ref=int(times.max()) if len(times) else 0,
        weighted=ms.hetero_weighted,
        recency_boost=ms.hetero_recency_boost,
        recency_scale=ms.hetero_recency_scale,
        gin_aggr=ms.hetero_gin_aggr,
    )


def encode(model: HeteroGNN, graph: InteractionGraph, cap: int, item_text=None, query_text=None):
    """{node type: [N, hidden]} for the whole graph (or any subgraph in the same container), on the model's device.
    ``cap`` is the model's own neighbour cap (kept as an argument for callers that pass it)."""
    if cap != model.neighbour_cap:
        raise ValueError(f"encode: cap {cap} differs from the model's {model.neighbour_cap}")
    index, weight = model.edges(graph)
    return model(model.inputs(graph, item_text, query_text), index, weight)


def keep_pairs(graph: InteractionGraph, pairs: sp.spmatrix) -> InteractionGraph:
    """``graph`` with only the user->item edges whose (user, item) pair is stored in ``pairs``; every relation
    keeps its own edges, weights and times, and the other relations are unchanged."""
    p = sp.coo_matrix(pairs)
    allowed = np.sort(p.row.astype(np.int64) * graph.num_items + p.col)
    edges = dict(graph.edges)
    for et in graph.interaction_types():
        es = graph.edges[et]
        key = es.index[0].numpy() * graph.num_items + es.index[1].numpy()
        pos = np.minimum(np.searchsorted(allowed, key), max(len(allowed) - 1, 0))
        hit = allowed[pos] == key if len(allowed) else np.zeros(len(key), bool)
        edges[et] = es.select(torch.from_numpy(hit))
    return dataclasses.replace(graph, edges=edges)


def fit_hetero(
    graph: InteractionGraph,
    ms: ModelSettings,
    ts: TrainSettings,
    item_text=None,
    budget_s: float | None = None,
    progress: bool = True,
    query_text=None,
    item_init: torch.Tensor | None = None,
) -> HeteroFitted:
    """Train a `HeteroGNN` on ``graph`` (see the module docstring); ``item_text`` / ``query_text`` are the sentence
    vectors of the items / query nodes (None: none); ``item_init`` [I, D]: item vectors (the served model's) whose
    leading principal directions start the model's ID rows (`init_item_ids`)."""
    t0 = time.perf_counter()
    budget_s = ts.budget_min * 60 if budget_s is None else budget_s
    seed_everything(ts.seed)
    rng = np.random.default_rng(ts.seed)
    device = pick_device(ts.device)
    r_all = graph.interactions()
    times = graph.interaction_times() if ts.val_split == "latest" else None
    r_fit, r_val = holdout(r_all, ts.val_fraction, ts.seed, times) if ts.val_fraction > 0 else (r_all, None)
    fit_graph = keep_pairs(graph, r_fit)
    model = build_hetero(graph, ms, 0 if item_text is None else item_text.size(1)).to(device)
    if item_init is not None:
        init_item_ids(model, item_init)
    text = None if item_text is None else item_text.to(device)
    queries = None if query_text is None else query_text.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=ts.lr, weight_decay=ts.weight_decay)
    sampler = NegativeSampler(r_fit, rng)
    coo = r_fit.tocoo()
    fit_times = np.asarray(fit_graph.interaction_times()[coo.row, coo.col]).ravel() if ts.hetero_supervision == "latest" else None
    if fit_times is not None and (fit_times.size == 0 or np.all(fit_times == fit_times[0])):
        fit_times = None  # no order to learn from (gowalla): the random split
    n_items = graph.num_items
    best, best_state, bad, history = -1.0, None, 0, []
    for epoch in range(1, ts.max_epochs + 1):
        sup, msg = supervision_split(coo.row, fit_times, rng)
        n_sup = len(sup)
        msg_graph = keep_pairs(graph, sp.coo_matrix((coo.data[msg], (coo.row[msg], coo.col[msg])), shape=r_fit.shape))
        index, weight = model.edges(msg_graph)  # once per epoch: the message graph is fixed
        model.train()
        total, steps = 0.0, 0
        for s in tqdm(range(0, n_sup, ts.batch_size), desc=f"{ms.encoder} epoch {epoch}", leave=False, disable=not progress):
            b = sup[s : s + ts.batch_size]
            users, pos = coo.row[b], coo.col[b]
            out = model(model.inputs(msg_graph, text, queries), index, weight)
            u, i = out["user"], out["item"]
            uu = torch.from_numpy(users).long().to(device)
            if ts.loss == "bpr":
                neg = torch.from_numpy(sampler.sample(users)).long().to(device)
                loss = bpr_loss(u[uu], i[torch.from_numpy(pos).long().to(device)], i[neg])
            else:
                cand = np.arange(n_items) if ts.negatives >= n_items else np.unique(np.r_[pos, rng.integers(0, n_items, ts.negatives)])
                logits = u[uu] @ i[torch.from_numpy(cand).long().to(device)].T / ts.temperature
                target = torch.from_numpy(np.searchsorted(cand, pos)).long().to(device)
                loss = torch.nn.functional.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
            if time.perf_counter() - t0 > budget_s:
                break
        total /= max(steps, 1)
        rec = _validate(model, fit_graph, r_fit, r_val, ts, text, queries) if r_val is not None else -total
        history.append({"epoch": epoch, "loss": total, "val": rec, "s": time.perf_counter() - t0})
        if progress:
            tqdm.write(
                f"hetero-{ms.encoder} epoch {epoch}: loss {total:.4f} val recall@{ts.eval_k} {rec:.4f} ({history[-1]['s']:.0f} s)"
            )
        if rec > best:
            best, bad = rec, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if bad >= ts.patience or time.perf_counter() - t0 > budget_s:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return HeteroFitted(model.to("cpu"), history, time.perf_counter() - t0)


def supervision_split(users: np.ndarray, times: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(supervision, message) positions of the fit pairs (``users`` [P], their ``times`` [P]) for one epoch.

    Without times: a random 30 % supervise. With times: each user's latest pair (ties at random) supervises, for
    users with at least two pairs, and the rest carry the messages, so the model learns to predict what a shopper
    does next from what they did before: what the leave-last-out test and the live service ask."""
    n = len(users)
    if times is None:
        perm = rng.permutation(n)
        n_sup = max(1, int(0.3 * n))
        return perm[:n_sup], perm[n_sup:]
    order = np.lexsort((rng.random(n), -times.astype(np.float64), users))
    first = np.r_[True, users[order][1:] != users[order][:-1]] if n else np.zeros(0, bool)
    counts = np.bincount(users, minlength=int(users.max()) + 1 if n else 0)
    sup_mask = np.zeros(n, bool)
    sup_mask[order[first]] = True
    sup_mask &= counts[users] >= 2
    return np.flatnonzero(sup_mask), np.flatnonzero(~sup_mask)


@torch.no_grad()
def init_item_ids(model: HeteroGNN, item_vectors: torch.Tensor) -> None:
    """Start the model's ID rows from the top ``hidden`` principal directions of ``item_vectors`` [I, D] (e.g. the
    served model's item vectors), scaled to unit variance per column: the GNN then refines what the served model
    knows rather than learning every item from scratch. No-op for a model without ID rows."""
    if model.item_id is None:
        return
    x = item_vectors.float().cpu()
    x = x - x.mean(0, keepdim=True)
    q = min(model.hidden, *x.shape)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    proj = u[:, :q] * s[:q]
    proj = proj / proj.std(0, keepdim=True).clamp(min=1e-12) * INIT_SCALE
    rows = model.item_id.weight
    rows[: proj.size(0), :q] = proj[: rows.size(0)].to(rows.device)


@torch.no_grad()
def _validate(model, fit_graph, r_fit, r_val, ts, item_text, query_text) -> float:
    model.eval()
    out = encode(model, fit_graph, model.neighbour_cap, item_text, query_text)
    u, i = out["user"].cpu(), out["item"].cpu()
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
