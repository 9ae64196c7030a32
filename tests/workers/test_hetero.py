"""K-layer heterogeneous encoders: bidirectional, capped, inductive, incremental == full."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from planted_graphs import cluster_text, planted
from workers.models.hetero_gnn import typed_edges
from workers.settings import ModelSettings, TrainSettings
from workers.train_hetero import build_hetero, encode, fit_hetero


def test_every_relation_has_its_reverse(planted_split):
    split, _ = planted_split
    index, _ = typed_edges(split.train, cap=50)
    assert ("user", "clicked", "item") in index and ("item", "rev_clicked", "user") in index
    assert ("item", "in_category", "category") in index and ("category", "rev_in_category", "item") in index
    assert torch.equal(index[("item", "rev_clicked", "user")], index[("user", "clicked", "item")].flip(0))


@pytest.mark.parametrize("conv", ["sage", "gcn", "gin"])
def test_encoders_train_and_rank_better_than_random(conv):
    split, cluster = planted(seed=5)
    text = cluster_text(cluster)
    ms = ModelSettings(encoder=conv, hidden=16, layers=2)
    ts = TrainSettings(loss="bpr", lr=1e-2, batch_size=32, max_epochs=12, patience=12, val_fraction=0.15)
    fitted = fit_hetero(split.train, ms, ts, item_text=text, progress=False)
    losses = [h["loss"] for h in fitted.history]
    assert min(losses[-3:]) < losses[0] * 0.9
    assert max(h["val"] for h in fitted.history) > 0.3  # random recall@20 on 60 items is ~ 20/60 * share


def test_new_user_incremental_equals_full_graph():
    split, cluster = planted(seed=6)
    g, text = split.train, cluster_text(cluster)
    ms = ModelSettings(hidden=16, layers=2, neighbour_cap=4)
    model = build_hetero(g, ms, text.size(1))
    model.eval()
    r = g.interactions()
    new_r = sp.vstack([r, sp.csr_matrix(([1.0], ([0], [7])), shape=(1, g.num_items))]).tocsr()
    full_graph = g.with_interactions(new_r, "clicked")
    with torch.no_grad():
        full = encode(model, full_graph, ms.neighbour_cap, text)["user"][-1]
        # incremental: a subgraph with only the users of the new user's item (and their edges); the other
        # users' edges are left out, as a recompute of the affected set would leave them out
        item_users = new_r[:, 7].nonzero()[0]
        keep = sp.diags(np.isin(np.arange(new_r.shape[0]), item_users).astype(np.float32))
        sub_graph = g.with_interactions((keep @ new_r).tocsr(), "clicked")
        assert sub_graph.interactions().nnz < full_graph.interactions().nnz
        inc = encode(model, sub_graph, ms.neighbour_cap, text)["user"][-1]
    assert torch.allclose(inc, full, atol=1e-4)
    assert inc.abs().sum() > 0
