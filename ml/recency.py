"""Recency weights of a shopper's items: what they did last counts more in their vector.

An item's weight in a user's aggregation is ``(1 + boost * exp(-rank / scale)) / (1 + boost)``, where ``rank`` is
the dense rank of the item's latest interaction time among the user's own items (0 = the latest; equal times
share a rank): the latest items weigh 1, older ones down to ``1 / (1 + boost)``.
It depends on the user's edges only, so the incremental path (one user's rows) and the full path (the whole
graph) give the same weights, and a new event moves the user's answer at once. A graph without times (every
time equal) weighs every item 1: the plain sum. On amazon-office's leave-last-out split the
latest interactions predict the next one far better than the long-standing ones (docs/benchmarks.md).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import scipy.sparse as sp


def _weight(rank: np.ndarray, boost: float, scale: float) -> np.ndarray:
    return ((1.0 + boost * np.exp(-rank / scale)) / (1.0 + boost)).astype(np.float32)


_FEW = 64  # items of one user ranked in Python


@lru_cache(maxsize=64)
def _table(boost: float, scale: float) -> np.ndarray:
    """`_weight` of ranks 0.._FEW-1 (read-only): the same values, element by element, as `_weight` of any ranks."""
    table = _weight(np.arange(_FEW, dtype=np.int64), boost, scale)
    table.flags.writeable = False
    return table


def recency_weights(times: np.ndarray | Sequence[float], boost: float, scale: float) -> np.ndarray:
    """Weights [n] of one user's items from their latest interaction times [n] (an array or a list)."""
    if boost == 0 or len(times) == 0:
        return np.ones(len(times), np.float32)
    if len(times) > _FEW:
        t64 = np.asarray(times, np.float64)
        distinct = np.unique(t64)  # ascending
        return _weight(len(distinct) - 1 - np.searchsorted(distinct, t64), boost, scale)
    # A session's few items: ranks in Python and a cached table of the weights cost a third of np.unique and
    # `_weight`'s array operations (RecommendForSession embeds one on every call).
    t = times if isinstance(times, list) else np.asarray(times, np.float64).tolist()
    rank = {x: r for r, x in enumerate(sorted(set(t), reverse=True))}  # dense, newest = 0
    return _table(boost, scale)[[rank[x] for x in t]]


def weigh_by_recency(r: sp.csr_matrix, times: sp.csr_matrix, boost: float, scale: float) -> sp.csr_matrix:
    """``r`` with each row's entries multiplied by `recency_weights` of that row's ``times`` (same pattern)."""
    r = sp.csr_matrix(r, dtype=np.float32, copy=True)
    if boost == 0 or r.nnz == 0:
        return r
    t = sp.csr_matrix(times)
    if not (np.array_equal(t.indptr, r.indptr) and np.array_equal(t.indices, r.indices)):
        raise ValueError("weigh_by_recency: times must have the interactions' sparsity pattern")
    n = np.diff(r.indptr)
    rows = np.repeat(np.arange(r.shape[0]), n)
    td = t.data.astype(np.float64)
    # dense rank of each time within its row, newest = 0: sort by (row, time desc), count distinct steps
    order = np.lexsort((-td, rows))
    sr, st = rows[order], td[order]
    new_row = np.r_[True, sr[1:] != sr[:-1]]
    step = np.r_[False, (st[1:] != st[:-1]) & ~new_row[1:]]
    dense = np.cumsum(step)
    dense -= np.maximum.accumulate(np.where(new_row, dense, 0))
    rank = np.empty(r.nnz, np.float64)
    rank[order] = dense
    r.data *= _weight(rank, boost, scale)
    return r


def has_order(times: sp.csr_matrix) -> bool:
    """Whether any user's items carry different times (else recency weights change nothing)."""
    t = sp.csr_matrix(times)
    if t.nnz == 0:
        return False
    starts = t.indptr[:-1][np.diff(t.indptr) > 0]
    return bool((np.maximum.reduceat(t.data, starts) > np.minimum.reduceat(t.data, starts)).any())
