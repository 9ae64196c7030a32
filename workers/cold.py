"""Vectors for items without interactions, from their metadata neighbours.

A new item's output vector is the similarity-weighted mean of the output vectors of its ``k`` nearest warm
items by text (sentence vectors, cosine), with softmax weights at temperature ``t``. It inherits both where
its neighbours sit in the interest space and how popular they are, which a linear map from features to
vectors does not capture (measured on amazon-office: see docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.models.spectral_sage import SpectralSAGE


def neighbour_vectors(text_new: Tensor, text_warm: Tensor, z_warm: Tensor, k: int = 30,
                      temperature: float = 0.1) -> Tensor:
    """[n, dim] vectors of new items from text [n, T], warm texts [W, T] and warm output vectors [W, dim]."""
    if text_new.numel() == 0 or text_warm.numel() == 0:
        return z_warm.new_zeros(text_new.size(0), z_warm.size(1))
    a = torch.nn.functional.normalize(text_new, dim=-1)
    b = torch.nn.functional.normalize(text_warm, dim=-1)
    sim = a @ b.T
    top = torch.topk(sim, min(k, sim.size(1)), dim=1)
    w = torch.softmax(top.values / temperature, dim=1)
    return (w.unsqueeze(-1) * z_warm[top.indices]).sum(1)


@torch.no_grad()
def embed_cold_items(model: SpectralSAGE, meta: Tensor | None, item_text: Tensor, k: int = 30,
                     temperature: float = 0.1) -> int:
    """Give every item without an ID row (``~model.item_known``) the neighbour vector as its base ``x`` (degree
    1, so ``z = x``) and mark it known; returns how many items were embedded."""
    cold = ~model.item_known
    n = int(cold.sum())
    if n == 0 or bool(cold.all()):
        return 0
    x = model.item_base(meta)
    z = model.item_out(x)
    z_new = neighbour_vectors(item_text[cold], item_text[~cold], z[~cold], k, temperature)
    model.item_emb[cold] = z_new - (meta[cold] if meta is not None else 0.0)
    model.item_degree[cold] = 1.0
    model.item_known[cold] = True
    return n
