"""Training-free reference scorers for the offline evaluation (never served).

Each ``fit_*`` takes the binary training matrix R [U, I] (CSR) and returns a `Scorer`
(users [B] -> scores [B, I]) as `ml.ranking_metrics` expects.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ml.interaction_graph import csr_to_torch
from ml.ranking_metrics import Scorer
from ml.spectral import normalised, randomized_svd


def _dense_rows(r: sp.csr_matrix, users: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(r[users.numpy()].toarray())


def fit_popularity(r: sp.csr_matrix) -> Scorer:
    """Every user gets the items with the most training interactions."""
    pop = torch.from_numpy(np.asarray(r.sum(0)).ravel()).float()
    return lambda users: pop.expand(len(users), -1).clone()


def fit_random(num_items: int, seed: int = 0) -> Scorer:
    gen = torch.Generator().manual_seed(seed)
    return lambda users: torch.rand(len(users), num_items, generator=gen)


def fit_gfcf(r: sp.csr_matrix, k: int = 256, alpha: float = 0.3, seed: int = 0) -> Scorer:
    """GF-CF (Shen et al., CIKM 2021): linear filter R~^T R~ plus ``alpha`` x ideal low-pass of rank ``k``.

    score_u = r_u R~^T R~ + alpha * r_u D_i^-1/2 V_k V_k^T D_i^1/2 (the authors' setting for gowalla).
    """
    r = sp.csr_matrix(r, dtype=np.float32)
    rn, _, di = normalised(r)
    _, v = randomized_svd(rn, k, power_iters=4, seed=seed)
    rn_t, rn_tt = csr_to_torch(rn), csr_to_torch(rn.T.tocsr())
    with np.errstate(divide="ignore"):
        d_inv = torch.from_numpy(np.where(di > 0, di**-0.5, 0.0)).float()
    d = torch.from_numpy(np.sqrt(di)).float()
    v_out = d[:, None] * v

    def score(users: torch.Tensor) -> torch.Tensor:
        ru = _dense_rows(r, users)  # [B, I]
        lin = (rn_tt @ (rn_t @ ru.T)).T  # r_u R~^T R~ without the dense I x I matrix
        low = ((ru * d_inv) @ v) @ v_out.T
        return lin + alpha * low

    return score
