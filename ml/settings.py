"""Typed, frozen settings of the model package: the encoders' shape and how they are trained.

Read from the environment once in a program's ``main()`` (prefix ``IG_MODEL_``, ``IG_TRAIN_``) and passed down;
library code never reads ``os.environ``. The workers' own settings (files, queues) are `workers.settings`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The one width setting (IG_EMBEDDING_DIM) is the graph's: a constant of a module without any driver import.
from graphdb.event_types import ITEM_INTERACTIONS, REL_FOR_EVENT
from graphdb.settings import EMBEDDING_DIM

# The behaviours a typed weight can name: the positive item interactions (graphdb.schema).
_TYPED_EVENTS = tuple(k for k, rel in REL_FOR_EVENT.items() if rel in ITEM_INTERACTIONS)


class ModelSettings(BaseSettings):
    """Shape of the served encoder (`ml.encoders.spectral_sage.SpectralSAGE`) and the K-layer encoders."""

    model_config = SettingsConfigDict(env_prefix="IG_MODEL_", frozen=True, extra="ignore")

    # Served model: spectral item start + inductive user aggregation.
    # The width is the graph's one setting (IG_EMBEDDING_DIM, graphdb.settings): the vector indexes, the served
    # model and the FAISS index share it, so there is no separate IG_MODEL_DIM.
    dim: int = Field(
        default=EMBEDDING_DIM,
        ge=2,
        validation_alias=AliasChoices("IG_EMBEDDING_DIM", "dim"),
        description="embedding width (FAISS inner-product dimension)",
    )
    # Where the validation selection starts: the values it chose in the last full gowalla run.
    user_norm: float = Field(default=0.4, description="item weight d_j^-a inside a user's aggregation")
    item_norm: float = Field(default=0.4, description="item output scale d_i^b (popularity prior)")
    filter_power: float = Field(default=1.5, ge=0, description="spectral filter h = sigma^p at the start")
    # On: the filter power and the two exponents are chosen on a validation split (`ml.train_served.select`)
    # by coordinate ascent over the grids below, scoring at most ``select_max_settings`` settings: a budget in
    # settings, not seconds, so a slower machine picks the same configuration.
    select_filter: bool = Field(default=True, description="choose power/exponents on validation")
    select_max_settings: int = Field(default=16, ge=1)
    filter_grid: tuple[float, ...] = (1.0, 1.5, 2.0)
    user_norm_grid: tuple[float, ...] = (0.4, 0.5, 0.6)
    item_norm_grid: tuple[float, ...] = (0.4, 0.5, 0.6)
    # Recency weight of a user's items, (1 + boost * exp(-rank / scale)) / (1 + boost) (`ml.recency`): chosen on the
    # validation split too, when the graph's times order any user's items (gowalla's do not: then it stays off).
    recency_boost: float = Field(default=0.0, ge=0, description="extra weight of a user's latest items")
    recency_scale: float = Field(default=2.0, gt=0, description="recency ranks over which the boost decays")
    recency_boost_grid: tuple[float, ...] = (0.0, 10.0, 30.0, 100.0, 300.0)
    recency_scale_grid: tuple[float, ...] = (1.0, 2.0, 4.0)
    # Signals beside the interactions (`ml.signals`; docs/benchmarks.md "Signals" has the ablation):
    # behaviour strength ** power and a half-life decay of a user's items, on the user side; the share of the
    # metadata vector in trained items' bases (warm) and in new items' bases beside their text neighbours (cold).
    # The strength is each behaviour type's edge weight (a decayed count on the live graph) times its type's weight,
    # summed (event type -> weight, JSON; a type not named weighs 1; ignored at power 0). View 1 < click 2 < cart 4 <
    # purchase 8 at power 1: +22 % hit@10 over every pair alike on bench.synthetic_signals (synthetic: no dataset here
    # has types), neutral on amazon-hin's ratings and on one-strength data (docs/benchmarks.md "Typed behaviour weights").
    behaviour_power: float = Field(default=1.0, ge=0, description="user-side weight: behaviour strength ** power (0 = off)")
    behaviour_weights: dict[str, float] = Field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0},
        description="behaviour type weights in the strength",
    )
    # A shopper's newest ``search_cap`` searches each add ``search_weight`` times their query's text vector (as a new
    # item with its text only sends it) to the user vector, in the live and the full recompute (0 = off).
    search_weight: float = Field(default=0.0, ge=0)
    search_cap: int = Field(default=5, ge=1)
    # 730 days: the best of {30, 180, 365, 730, 1460} on amazon-hin (real timestamps; docs/benchmarks.md "Signals").
    decay_half_life_days: float = Field(default=730.0, ge=0, description="user-side time decay half-life (0 = off)")
    # The warm blend is chosen on the validation split from its grid (where items have metadata): it helps where the
    # metadata says much (amazon-office's titles: +9 % Recall@20 at 0.3) and hurts where it says little (amazon-hin's
    # categories and brands: -6 % at 0.3). An empty grid keeps the value.
    warm_meta_blend: float = Field(default=0.0, ge=0, le=1, description="metadata share of trained items' bases")
    warm_meta_blend_grid: tuple[float, ...] = (0.0, 0.3, 0.5)
    cold_meta_blend: float = Field(default=0.25, ge=0, le=1, description="metadata share of new items' bases")
    svd_oversample: int = Field(default=64, ge=0)
    svd_power_iters: int = Field(default=3, ge=0)
    # Item metadata inputs (learned embeddings + the sentence-transformers text vector).
    meta_dim: int = Field(default=64, ge=1)
    text_dim: int = 384
    # Items with metadata only: mean of the k nearest warm items by text (softmax at this temperature).
    cold_neighbours: int = Field(default=30, ge=0)
    cold_temperature: float = Field(default=0.1, gt=0)
    # K-layer heterogeneous encoders (GraphSAGE default, GCN, GIN).
    encoder: Literal["sage", "gcn", "gin"] = "sage"
    hidden: int = Field(default=64, ge=2)
    layers: int = Field(default=2, ge=1)
    aggr: Literal["mean", "sum", "max"] = "mean"
    neighbour_cap: int = Field(default=50, ge=1, description="top-N neighbours by weight (ties by id)")
    # K-layer encoders on real data (bench.quality rows hetero-*): edge weights decay with age (half-life in days,
    # 0 = off; edges without a time are not decayed), SAGE averages by weight, and items keep a learned ID row
    # beside their metadata ("auto": only when there is no metadata; items new since training get a zero row).
    hetero_half_life_days: float = Field(default=365.0, ge=0)
    hetero_weighted: bool = True
    hetero_item_ids: Literal["auto", "always", "never"] = "always"
    # A shopper's latest interactions weigh most in their aggregation (the served model's recency weight, fixed
    # here: the K-layer trainer selects nothing on validation).
    hetero_recency_boost: float = Field(default=30.0, ge=0)
    hetero_recency_scale: float = Field(default=2.0, gt=0)
    # GIN's neighbour aggregation (the defaults of this recipe stay the measured ones until bench.quality has run the
    # new ones, docs/benchmarks.md): "mean" (its unnormalised sum started at a loss of 135 against SAGE's 7.7 and
    # needed the most epochs; docs/benchmarks.md) or "add".
    hetero_gin_aggr: Literal["mean", "add"] = "add"
    # Where the items' ID rows start: "served" (the leading principal directions of the served model's item
    # vectors, fitted on the same graph first: the GNN refines what the served model knows) or "random".
    hetero_id_init: Literal["served", "random"] = "random"
    # Served model on the live graph: a user's vector reads at most this many of their items (top by
    # time-decayed weight, ties by item id), so one very active user costs a bounded recompute.
    user_cap: int = Field(default=500, ge=1)
    # Fold-in of items new since training (`workers.live.fold_sets`): a new item's vector follows what its first
    # ``fold_users`` shoppers had met before it (their latest ``fold_context`` known items), weighed against its
    # metadata as ``fold_prior`` shoppers. It stops changing at ``fold_users`` shoppers, which bounds the fan-out
    # to its users; 0 turns it off (metadata only until a retrain).
    fold_users: int = Field(default=100, ge=0)
    fold_context: int = Field(default=10, ge=1)
    fold_prior: float = Field(default=2.0, gt=0)
    # A folded item's popularity prior (the ``d^b`` of its served vector) from its first shoppers' rate rather than
    # their count (`ml.trend`): n shoppers within ``span`` weigh as ``n * horizon / (span + prior)`` would,
    # from ``fold_trend_min_shoppers`` on, at most the version's largest degree; horizon 0 turns it off. On by default
    # since the full-size strangers check (bench.item_trend: 0 of 100 shoppers of other interests got the item).
    fold_trend_horizon_days: float = Field(default=30.0, ge=0)
    fold_trend_prior_days: float = Field(default=1.0, gt=0)
    fold_trend_min_shoppers: int = Field(default=10, ge=1)
    # Graph-level interest embedding (GIN over a user's ego-graph, SimilarUsers): layers, and the contrastive
    # training that follows the served model's (`ml.train_ego`), bounded by steps and seconds; 0 steps: none.
    ego_hops: int = Field(default=2, ge=1)
    ego_steps: int = Field(default=1000, ge=0)
    ego_train_s: float = Field(default=60.0, gt=0)
    # Its objective (`ml.train_ego`): "halves" (two random halves of a user's items are near each other) or
    # "future" (a user without their latest item is near a user who has it: hit@10 0.086 against 0.111 on
    # amazon-office at width 256 in 60 s, docs/benchmarks.md, so not the default).
    ego_views: Literal["future", "halves"] = "halves"
    # Width of the ego vectors (the ``user_ego`` index's width follows it).
    ego_dim: int = Field(default=64, ge=2)
    # Width of the ego GIN's layers; 0: ``hidden`` (which the worker sets to the graph's embedding width, 1024).
    # 64: the width bench.similar_users measures (its in-process settings keep ``hidden`` at 64), and the worker
    # runs this GIN on every recomputed user's ego-graph, where 1024 wide was half of a round (issue 16).
    ego_hidden: int = Field(default=64, ge=0)

    @field_validator("behaviour_weights")
    @classmethod
    def _check_behaviour_weights(cls, v: dict[str, float]) -> dict[str, float]:
        for kind, w in v.items():
            if kind not in _TYPED_EVENTS:
                raise ValueError(f"behaviour_weights: unknown behaviour {kind!r}; expected one of {', '.join(_TYPED_EVENTS)}")
            if not (w > 0 and math.isfinite(w)):
                raise ValueError(f"behaviour_weights: {kind} weighs {w!r}; a weight is a positive number")
        if len({(REL_FOR_EVENT[k], w) for k, w in v.items()}) > len({REL_FOR_EVENT[k] for k in v}):
            raise ValueError("behaviour_weights: rate and review are one behaviour (RATED): give them one weight")
        return v

    def searches(self) -> dict[str, Any]:
        """The searches' share of the user vector as `workers.live.LiveEncoder` takes it."""
        return {"search_weight": self.search_weight, "search_cap": self.search_cap}

    def typed_weights(self) -> dict[str, float]:
        """``behaviour_weights`` by relationship type (what an edge row's ``kind`` holds); none when the strength does
        not count (``behaviour_power`` 0), so that version carries none."""
        if not self.behaviour_power:
            return {}
        return {REL_FOR_EVENT[k]: float(w) for k, w in sorted(self.behaviour_weights.items())}

    def fold(self) -> dict[str, Any]:
        """The fold-in settings as `workers.live.LiveEncoder` takes them."""
        return {
            "fold_users": self.fold_users,
            "fold_context": self.fold_context,
            "fold_prior": self.fold_prior,
            "fold_trend_horizon_days": self.fold_trend_horizon_days,
            "fold_trend_prior_days": self.fold_trend_prior_days,
            "fold_trend_min_shoppers": self.fold_trend_min_shoppers,
        }


class TrainSettings(BaseSettings):
    """How models are trained: loss, sampling, stopping, budget, device."""

    model_config = SettingsConfigDict(env_prefix="IG_TRAIN_", frozen=True, extra="ignore")

    loss: Literal["bpr", "softmax"] = "softmax"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=4096, ge=1)
    negatives: int = Field(default=4096, ge=1, description="sampled negatives per batch (shared by its users)")
    temperature: float = Field(default=0.1, gt=0)
    max_epochs: int = Field(default=50, ge=0)
    # Fine-tune epochs of the served model after its spectral fit. 0 by default: in the full gowalla run the
    # fine-tune lowered validation recall from its first epoch on, so the served and measured model is the fit.
    served_epochs: int = Field(default=0, ge=0)
    patience: int = Field(default=2, ge=1, description="validation checks without improvement before stopping")
    # ceil(20%) of each user's training interactions, as the gowalla test split takes of all of them
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    # Which of a user's interactions validate: "latest" (their most recent, by the edges' time; at random among
    # equal times, so a graph without times gets a random split) or "random".
    val_split: Literal["latest", "random"] = "latest"
    refit: bool = Field(default=True, description="rebuild on all interactions after model selection")
    budget_min: float = Field(default=20.0, gt=0, description="wall-clock training budget per model")
    seed: int = 2026
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default=2, ge=1)
    eval_k: int = Field(default=20, ge=1)
    # K-layer encoders (`ml.train_hetero`): which fit pairs supervise an epoch, "latest" (each user's newest:
    # predict what comes next from what came before; random 30 % in a graph without times) or "random" (30 %).
    hetero_supervision: Literal["latest", "random"] = "random"
