"""Spectral start: top singular vectors of the normalised interaction matrix.

R~ = D_u^-1/2 R D_i^-1/2 (users x items). Its top right singular vectors are the "ideal low-pass filter" of
GF-CF (Shen et al., 2021): projecting a user's items onto them already ranks items well, and they are the
item start of the served encoder. A randomized SVD (Halko et al.) with sparse CSR matmuls costs a few passes
over the edges, far less than training an embedding by gradient descent from random.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ml.interaction_graph import csr_to_torch


def normalised(r: sp.spmatrix) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """R~ = D_u^-1/2 R D_i^-1/2 and the user/item degrees (zero-degree rows/columns stay zero)."""
    r = sp.csr_matrix(r, dtype=np.float32)
    du = np.asarray(r.sum(1)).ravel()
    di = np.asarray(r.sum(0)).ravel()
    with np.errstate(divide="ignore"):
        su = np.where(du > 0, du**-0.5, 0.0)
        si = np.where(di > 0, di**-0.5, 0.0)
    return (sp.diags(su.astype(np.float32)) @ r @ sp.diags(si.astype(np.float32))).tocsr(), du, di


def randomized_svd(
    r: sp.spmatrix, k: int, oversample: int = 64, power_iters: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` singular values [k] and right singular vectors [n_cols, k] of a sparse matrix.

    ``k`` is clipped to min(shape). Power iterations sharpen the spectrum's head; each costs two sparse
    passes and two thin QRs.
    """
    k = int(min(k, *r.shape))
    a = csr_to_torch(r)
    at = csr_to_torch(sp.csr_matrix(r).T.tocsr())
    width = min(k + oversample, *r.shape)
    omega = torch.randn(r.shape[1], width, generator=torch.Generator().manual_seed(seed))
    q, _ = torch.linalg.qr(a @ omega)
    for _ in range(power_iters):
        z, _ = torch.linalg.qr(at @ q)
        q, _ = torch.linalg.qr(a @ z)
    b = (at @ q).T  # [width, n_cols]
    _, s, vt = torch.linalg.svd(b, full_matrices=False)
    return s[:k].contiguous(), vt[:k].T.contiguous()


def spectral_items(
    r: sp.spmatrix, k: int, oversample: int = 64, power_iters: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(singular values [k], item vectors [n_items, k]) of the normalised interaction matrix."""
    rn, _, _ = normalised(r)
    return randomized_svd(rn, k, oversample, power_iters, seed)
