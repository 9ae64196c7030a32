"""LightGCN (He et al., SIGIR 2020): the transductive graph reference of the evaluation (never served).

Same model as ``torch_geometric.nn.models.LightGCN`` (layer-mean of K parameter-free propagations over the
symmetric-normalised user-item graph), but propagating with one sparse CSR matmul per layer instead of
message passing over an edge list, which is several times faster on CPU.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from ml.interaction_graph import csr_to_torch


class _SymmetricSpMM(torch.autograd.Function):
    """``adj @ x`` for a constant symmetric sparse ``adj``: the gradient is ``adj @ grad`` again.

    torch's own backward transposes the CSR matrix on every call, which more than doubles a training step.
    """

    @staticmethod
    def forward(ctx, adj: Tensor, x: Tensor) -> Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, ctx.adj @ grad.contiguous()


def normalised_bipartite(r: sp.spmatrix) -> Tensor:
    """D^-1/2 A D^-1/2 of A = [[0, R], [R^T, 0]] as torch CSR [(U+I), (U+I)]."""
    r = sp.csr_matrix(r, dtype=np.float32)
    a = sp.bmat([[None, r], [r.T, None]]).tocsr()
    deg = np.asarray(a.sum(1)).ravel()
    with np.errstate(divide="ignore"):
        s = np.where(deg > 0, deg**-0.5, 0.0).astype(np.float32)
    return csr_to_torch(sp.diags(s) @ a @ sp.diags(s))


class LightGCN(nn.Module):
    """Args: num_users, num_items, dim (width), num_layers (K).

    ``forward(adj)`` with ``adj`` from `normalised_bipartite` returns (users [U, dim], items [I, dim]).
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 64, num_layers: int = 3):
        super().__init__()
        self.num_users, self.num_items, self.num_layers = num_users, num_items, num_layers
        self.emb = nn.Embedding(num_users + num_items, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.emb.weight, std=0.1)

    def forward(self, adj: Tensor) -> tuple[Tensor, Tensor]:
        x = self.emb.weight
        out = x / (self.num_layers + 1)
        for _ in range(self.num_layers):
            x = _SymmetricSpMM.apply(adj, x)
            out = out + x / (self.num_layers + 1)
        return out[: self.num_users], out[self.num_users :]

    def ego(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        return self.emb(users), self.emb(items + self.num_users)
