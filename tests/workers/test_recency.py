"""Recency weights: a user's latest items weigh most, equal times alike, the same on the incremental path as on
the whole graph, and chosen on a validation split that holds each user's latest items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ml.embed import item_bases, served_vectors, user_vector
from ml.recency import has_order, recency_weights, weigh_by_recency
from ml.settings import ModelSettings, TrainSettings
from ml.train_served import fit_served
from planted_graphs import planted


def test_weights_follow_the_dense_rank_of_times():
    w = recency_weights(np.array([50, 90, 90, 10]), boost=10.0, scale=1.0)
    e = np.exp(-1.0)
    assert np.allclose(w, np.array([1 + 10 * e, 11, 11, 1 + 10 * e**2]) / 11)  # 90 and 90 share rank 0
    assert np.array_equal(recency_weights(np.array([3, 1]), 0.0, 1.0), [1, 1])  # off
    assert np.allclose(recency_weights(np.array([7, 7, 7]), 10.0, 1.0), [1, 1, 1])  # no order: the plain sum


def test_matrix_weights_equal_each_rows_own():
    rng = np.random.default_rng(0)
    r = sp.random(40, 30, density=0.3, format="csr", random_state=1)
    r.data[:] = 1
    t = r.copy()
    t.data = rng.integers(0, 4, r.nnz).astype(np.float64)
    w = weigh_by_recency(r, t, 30.0, 2.0)
    for u in range(r.shape[0]):
        a, b = r.indptr[u], r.indptr[u + 1]
        assert np.allclose(w.data[a:b], recency_weights(t.data[a:b], 30.0, 2.0))
    assert has_order(t) and not has_order(r)


def test_incremental_user_vector_equals_the_full_graphs_with_recency():
    split, _ = planted(seed=4)
    g = split.train
    rng = np.random.default_rng(2)
    coo = g.interactions().tocoo()
    timed = g.with_interactions(
        g.interactions(), times=sp.csr_matrix((rng.integers(0, 1000, coo.nnz), (coo.row, coo.col)), shape=coo.shape)
    )
    ms = ModelSettings(dim=16, select_filter=False, recency_boost=30.0, recency_scale=2.0)
    model = fit_served(timed, ms, TrainSettings(served_epochs=0, val_fraction=0.0), progress=False).model
    assert model.recency_boost == 30.0
    full, _ = served_vectors(model, timed)
    plain, _ = served_vectors(model, g.with_interactions(g.interactions()))  # every time 0: every item alike
    x = item_bases(model, timed)
    r, t = timed.interactions(), timed.interaction_times()
    for u in (0, 5, 17):
        items = r.indices[r.indptr[u] : r.indptr[u + 1]]
        times = t.data[t.indptr[u] : t.indptr[u + 1]]
        assert torch.allclose(user_vector(model, items, None, x, times), full[u], atol=1e-4)
        assert torch.allclose(user_vector(model, items, None, x), plain[u], atol=1e-4)
        assert not torch.allclose(full[u] / full[u].norm(), plain[u] / plain[u].norm(), atol=1e-3)


def test_selection_turns_recency_on_when_the_latest_items_predict_the_next():
    """Shoppers whose history drifts: their latest items come from the cluster their held-out items come from.
    Validation on each user's latest items then prefers weighing the latest most."""
    split, cluster = planted(seed=5)
    g = split.train
    r = g.interactions().tocsr()
    n_clusters = int(cluster.max()) + 1
    rows, cols, times = [], [], []
    rng = np.random.default_rng(3)
    for u in range(r.shape[0]):
        own = r.indices[r.indptr[u] : r.indptr[u + 1]]
        home = np.bincount(cluster[own], minlength=n_clusters).argmax()
        drift = (home + 1) % n_clusters
        other = rng.choice(np.flatnonzero(cluster == drift), size=4, replace=False)
        items = np.r_[own, other]  # the old interest first, then the new one, latest last
        rows += [u] * len(items)
        cols += items.tolist()
        times += list(range(len(items)))
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=r.shape)
    t = sp.csr_matrix((np.asarray(times, np.int64) + 1, (rows, cols)), shape=r.shape)
    m.sum_duplicates(), t.sum_duplicates()
    drifted = g.with_interactions(m, times=t)
    ms = ModelSettings(dim=16, select_filter=True, select_max_settings=30)
    fitted = fit_served(drifted, ms, TrainSettings(served_epochs=0, val_fraction=0.2), progress=False)
    chosen, tried = fitted.history[0]["selected"], fitted.history[0]["tried"]
    assert chosen["recency_boost"] > 0 and fitted.model.recency_boost == chosen["recency_boost"]
    off = max(x["val_recall"] for x in tried if x["recency_boost"] == 0)
    assert max(x["val_recall"] for x in tried) > off
