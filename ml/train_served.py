"""Training of the served encoder (`SpectralSAGE`): spectral start, metadata fit, softmax fine-tune.

1. Randomized SVD of the normalised interaction matrix -> item ID table (seconds, no gradient steps).
2. Metadata: a ridge regression from item features (text vector, category bag, brand) onto the spectral
   vectors, so an item with metadata only lands where its warm neighbours are (cold start); warm items keep
   their vector (the ID row holds the residual).
3. Fine-tune ``x`` and the filter ``h`` as a denoising item-to-item model: drop a random part of each user's
   items from the input, predict them with a full softmax over all items (input items masked), early-stop on
   a validation split. Sparse CSR matmuls carry the user aggregation, so a step costs O(edges * dim).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from ml.cold import embed_cold_items
from ml.encoders.spectral_sage import SpectralSAGE
from ml.interaction_graph import InteractionGraph, csr_to_torch
from ml.ranking_metrics import rank_metrics
from ml.recency import has_order, weigh_by_recency
from ml.runtime import pick_device, seed_everything
from ml.settings import ModelSettings, TrainSettings
from ml.signals import half_life_seconds, weigh_by_signals
from ml.spectral import spectral_items


@dataclass
class Fitted:
    model: SpectralSAGE
    history: list[dict] = field(default_factory=list)
    train_s: float = 0.0
    item_text: torch.Tensor | None = None


def holdout(r: sp.csr_matrix, fraction: float, seed: int, times: sp.csr_matrix | None = None) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split each user's interactions into (fit, validation), ``ceil(fraction * n_u)`` of a user's ``n_u`` items
    to validation; users keep at least one fit item. With ``times`` (same pattern as ``r``), a user's latest
    interactions are held out, ties at random: what a live service is asked is what a shopper does next, and
    leave-last-out benchmarks test exactly that. Without, or with every time equal (gowalla has none), at
    random, as gowalla's test split takes ceil(20%) of each user's items."""
    r = sp.csr_matrix(r)
    rng = np.random.default_rng(seed)
    n = np.diff(r.indptr)
    rows = np.repeat(np.arange(r.shape[0]), n)
    newest_first = np.zeros(r.nnz)
    if times is not None:
        t = sp.csr_matrix(times)
        if t.shape != r.shape or t.nnz != r.nnz or not (np.array_equal(t.indptr, r.indptr) and np.array_equal(t.indices, r.indices)):
            raise ValueError("holdout: times must have the interactions' sparsity pattern")
        newest_first = -t.data.astype(np.float64)
    # a rank of each interaction within its user's row: newest first, ties at random
    order = np.lexsort((rng.random(r.nnz), newest_first, rows))
    rank = np.empty(r.nnz, np.int64)
    rank[order] = np.arange(r.nnz) - np.repeat(r.indptr[:-1], n)
    n_val = np.minimum(np.ceil(fraction * n - 1e-9).astype(np.int64), np.maximum(n - 1, 0))
    val = rank < np.repeat(n_val, n)
    mk = lambda m: sp.csr_matrix((r.data[m], (rows[m], r.indices[m])), shape=r.shape)  # noqa: E731
    return mk(~val), mk(val)


def feature_matrix(graph: InteractionGraph, item_text: torch.Tensor | None) -> sp.csr_matrix | None:
    """[I, F] item features for the ridge fit: text vector, category bag (mean), brand one-hot."""
    blocks = []
    n = graph.num_items
    if item_text is not None:
        blocks.append(sp.csr_matrix(item_text.numpy()))
    if graph.num_categories and graph.item_category.numel():
        ic = graph.item_category.numpy()
        c = sp.csr_matrix((np.ones(ic.shape[1], np.float32), (ic[0], ic[1])), shape=(n, graph.num_categories))
        cnt = np.maximum(np.asarray(c.sum(1)).ravel(), 1)
        blocks.append(sp.diags(1 / cnt) @ c)
    if graph.num_brands:
        b = graph.item_brand.numpy()
        ok = b >= 0
        blocks.append(sp.csr_matrix((np.ones(ok.sum(), np.float32), (np.flatnonzero(ok), b[ok])), shape=(n, graph.num_brands)))
    return sp.hstack(blocks).tocsr().astype(np.float32) if blocks else None


@torch.no_grad()
def fit_metadata(
    model: SpectralSAGE, graph: InteractionGraph, item_text: torch.Tensor | None, warm: np.ndarray, ridge: float = 1.0
) -> None:
    """Closed-form ridge from features to the warm items' spectral vectors, written into the metadata layers."""
    f = feature_matrix(graph, item_text)
    if f is None or not warm.any():
        return
    fw = torch.from_numpy(f[warm].toarray()).double()
    target = model.item_emb.detach()[torch.from_numpy(warm)].double()
    gram = fw.T @ fw + ridge * torch.eye(fw.size(1), dtype=torch.float64)
    w = torch.linalg.solve(gram, fw.T @ target).float()  # [F, dim]
    col = 0
    if model.text is not None and item_text is not None:
        model.text.weight.copy_(w[col : col + item_text.size(1)].T)
        col += item_text.size(1)
    if model.category is not None and graph.num_categories:
        model.category.weight.copy_(w[col : col + graph.num_categories])
        col += graph.num_categories
    if model.brand is not None and graph.num_brands:
        model.brand.weight.copy_(w[col : col + graph.num_brands])
    meta = model.meta(graph.item_category, graph.item_brand, item_text, graph.num_items)
    w_t = torch.from_numpy(warm)
    model.item_emb[w_t] -= meta[w_t]  # warm x unchanged
    if model.degree_head is not None:  # log-degree from the metadata vector: the prior of new items
        mw = torch.cat([meta[w_t].double(), torch.ones(int(w_t.sum()), 1, dtype=torch.float64)], dim=1)
        y = model.item_degree[w_t].double().log().unsqueeze(-1)
        coef = torch.linalg.solve(mw.T @ mw + ridge * torch.eye(mw.size(1), dtype=torch.float64), mw.T @ y)
        model.degree_head.weight.copy_(coef[:-1].T.float())
        model.degree_head.bias.copy_(coef[-1].float())
        model.fill_cold_degrees(meta)


def _rows(r: sp.csr_matrix, users: np.ndarray, drop: float, rng: np.random.Generator):
    """Sparse (input, target) rows of ``users``: a random ``drop`` share of each row becomes the target."""
    sub = r[users]
    mask = rng.random(sub.nnz) < drop
    rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
    inp = sp.csr_matrix((sub.data[~mask], (rows[~mask], sub.indices[~mask])), shape=sub.shape)
    return inp, rows[mask], sub.indices[mask]


def build_model(graph: InteractionGraph, ms: ModelSettings, text_dim: int) -> SpectralSAGE:
    return SpectralSAGE(
        graph.num_items,
        ms.dim,
        ms.user_norm,
        ms.item_norm,
        graph.num_categories,
        graph.num_brands,
        text_dim,
        ms.recency_boost,
        ms.recency_scale,
        ms.behaviour_power,
        ms.decay_half_life_days,
        ms.cold_meta_blend,
        ms.typed_weights(),
    )


def fit_served(
    graph: InteractionGraph, ms: ModelSettings, ts: TrainSettings, item_text: torch.Tensor | None = None, progress: bool = True
) -> Fitted:
    """Train `SpectralSAGE` on ``graph`` at the width ``ms.dim``.

    With a validation split (``ts.val_fraction > 0``): the spectral filter (power, user/item degree exponents)
    is chosen on it (`select`, when ``ms.select_filter``), then the fine-tune runs with early stopping (when
    ``ts.served_epochs > 0``); with
    ``ts.refit`` the model is rebuilt on all interactions with the chosen settings and the best epoch count
    (validation interactions are real training data; leaving them out of the final SVD costs more than the
    early stopping gains).
    """
    t0 = time.perf_counter()
    seed_everything(ts.seed)
    device = pick_device(ts.device)
    r_all = graph.interactions()
    history: list[dict] = []
    if ts.val_fraction > 0 and (ms.select_filter or ts.served_epochs > 0):
        times = graph.interaction_times()
        r_fit, r_val = holdout(r_all, ts.val_fraction, ts.seed, times if ts.val_split == "latest" else None)
        meta_args = (graph.item_category, graph.item_brand, item_text, graph.num_items)
        if ms.select_filter:
            t_fit = _times_of(r_fit, times) if has_order(times) else None
            sig = signal_inputs(graph, r_fit, ms)
            chosen, model, tried = select(graph, r_fit, r_val, ms, ts, item_text, progress, t_fit, sig)
            ms = ms.model_copy(update=chosen)
            history.append({"epoch": 0, "selected": chosen, "tried": tried, "s": time.perf_counter() - t0})
        else:
            model = _start(graph, r_fit, ms, ts, item_text)
        if ts.served_epochs > 0:
            history += _finetune(model, r_fit, r_val, meta_args, ts, device, t0, progress)
        if ts.refit:
            best_epochs = max([h["epoch"] for h in history if h.get("best")], default=0)
            model = _start(graph, r_all, ms, ts, item_text)
            if best_epochs:
                history += _finetune(model, r_all, None, meta_args, ts, device, t0, progress, epochs=best_epochs)
    else:
        model = _start(graph, r_all, ms, ts, item_text)
    model.to("cpu")
    model.set_degrees(torch.from_numpy(np.asarray(r_all.sum(0)).ravel()).float())
    with torch.no_grad():
        meta = model.meta(graph.item_category, graph.item_brand, item_text, graph.num_items)
        model.fill_cold_degrees(meta)
        trained = model.item_known.clone()
        if item_text is not None and ms.cold_neighbours > 0:  # items with metadata only
            embed_cold_items(model, meta, item_text, ms.cold_neighbours, ms.cold_temperature, ms.cold_meta_blend)
        blend_warm(model, meta, ms.warm_meta_blend, trained)
    return Fitted(model, history, time.perf_counter() - t0, item_text)


def _start(
    graph, r, ms: ModelSettings, ts: TrainSettings, item_text, svd: tuple[torch.Tensor, torch.Tensor] | None = None
) -> SpectralSAGE:
    """Spectral start + metadata fit on the interactions ``r`` (``svd``: precomputed (sigma, v) of at least
    ``ms.dim`` components, truncated here)."""
    model = build_model(graph, ms, 0 if item_text is None else item_text.size(1))
    sigma, v = svd or spectral_items(r, ms.dim, ms.svd_oversample, ms.svd_power_iters, ts.seed)
    sigma, v = sigma[: ms.dim], v[:, : ms.dim]
    model.spectral_start(v, sigma, ms.filter_power)
    deg = torch.from_numpy(np.asarray(r.sum(0)).ravel()).float()
    model.set_degrees(deg)
    model.set_known(deg > 0)
    fit_metadata(model, graph, item_text, warm=deg.numpy() > 0)
    return model


@torch.no_grad()
def blend_warm(model: SpectralSAGE, meta: torch.Tensor | None, beta: float, trained: torch.Tensor) -> None:
    """Trained items' (``trained`` [I] bool) bases ``x = id + meta`` become ``(1 - beta) x + beta meta``
    (`ml.signals`): the ID row shrinks, so the checkpoint carries the blend to every path that serves it."""
    if meta is None or beta == 0:
        return
    model.item_emb[trained] *= 1.0 - beta


def signal_inputs(graph, r, ms: ModelSettings) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
    """(behaviour strength, latest times) on the pattern of ``r`` for the signals that are on, else None."""
    strength = _times_of(r, graph.interactions(binary=False)) if ms.behaviour_power else None
    times = _times_of(r, graph.interaction_times()) if ms.decay_half_life_days else None
    return strength, times


def _times_of(r: sp.csr_matrix, times: sp.csr_matrix) -> sp.csr_matrix:
    """``times`` on the pattern of ``r`` (a subset of its own pattern)."""
    r = sp.csr_matrix(r)
    rows = np.repeat(np.arange(r.shape[0]), np.diff(r.indptr))
    out = r.astype(np.float64, copy=True)
    out.data = np.asarray(sp.csr_matrix(times)[rows, r.indices]).ravel().astype(np.float64)
    return out


@torch.no_grad()
def _val_recall(
    model, r_fit, r_val, meta_args, ts: TrainSettings, users: np.ndarray, t_fit: sp.csr_matrix | None = None, sig=(None, None)
) -> float:
    x = model.item_base(model.meta(*meta_args))
    if t_fit is not None:
        r_fit_in = weigh_by_recency(r_fit, t_fit, model.recency_boost, model.recency_scale)
    else:
        r_fit_in = r_fit
    r_fit_in = weigh_by_signals(r_fit_in, *sig, model.behaviour_power, half_life_seconds(model.decay_half_life_days))
    u = model.users(csr_to_torch(r_fit_in), x)
    z = model.item_out(x)
    return rank_metrics(lambda b: u[b] @ z.T, r_fit, r_val, k=ts.eval_k, users=users)[f"recall@{ts.eval_k}"]


@torch.no_grad()
def select(
    graph,
    r_fit,
    r_val,
    ms: ModelSettings,
    ts: TrainSettings,
    item_text,
    progress: bool = True,
    t_fit: sp.csr_matrix | None = None,
    sig: tuple[sp.csr_matrix | None, sp.csr_matrix | None] = (None, None),
) -> tuple[dict, SpectralSAGE, list[dict]]:
    """Choose the filter power, the user and item exponents and, when ``t_fit`` (the fit interactions' times)
    orders any user's items, the recency weights, and where items have metadata the warm metadata blend
    (`blend_warm`), by validation Recall@K (the test protocol: every validation
    user, all items ranked, fit items masked); returns (chosen, its model on ``r_fit``, every setting tried with
    its recall).

    The width is not chosen here: it is the deployment's one setting (IG_EMBEDDING_DIM). Coordinate ascent from
    the settings' values, in the order power, user exponent, item exponent, repeated until a pass changes
    nothing or ``ms.select_max_settings`` settings were scored: the budget counts settings, so a slower machine
    picks the same configuration. One SVD and one model serve every setting (only the filter and exponents
    change).
    """
    dim = min(ms.dim, *r_fit.shape)
    svd = spectral_items(r_fit, dim, ms.svd_oversample, ms.svd_power_iters, ts.seed)
    meta_args = (graph.item_category, graph.item_brand, item_text, graph.num_items)
    users = np.flatnonzero(np.diff(r_val.indptr) > 0)
    model = _start(graph, r_fit, ms, ts, item_text, svd)

    trained_emb = model.item_emb.detach().clone()  # the warm blend scales the trained rows (`blend_warm`)

    def model_for(cfg: dict) -> SpectralSAGE:
        model.item_emb.copy_(trained_emb * (1.0 - cfg.get("warm_meta_blend", ms.warm_meta_blend)))
        model.filter[:dim] = svd[0][:dim].clamp(min=1e-6).pow(cfg["filter_power"])
        model.user_norm, model.item_norm = cfg["user_norm"], cfg["item_norm"]
        model.recency_boost = cfg.get("recency_boost", ms.recency_boost)
        model.recency_scale = cfg.get("recency_scale", ms.recency_scale)
        return model

    tried: list[dict] = []

    def score(cfg: dict) -> float:
        rec = _val_recall(model_for(cfg), r_fit, r_val, meta_args, ts, users, t_fit, sig)
        tried.append({**cfg, "val_recall": round(rec, 5)})
        if progress:
            tqdm.write(f"select {cfg}: val recall@{ts.eval_k} {rec:.4f}")
        return rec

    best = {"filter_power": ms.filter_power, "user_norm": ms.user_norm, "item_norm": ms.item_norm}
    grids = (("filter_power", ms.filter_grid), ("user_norm", ms.user_norm_grid), ("item_norm", ms.item_norm_grid))
    if t_fit is not None:  # only times that order a user's items make recency weights differ
        best.update(recency_boost=ms.recency_boost, recency_scale=ms.recency_scale)
        grids += (("recency_boost", ms.recency_boost_grid), ("recency_scale", ms.recency_scale_grid))
    if ms.warm_meta_blend_grid and model.meta(*meta_args) is not None:  # only items with metadata can blend
        best.update(warm_meta_blend=ms.warm_meta_blend)
        grids += (("warm_meta_blend", ms.warm_meta_blend_grid),)
    best_score = score(best)
    moved = True
    while moved:  # coordinate ascent: passes until one changes nothing (a setting is never scored twice)
        moved = False
        for key, grid in grids:
            for value in grid:
                cfg = {**best, key: value}
                if any(cfg == {k: t[k] for k in cfg} for t in tried) or len(tried) >= ms.select_max_settings:
                    continue
                s = score(cfg)
                if s > best_score:
                    best, best_score, moved = cfg, s, True
    chosen = model_for(best)
    chosen.item_emb.copy_(trained_emb)  # unblended: `fit_served` applies the chosen warm blend once, at the end
    return best, chosen, tried


def _finetune(model, r_fit, r_val, meta_args, ts: TrainSettings, device, t0, progress, epochs: int | None = None):
    """Denoising softmax fine-tune; early-stops on ``r_val`` or, without it, runs ``epochs`` epochs."""
    model.to(device)
    # the metadata inputs follow the model: CPU tensors come in, the forward runs on ``device`` (validation on the CPU)
    dev_meta = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in meta_args)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=ts.lr, weight_decay=ts.weight_decay)
    log_scale = torch.zeros((), device=device, requires_grad=True)
    opt.add_param_group({"params": [log_scale], "lr": 0.05})
    rng = np.random.default_rng(ts.seed)
    val_users = np.flatnonzero(np.diff(r_val.indptr) > 0) if r_val is not None else None
    users_all = np.flatnonzero(np.diff(r_fit.indptr) > 1)

    def validate() -> float:
        model.to("cpu")
        rec = _val_recall(model, r_fit, r_val, meta_args, ts, val_users) if r_val is not None else 0.0
        model.to(device)
        return rec

    # A fixed probe batch with a fixed mask: its loss is comparable across epochs (the history records it).
    probe = _rows(r_fit, users_all[: min(len(users_all), 1024)], 0.2, np.random.default_rng(ts.seed + 1))

    n_items = r_fit.shape[1]

    def batch_logits(inp, cand: np.ndarray | None = None):
        """Logits [B, C] over candidate items ``cand`` (sorted; None = all) and the (row, col) input items."""
        x = model.item_base(model.meta(*dev_meta))
        u = model.users(csr_to_torch(inp).to(device), x)
        ic = inp.tocoo()
        rows, cols = ic.row, ic.col
        on = lambda a: torch.from_numpy(a).long().to(device)  # noqa: E731
        if cand is None:
            return u @ model.item_out(x).T, (on(rows), on(cols))
        z = model.item_out(x[on(cand)], model.item_degree[on(cand)])
        pos = np.searchsorted(cand, cols)
        hit = (pos < len(cand)) & (cand[np.minimum(pos, len(cand) - 1)] == cols)
        return u @ z.T, (on(rows[hit]), on(pos[hit]))

    def sampled_step(inp, trow, tcol):
        """Sampled softmax: the batch's targets plus ``ts.negatives`` uniform items share one candidate set
        (uniform sampling needs no log-Q correction); the full softmax when that covers the catalogue."""
        if ts.negatives >= n_items:
            return loss_of(batch_logits(inp), trow, tcol, log_scale.exp())
        cand = np.unique(np.concatenate([tcol, rng.integers(0, n_items, ts.negatives)]))
        return loss_of(batch_logits(inp, cand), trow, np.searchsorted(cand, tcol), log_scale.exp())

    def loss_of(out, trow, tcol, scale):
        logits, seen = out
        # the user's input items leave the softmax (masked after scaling: inf * 0 would poison the gradient)
        logits = (logits * scale).index_put(seen, torch.tensor(-float("inf"), device=logits.device))
        logp = torch.log_softmax(logits, dim=1)
        return -logp[torch.from_numpy(trow).long().to(logp.device), torch.from_numpy(tcol).long().to(logp.device)].mean()

    with torch.no_grad():  # start the temperature where the probe loss is lowest (neither flat nor saturated)
        raw = batch_logits(probe[0])
        grid = np.geomspace(1e-2, 1e3, 31) / max(float(raw[0].std()), 1e-9)
        losses = [float(loss_of(raw, probe[1], probe[2], float(c))) for c in grid]
        log_scale.fill_(float(np.log(grid[int(np.argmin(losses))])))
        probe_loss = min(losses)
    best, bad, history = validate(), 0, []
    history.append({"epoch": 0, "val_recall": best, "probe_loss": probe_loss, "s": time.perf_counter() - t0, "refit": r_val is None})
    best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    for epoch in range(1, (ts.served_epochs if epochs is None else epochs) + 1):
        order = rng.permutation(users_all)
        bar = tqdm(range(0, len(order), ts.batch_size), desc=f"fine-tune {epoch}", disable=not progress, leave=False)
        total, n_steps = 0.0, 0
        for start in bar:
            batch = order[start : start + ts.batch_size]
            inp, trow, tcol = _rows(r_fit, batch, 0.2, rng)
            if len(trow) == 0:
                continue
            loss = sampled_step(inp, trow, tcol)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n_steps = total + float(loss.detach()), n_steps + 1
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        rec = validate()
        with torch.no_grad():
            probe_loss = float(loss_of(batch_logits(probe[0]), probe[1], probe[2], log_scale.exp()))
        history.append(
            {
                "epoch": epoch,
                "val_recall": rec,
                "loss": total / max(n_steps, 1),
                "probe_loss": probe_loss,
                "s": time.perf_counter() - t0,
                "refit": r_val is None,
            }
        )
        if progress:
            tqdm.write(f"epoch {epoch}: val recall@{ts.eval_k} {rec:.4f} (best {best:.4f}) probe loss {probe_loss:.4f}")
        if r_val is None or rec > best:
            best, bad = rec, 0
            history[-1]["best"] = True
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            bad += 1
        if bad >= ts.patience:
            break
    model.load_state_dict(best_state)
    return history
