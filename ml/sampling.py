"""Deterministic neighbour caps and negative sampling.

The cap keeps, for every target node, its top-N incoming edges by weight with ties broken by the source id
(ascending), then by edge position. It depends only on the node's own edge list, so recomputing an affected
subgraph keeps exactly the edges a full recompute keeps (invariant 3: incremental equals full).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def cap_neighbours(index: Tensor, weight: Tensor, cap: int, by: int = 1, src_ids: Tensor | None = None) -> Tensor:
    """Boolean mask [E] of the edges kept when every node in row ``by`` of ``index`` [2, E] keeps at most
    ``cap`` edges: highest ``weight`` first, ties by the other end's id (``src_ids`` maps the other end's
    index to a global sort key; default the index itself)."""
    e = index.size(1)
    if e == 0:
        return torch.zeros(0, dtype=torch.bool)
    node = index[by]
    other = index[1 - by] if src_ids is None else src_ids[index[1 - by]]
    # lexsort: node asc, weight desc, other asc (numpy lexsort sorts by the last key first)
    order = np.lexsort((other.numpy(), -weight.double().numpy(), node.numpy()))
    sorted_node = node.numpy()[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_node)) + 1]
    rank = np.arange(e) - np.repeat(starts, np.diff(np.r_[starts, e]))
    keep = np.zeros(e, dtype=bool)
    keep[order[rank < cap]] = True
    return torch.from_numpy(keep)


class NegativeSampler:
    """Uniform item negatives that are not training positives of the same user (rejection, vectorised)."""

    def __init__(self, r: sp.csr_matrix, generator: np.random.Generator):
        r = sp.csr_matrix(r)
        self.num_items = r.shape[1]
        rows = np.repeat(np.arange(r.shape[0], dtype=np.int64), np.diff(r.indptr))
        self.keys = np.sort(rows * self.num_items + r.indices.astype(np.int64))
        self.rng = generator

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        k = users.astype(np.int64) * self.num_items + items
        pos = np.searchsorted(self.keys, k)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == k

    def sample(self, users: np.ndarray, tries: int = 5) -> np.ndarray:
        items = self.rng.integers(0, self.num_items, size=len(users))
        for _ in range(tries):
            bad = self.is_positive(users, items)
            if not bad.any():
                break
            items[bad] = self.rng.integers(0, self.num_items, size=int(bad.sum()))
        return items


def edge_batches(r: sp.csr_matrix, batch_size: int, rng: np.random.Generator):
    """Yield (users, positive items) batches over every training edge once, shuffled."""
    r = sp.csr_matrix(r)
    rows = np.repeat(np.arange(r.shape[0], dtype=np.int64), np.diff(r.indptr))
    cols = r.indices.astype(np.int64)
    perm = rng.permutation(len(rows))
    for s in range(0, len(perm), batch_size):
        p = perm[s : s + batch_size]
        yield rows[p], cols[p]
