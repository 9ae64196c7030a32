"""Vectors for items without interactions, from their metadata neighbours.

A new item's base vector is the similarity-weighted mean of the bases of its ``k`` nearest warm items by text
(sentence vectors, cosine), with softmax weights at temperature ``t``, and its degree their weighted geometric
mean. It inherits both where its neighbours sit in the interest space and how popular they are, which a linear
map from features to vectors does not capture (measured on amazon-office: see docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ml.encoders.spectral_sage import SpectralSAGE
from ml.signals import blend_cold


def cold_bases(
    text_new: Tensor, text_warm: Tensor, x_warm: Tensor, deg_warm: Tensor, k: int = 30, temperature: float = 0.1
) -> tuple[Tensor, Tensor]:
    """(bases ``x`` [n, dim], degrees [n]) of new items from text [n, T], warm texts [W, T], warm bases [W, dim]
    and warm degrees [W]: the softmax-weighted mean of the ``k`` nearest warm items' bases, and the weighted
    geometric mean of their degrees.

    The model then scales the new item like any other: ``d^b x`` as an output, ``d^-a x`` as what it sends to
    its users. (Mixing output vectors and sending that to users gave one click on a new item ~``d^(a+b)`` the
    weight of a click on a known one.)
    """
    n = text_new.size(0)
    if text_new.numel() == 0 or text_warm.numel() == 0:
        return x_warm.new_zeros(n, x_warm.size(1)), x_warm.new_ones(n)
    a = torch.nn.functional.normalize(text_new, dim=-1)
    b = torch.nn.functional.normalize(text_warm, dim=-1)
    top = torch.topk(a @ b.T, min(k, b.size(0)), dim=1)
    w = torch.softmax(top.values / temperature, dim=1)
    x = (w.unsqueeze(-1) * x_warm[top.indices]).sum(1)
    deg = (w * deg_warm.clamp(min=1.0)[top.indices].log()).sum(1).exp()
    return x, deg


@torch.no_grad()
def embed_cold_items(
    model: SpectralSAGE, meta: Tensor | None, item_text: Tensor, k: int = 30, temperature: float = 0.1, meta_blend: float = 0.0
) -> int:
    """Give every item without an ID row (``~model.item_known``) its neighbours' base (`cold_bases`), mixed with
    its own metadata vector by ``meta_blend`` (`ml.signals.blend_cold`: 0 = the neighbours alone, so category
    and brand count only through the neighbours), and their degree; mark it known; returns how many were embedded."""
    cold = ~model.item_known
    n = int(cold.sum())
    if n == 0 or bool(cold.all()):
        return 0
    x = model.item_base(meta)
    x_new, deg = cold_bases(item_text[cold], item_text[~cold], x[~cold], model.item_degree[~cold], k, temperature)
    x_new = blend_cold(x_new, meta[cold] if meta is not None else None, meta_blend)
    model.item_emb[cold] = x_new - (meta[cold] if meta is not None else 0.0)
    model.item_degree[cold] = deg
    model.item_known[cold] = True
    return n
