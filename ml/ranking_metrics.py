"""Top-K ranking metrics with the standard all-item protocol (LightGCN / NGCF evaluation).

For every test user: score all items, mask the user's training items, take the top K, and compute
Recall@K = hits / |test items| and NDCG@K with binary gains (IDCG over min(|test|, K) positions). Figures
are averaged over users with at least one test item.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

Scorer = Callable[[torch.Tensor], torch.Tensor]
"""users [B] int64 -> scores [B, num_items] float (higher is better)."""


def rank_metrics(
    scorer: Scorer, train: sp.csr_matrix, test: sp.csr_matrix, k: int = 20, batch_size: int = 2048, users: np.ndarray | None = None
) -> dict[str, float]:
    """Recall@k and NDCG@k of ``scorer`` over the users with test items (or ``users``)."""
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    if users is None:
        users = np.flatnonzero(np.diff(test.indptr) > 0)
    recall, ndcg = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            scores = scorer(torch.from_numpy(batch).long()).float()
            tr = train[batch].tocoo()
            scores[torch.from_numpy(tr.row).long(), torch.from_numpy(tr.col).long()] = -float("inf")
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.numpy()
            top = np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)  # fewer items than k
            r, n = _sums(top, test[batch], k)
            recall, ndcg = recall + r, ndcg + n
    n = max(len(users), 1)
    return {f"recall@{k}": recall / n, f"ndcg@{k}": ndcg / n}


def _sums(top: np.ndarray, test: sp.csr_matrix, k: int) -> tuple[float, float]:
    """Summed recall and NDCG of ranked lists ``top`` [B, k] (item indices, -1 = no item) against the test rows
    [B, I] (every row with at least one test item)."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    cols = top.ravel()
    ok = cols >= 0
    hits = np.zeros(top.shape, bool)
    hits.ravel()[ok] = np.asarray(test[rows[ok], cols[ok]]).ravel() > 0
    n_test = np.diff(test.indptr)
    idcg = np.cumsum(discount)[np.minimum(n_test, k) - 1]
    return float((hits.sum(1) / n_test).sum()), float(((hits * discount).sum(1) / idcg).sum())


def top_k_metrics(top: np.ndarray, test: sp.csr_matrix, k: int = 20) -> dict[str, float]:
    """Recall@k / NDCG@k of ranked lists ``top`` [U, k] (item indices, -1 = fewer than k answers) for the test
    rows [U, I], every one with at least one test item: the same figures `rank_metrics` gives for a scorer."""
    recall, ndcg = _sums(np.asarray(top, np.int64), sp.csr_matrix(test), k)
    n = max(top.shape[0], 1)
    return {f"recall@{k}": recall / n, f"ndcg@{k}": ndcg / n}


def item_recall(
    scorer: Scorer, test: sp.csr_matrix, candidate_items: np.ndarray, k: int = 20, batch_size: int = 2048
) -> dict[str, float]:
    """Recall@k / NDCG@k when only ``candidate_items`` are ranked (cold-start protocol)."""
    test = sp.csr_matrix(test)[:, candidate_items]
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    cand = torch.from_numpy(np.asarray(candidate_items)).long()

    def sub(u: torch.Tensor) -> torch.Tensor:
        return scorer(u)[:, cand]

    empty = sp.csr_matrix(test.shape, dtype=np.float32)
    return rank_metrics(sub, empty, test, k=k, batch_size=batch_size, users=users)
