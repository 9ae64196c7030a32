"""BPR training of the transductive references (MF, LightGCN) under a wall-clock budget."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from bench.baselines.lightgcn import LightGCN, normalised_bipartite
from bench.baselines.mf import MF
from ml.losses import bpr_loss
from ml.runtime import pick_device, seed_everything
from ml.sampling import NegativeSampler, edge_batches
from ml.settings import TrainSettings


def fit_bpr(
    model: MF | LightGCN,
    r: sp.csr_matrix,
    ts: TrainSettings,
    budget_s: float,
    reg: float = 1e-4,
    progress: bool = True,
    on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Train until ``budget_s`` seconds or ``ts.max_epochs``; returns (users, items, info).

    ``on_epoch(epoch, users, items)`` sees the vectors after every epoch (validation curves); its time counts.
    """
    t0 = time.perf_counter()
    seed_everything(ts.seed)
    device = pick_device(ts.device)
    rng = np.random.default_rng(ts.seed)
    model.to(device)
    adj = normalised_bipartite(r).to(device) if isinstance(model, LightGCN) else None
    opt = torch.optim.Adam(model.parameters(), lr=ts.lr)
    sampler = NegativeSampler(r, rng)
    epochs, losses = 0, []
    while epochs < ts.max_epochs and time.perf_counter() - t0 < budget_s:
        total, n = 0.0, 0
        n_batches = -(-r.nnz // ts.batch_size)
        for users, pos in tqdm(
            edge_batches(r, ts.batch_size, rng),
            total=n_batches,
            leave=False,
            desc=f"{type(model).__name__} epoch {epochs + 1}",
            disable=not progress,
        ):
            if time.perf_counter() - t0 >= budget_s:
                break
            neg = sampler.sample(users)
            u_t, p_t, n_t = (torch.from_numpy(a).to(device) for a in (users, pos, neg))
            all_u, all_i = model(adj) if adj is not None else model()
            loss = bpr_loss(all_u[u_t], all_i[p_t], all_i[n_t])
            eu, ep = model.ego(u_t, p_t)
            _, en = model.ego(u_t, n_t)
            loss = loss + reg * 0.5 * (eu.pow(2).sum() + ep.pow(2).sum() + en.pow(2).sum()) / len(users)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        epochs += 1
        losses.append(total / max(n, 1))
        if on_epoch is not None:
            on_epoch(epochs, *_vectors(model, adj))
    users, items = _vectors(model, adj)
    return users, items, {"epochs": epochs, "loss": losses, "train_s": time.perf_counter() - t0}


@torch.no_grad()
def _vectors(model: MF | LightGCN, adj: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    users, items = model(adj) if adj is not None else model()
    return users.cpu(), items.cpu()
