"""The fold-in's calibration: how the bases of an item's shoppers' items relate to the item's own base.

A new item's fold-in base is a mean of its shoppers' other items' bases (`workers.live.LiveEncoder.new_items`).
Averaging many bases shrinks them, most along the dimensions where items differ most, so the mean is rescaled per
dimension by the least-squares fit, over the items the version was trained on, of each item's base on the same
kind of mean taken over its training shoppers: ``scale_k = <x_k, c_k> / <c_k, c_k>``. Without it a folded item
scores far below the items it resembles (amazon-hin: Recall@20 of held-out new items 0.002 without, 0.09 with;
docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ml.interaction_graph import csr_to_torch


@torch.no_grad()
def fit_fold_scale(r: sp.csr_matrix, x: torch.Tensor) -> torch.Tensor:
    """Scale [dim] from interactions ``r`` [U, I] (binary) and item bases ``x`` [I, dim]; ones without data."""
    r = sp.csr_matrix(r, dtype=np.float32)
    users, items = np.asarray(r.sum(1)).ravel(), np.asarray(r.sum(0)).ravel()
    if r.nnz == 0:
        return torch.ones(x.size(1))
    x = x.detach().cpu().float()
    per_user = csr_to_torch(sp.diags(1.0 / np.maximum(users, 1.0)) @ r) @ x  # mean base of each user's items
    c = csr_to_torch(sp.csr_matrix(sp.diags(1.0 / np.maximum(items, 1.0)) @ r.T)) @ per_user  # over each item's users
    trained = torch.from_numpy(items > 0)
    xt, ct = x[trained], c[trained]
    den = (ct * ct).sum(0)
    return torch.where(den > 0, (xt * ct).sum(0) / den.clamp(min=1e-30), torch.ones_like(den))
