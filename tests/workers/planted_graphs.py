"""Tiny hand-made graphs for the worker tests: users and items in planted interest clusters."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ml.dataset_files import Split
from ml.interaction_graph import EdgeSet, InteractionGraph


def planted(
    n_clusters: int = 4,
    users_per: int = 25,
    items_per: int = 15,
    train_per_user: int = 6,
    test_per_user: int = 2,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[Split, np.ndarray]:
    """Users and items in planted interest clusters: a user's items (train and test) come from its own cluster
    (with a little noise), items of a cluster share a category and carry "cluster k" text. Returns the split
    and each item's cluster."""
    rng = np.random.default_rng(seed)
    n_users, n_items = n_clusters * users_per, n_clusters * items_per
    item_cluster = np.repeat(np.arange(n_clusters), items_per)
    # within a cluster, items have skewed popularity so popularity is a real (but weaker) baseline
    rows, cols, trows, tcols = [], [], [], []
    for u in range(n_users):
        c = u // users_per
        own = np.flatnonzero(item_cluster == c)
        p = 1.0 / np.arange(1, len(own) + 1) ** 0.5
        chosen = rng.choice(own, size=train_per_user + test_per_user, replace=False, p=p / p.sum())
        for k, it in enumerate(chosen):
            if rng.random() < noise:
                it = int(rng.integers(n_items))
            (rows if k < train_per_user else trows).append(u)
            (cols if k < train_per_user else tcols).append(int(it))
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    train.data[:] = 1
    test = sp.csr_matrix((np.ones(len(trows), np.float32), (trows, tcols)), shape=(n_users, n_items))
    test = (test - test.multiply(train > 0)).tocsr()
    test.eliminate_zeros()
    test.data[:] = 1
    coo = train.tocoo()
    times = np.arange(coo.nnz)
    graph = InteractionGraph(
        num_users=n_users,
        num_items=n_items,
        edges={("user", "clicked", "item"): EdgeSet.build(coo.row, coo.col, time=times)},
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        num_categories=n_clusters,
        num_brands=3,
        item_category=torch.from_numpy(np.stack([np.arange(n_items), item_cluster])),
        item_brand=torch.from_numpy(rng.integers(-1, 3, size=n_items)),
        item_text=[f"cluster {c} product {i}" for i, c in enumerate(item_cluster)],
        category_names=[f"c{k}" for k in range(n_clusters)],
        brand_names=["a", "b", "c"],
    )
    return Split(graph, test, "planted"), item_cluster


def cluster_text(item_cluster: np.ndarray, dim: int = 16, seed: int = 1) -> torch.Tensor:
    """Stand-in text vectors: one direction per cluster plus noise (the real encoder is tested separately)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(int(item_cluster.max()) + 1, dim, generator=g)
    x = centers[torch.from_numpy(item_cluster)] + 0.3 * torch.randn(len(item_cluster), dim, generator=g)
    return torch.nn.functional.normalize(x, dim=-1)
