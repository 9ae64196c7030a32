"""The served encoder: an inductive two-tower GraphSAGE with a spectral start.

Items carry a base vector ``x_i`` = ID embedding (initialised from the top singular vectors of the
normalised interaction matrix, zero for items unseen at training time) + projections of their metadata
(category bag, brand, sentence-transformers text vector). Users carry no features: one round of
item -> user message passing with degree-normalised sum aggregation gives their vector,

    u = s_h * sum_{j in N(u)} w_uj * d_j^-a * x_j        (h: learned per-dimension spectral filter;
                                                           w_uj: the recency weight, `ml.recency`)
    z_i = |h|^1/2 * d_i^b * x_i                            (item output, b = popularity prior)
    score(u, i) = <u, z_i> = sum_k h_k (...)_k (...)_k     (FAISS inner product)

with ``s_h = sign(h) |h|^1/2``: the filter is split between the towers, so ``<z_j, z_i>`` is the score a user
with the one item ``j`` gives ``i`` (up to a factor of ``j``'s own): SimilarItems is the same model as
RecommendForUser, not a cosine of a different geometry.

so a new user with one click has a vector at once (the same the full graph gives: it only reads the user's
own edges), and a new item with only metadata has one from its features. With ``h = 1`` and spectral ``x``
this is exactly GF-CF's ideal low-pass filter; fine-tuning moves ``x`` and ``h`` with a sampled-softmax loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpectralSAGE(nn.Module):
    """Two-tower inductive encoder.

    Args:
        num_items: rows of the ID table (items known at training time).
        dim: embedding width ``k``.
        user_norm: exponent ``a`` of the item weight ``d_j^-a`` in the user aggregation.
        item_norm: exponent ``b`` of the item output scale ``d_i^b``.
        num_categories / num_brands: metadata vocabularies (0 = unused).
        text_dim: width of precomputed item text vectors (0 = unused).
        recency_boost / recency_scale: a user's items weigh ``(1 + boost * exp(-rank / scale)) / (1 + boost)`` by
            the recency rank of their latest interaction (`ml.recency`; boost 0 = every item alike).
        behaviour_power / decay_half_life_days / cold_meta_blend: the user-side behaviour strength and time decay
            and the new items' metadata share (`ml.signals`; 0 = off).
        behaviour_weights: each behaviour type's weight in the strength (relationship type -> weight; the graph it
            is trained on must carry them: `workers.live.training_graph`); kept so every path serves the same.

    Shapes: ``adj`` is a sparse [U, I] user-item matrix (weights w_uj); ``item_degree`` [I];
    ``item_category`` [2, C] (item, category) pairs; ``item_brand`` [I] (-1 = none); ``item_text`` [I, text_dim].
    """

    def __init__(
        self,
        num_items: int,
        dim: int,
        user_norm: float = 0.5,
        item_norm: float = 0.5,
        num_categories: int = 0,
        num_brands: int = 0,
        text_dim: int = 0,
        recency_boost: float = 0.0,
        recency_scale: float = 2.0,
        behaviour_power: float = 0.0,
        decay_half_life_days: float = 0.0,
        cold_meta_blend: float = 0.0,
        behaviour_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        self.num_items, self.dim = num_items, dim
        self.user_norm, self.item_norm = user_norm, item_norm
        self.recency_boost, self.recency_scale = recency_boost, recency_scale
        self.behaviour_power, self.decay_half_life_days = behaviour_power, decay_half_life_days
        self.cold_meta_blend = cold_meta_blend
        self.behaviour_weights = dict(behaviour_weights or {})  # relationship type -> weight in the strength
        self.item_emb = nn.Parameter(torch.empty(num_items, dim))
        self.filter = nn.Parameter(torch.ones(dim))
        self.category = nn.EmbeddingBag(num_categories, dim, mode="mean") if num_categories else None
        self.brand = nn.Embedding(num_brands, dim) if num_brands else None
        self.text = nn.Linear(text_dim, dim, bias=False) if text_dim else None
        # popularity prior of items without interactions, predicted from their metadata vector
        self.degree_head = nn.Linear(dim, 1) if (num_categories or num_brands or text_dim) else None
        self.register_buffer("item_degree", torch.ones(num_items))
        self.register_buffer("item_known", torch.ones(num_items, dtype=torch.bool))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.item_emb, std=self.dim**-0.5)
        nn.init.ones_(self.filter)
        for m in (self.category, self.brand):
            if m is not None:
                nn.init.normal_(m.weight, std=0.01)
        if self.text is not None:
            nn.init.normal_(self.text.weight, std=0.01)
        if self.degree_head is not None:
            nn.init.zeros_(self.degree_head.weight)
            nn.init.zeros_(self.degree_head.bias)

    # ------------------------------------------------------------------ set-up
    @torch.no_grad()
    def spectral_start(self, item_vectors: Tensor, singular_values: Tensor | None = None, filter_power: float = 0.0) -> None:
        """Initialise the ID table from spectral item vectors [I, <=dim] (missing columns stay zero) and the
        filter from singular values [<=dim] as ``h = sigma^filter_power`` (0 = GF-CF's ideal low-pass; larger
        powers weight the smoother components more, a soft low-pass).

        Orthonormal columns have rows of mean square norm k/I; they are rescaled to unit mean square norm so
        optimiser steps have the same relative size whatever the catalogue size (ranking is scale-free).
        """
        self.item_emb.zero_()
        k = item_vectors.size(1)
        self.item_emb[:, :k] = item_vectors.to(self.item_emb) * (self.num_items / max(k, 1)) ** 0.5
        self.filter.fill_(1.0)
        if singular_values is not None:
            self.filter[:k] = singular_values.to(self.filter).clamp(min=1e-6).pow(filter_power)

    @torch.no_grad()
    def set_degrees(self, item_degree: Tensor) -> None:
        """Item degrees [I] from the training graph; unseen items count as degree 1."""
        self.item_degree.copy_(item_degree.clamp(min=1.0).to(self.item_degree))

    @torch.no_grad()
    def set_known(self, known: Tensor) -> None:
        """Items [I] bool whose ID row is used; the others (cold items) are represented by metadata only."""
        self.item_known.copy_(known.to(self.item_known))
        self.item_emb[~self.item_known] = 0.0

    def predicted_degree(self, meta: Tensor) -> Tensor:
        """Degree [n] a metadata-only item is expected to reach, ``exp(head(meta))`` (>= 1)."""
        if self.degree_head is None:
            return meta.new_ones(meta.size(0))
        return self.degree_head(meta).squeeze(-1).clamp(max=20.0).exp().clamp(min=1.0)

    @torch.no_grad()
    def fill_cold_degrees(self, meta: Tensor | None) -> None:
        """Give items without an ID row their predicted degree (their popularity prior in ``item_out``)."""
        if meta is not None and self.degree_head is not None:
            cold = ~self.item_known
            self.item_degree[cold] = self.predicted_degree(meta[cold])

    # ------------------------------------------------------------------ item tower
    def meta(self, item_category: Tensor | None, item_brand: Tensor | None, item_text: Tensor | None, n: int) -> Tensor | None:
        """Metadata part of ``x`` for ``n`` items [n, dim], or None when the model has no metadata inputs."""
        out = None
        if self.category is not None and item_category is not None and item_category.numel():
            order = torch.argsort(item_category[0], stable=True)
            items, cats = item_category[0, order], item_category[1, order]
            offsets = torch.searchsorted(items, torch.arange(n, device=items.device))
            bag = self.category(cats, offsets)  # empty bags -> zeros
            out = bag
        if self.brand is not None and item_brand is not None:
            b = self.brand(item_brand.clamp(min=0)) * (item_brand >= 0).unsqueeze(-1)
            out = b if out is None else out + b
        if self.text is not None and item_text is not None:
            t = self.text(item_text)
            out = t if out is None else out + t
        return out

    def item_base(self, meta: Tensor | None = None, known: Tensor | None = None) -> Tensor:
        """``x`` [I, dim]: ID embedding (rows of unknown items masked by ``known`` [I] bool, default the items
        seen at training time) + metadata."""
        known = self.item_known if known is None else known
        x = self.item_emb * known.unsqueeze(-1).to(self.item_emb)
        return x if meta is None else x + meta

    def item_out(self, x: Tensor, degree: Tensor | None = None) -> Tensor:
        """Item output vectors ``z`` [I, dim] from bases ``x`` and degrees (default: training degrees)."""
        d = self.item_degree if degree is None else degree.clamp(min=1.0)
        return x * d.pow(self.item_norm).unsqueeze(-1) * self.filter.abs().sqrt()

    # ------------------------------------------------------------------ user tower
    def item_in(self, x: Tensor, degree: Tensor | None = None) -> Tensor:
        """What an item sends to its users: ``d_j^-a x_j`` [I, dim]."""
        d = self.item_degree if degree is None else degree.clamp(min=1.0)
        return x * d.pow(-self.user_norm).unsqueeze(-1)

    def users(self, adj: Tensor, x: Tensor) -> Tensor:
        """User vectors [U, dim] from a sparse user-item matrix ``adj`` [U, I] and item bases ``x``."""
        return (adj @ self.item_in(x)) * self.user_scale()

    def user_scale(self) -> Tensor:
        """The user tower's half of the filter [dim], ``sign(h) |h|^1/2`` (the item tower holds ``|h|^1/2``)."""
        return self.filter.sign() * self.filter.abs().sqrt()

    def forward(self, adj: Tensor, meta: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(user vectors [U, dim], item vectors [I, dim]) for the graph ``adj``."""
        x = self.item_base(meta)
        return self.users(adj, x), self.item_out(x)

    def hparams(self) -> dict:
        return {
            "num_items": self.num_items,
            "dim": self.dim,
            "user_norm": self.user_norm,
            "item_norm": self.item_norm,
            "num_categories": self.category.num_embeddings if self.category is not None else 0,
            "num_brands": self.brand.num_embeddings if self.brand is not None else 0,
            "text_dim": self.text.in_features if self.text is not None else 0,
            "recency_boost": self.recency_boost,
            "recency_scale": self.recency_scale,
            "behaviour_power": self.behaviour_power,
            "decay_half_life_days": self.decay_half_life_days,
            "cold_meta_blend": self.cold_meta_blend,
            "behaviour_weights": dict(self.behaviour_weights),
        }
