"""Peers from the `implicit` library (what a practitioner would pick instead): ALS, BPR, and item-item
neighbours (cosine, BM25), as `ml.ranking_metrics.Scorer`s over the binary training matrix R [U, I]."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from implicit.als import AlternatingLeastSquares
from implicit.bpr import BayesianPersonalizedRanking
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, bm25_weight

from ml.interaction_graph import csr_to_torch
from ml.ranking_metrics import Scorer


def _factor_scorer(users: np.ndarray, items: np.ndarray) -> Scorer:
    u, i = torch.from_numpy(np.ascontiguousarray(users)), torch.from_numpy(np.ascontiguousarray(items))
    return lambda b: u[b] @ i.T


def _item_item_scorer(r: sp.csr_matrix, similarity: sp.csr_matrix) -> Scorer:
    sim_t = csr_to_torch(sp.csr_matrix(similarity, dtype=np.float32).T.tocsr())

    def score(b: torch.Tensor) -> torch.Tensor:
        rows = torch.from_numpy(r[b.numpy()].toarray())
        return (sim_t @ rows.T).T  # score_u = r_u S

    return score


def fit_implicit(name: str, r: sp.csr_matrix, threads: int, seed: int) -> tuple[Scorer, dict]:
    """(scorer, settings) of implicit's ``als``, ``bpr``, ``itemknn`` (cosine) or ``bm25``, at the settings of
    the library's examples for implicit feedback (larger neighbourhoods and factor counts than its defaults);
    not tuned on this data."""
    r = sp.csr_matrix(r, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit's advice about the BLAS thread pool, and CSR conversions
        if name == "als":
            # the library's own recipe for implicit feedback (its examples): BM25-weighted confidences
            cfg = {"factors": 128, "regularization": 0.05, "alpha": 1.0, "iterations": 15, "bm25_K1": 100, "bm25_B": 0.8}
            m = AlternatingLeastSquares(
                factors=cfg["factors"],
                regularization=cfg["regularization"],
                alpha=cfg["alpha"],
                iterations=cfg["iterations"],
                num_threads=threads,
                random_state=seed,
            )
            m.fit(bm25_weight(r, K1=cfg["bm25_K1"], B=cfg["bm25_B"]).tocsr(), show_progress=False)
            return _factor_scorer(m.user_factors, m.item_factors), cfg
        if name == "bpr":
            cfg = {"factors": 128, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100}
            m = BayesianPersonalizedRanking(**cfg, num_threads=threads, random_state=seed)
            m.fit(r, show_progress=False)
            return _factor_scorer(m.user_factors, m.item_factors), cfg
        if name in ("itemknn", "bm25"):
            cfg = {"K": 200} if name == "itemknn" else {"K": 200, "K1": 1.2, "B": 0.75}
            m = (CosineRecommender if name == "itemknn" else BM25Recommender)(**cfg, num_threads=threads)
            m.fit(r, show_progress=False)
            return _item_item_scorer(r, m.similarity), cfg
    raise ValueError(f"unknown implicit model {name!r}")
