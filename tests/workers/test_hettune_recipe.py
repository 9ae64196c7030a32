"""The training recipe of the K-layer encoders and of the ego-graph encoder on leave-last-out data: supervision by
each shopper's latest pair, ID rows started from served vectors, GIN's mean aggregation, and the "future" views."""

import numpy as np
import scipy.sparse as sp
import torch

from ml.encoders.hetero_gnn import HeteroGNN, typed_edges
from ml.interaction_graph import EdgeSet, InteractionGraph
from ml.settings import ModelSettings
from ml.train_ego import _future_views, _owners, fit_ego, latest_items
from ml.train_hetero import build_hetero, init_item_ids, supervision_split

REL = ("user", "bought", "item")


def test_latest_supervision_takes_each_users_newest_pair_and_leaves_single_pair_users_to_the_messages():
    users = np.array([0, 0, 0, 1, 1, 2])
    times = np.array([5, 9, 7, 3, 4, 8])
    sup, msg = supervision_split(users, times, np.random.default_rng(0))
    assert sorted(sup.tolist()) == [1, 4]  # user 0's time 9, user 1's time 4; user 2 has one pair only
    assert sorted(np.r_[sup, msg].tolist()) == list(range(6))


def test_random_supervision_without_times_takes_thirty_percent():
    users = np.repeat(np.arange(10), 10)
    sup, msg = supervision_split(users, None, np.random.default_rng(0))
    assert len(sup) == 30 and len(set(sup) | set(msg)) == 100


def test_id_rows_start_from_the_principal_directions_of_the_served_vectors():
    g = InteractionGraph(
        num_users=2,
        num_items=6,
        edges={REL: EdgeSet.build([0, 1], [0, 1])},
        user_ids=["u0", "u1"],
        item_ids=[f"i{i}" for i in range(6)],
    )
    model = build_hetero(g, ModelSettings(hidden=2, hetero_item_ids="always"), 0)
    rng = np.random.default_rng(0)
    # the served vectors vary along one direction (much) and another (little) in 5 dimensions
    a, b = rng.standard_normal(6), rng.standard_normal(6)
    served = torch.from_numpy(np.outer(a, [1, 0, 0, 0, 0]) * 10 + np.outer(b, [0, 1, 0, 0, 0])).float()
    init_item_ids(model, served)
    rows = model.item_id.weight.detach().numpy()
    corr = lambda x, y: abs(np.corrcoef(x, y)[0, 1])  # noqa: E731
    assert corr(rows[:, 0], a) > 0.99 and corr(rows[:, 1], b) > 0.99


def test_mean_gin_gives_an_item_with_many_equal_shoppers_what_one_gives():
    # item 0 bought by one user, item 1 by three users: every user starts from the same vector, so a mean sees the same
    g = InteractionGraph(
        num_users=4,
        num_items=2,
        edges={REL: EdgeSet.build([0, 1, 2, 3], [0, 1, 1, 1])},
        user_ids=[f"u{i}" for i in range(4)],
        item_ids=["i0", "i1"],
    )
    index, weight = typed_edges(g, 50)
    outs = {}
    for aggr in ("mean", "add"):
        torch.manual_seed(0)
        model = HeteroGNN(list(index), 0, 0, 0, hidden=4, num_layers=1, conv="gin", gin_aggr=aggr).eval()
        x = model.inputs(g)
        x["item"] = torch.zeros_like(x["item"])  # both items start equal: only their shoppers differ
        outs[aggr] = model(x, index, weight)["item"]
    assert torch.allclose(outs["mean"][0], outs["mean"][1], atol=1e-6)
    assert not torch.allclose(outs["add"][0], outs["add"][1], atol=1e-3)
    assert model.hparams()["gin_aggr"] == "add"


def test_latest_items_follow_the_times_and_are_none_without_an_order():
    r = sp.csr_matrix(np.array([[1, 1, 1], [0, 1, 1], [0, 0, 0]], dtype=np.float64))
    t = sp.csr_matrix(np.array([[3, 9, 5], [0, 2, 2], [0, 0, 0]], dtype=np.float64))
    t.data[:] = [3, 9, 5, 2, 2]
    assert latest_items(r, t).tolist() == [1, 2, -1]  # ties: the highest index
    flat = r.copy()
    assert latest_items(r, flat).tolist() == [-1, -1, -1]


def test_future_views_drop_the_latest_item_and_pair_the_user_with_someone_who_has_it():
    items = [np.array([0, 1, 2]), np.array([2, 3]), np.array([4]), np.array([1, 4])]
    latest = np.array([2, 3, 4, 1])
    past, peer = _future_views(np.array([0, 3]), items, latest, _owners(items, 5), np.random.default_rng(0))
    assert past[0].tolist() == [0, 1] and peer[0].tolist() == [2, 3]  # user 1 is the only other owner of item 2
    assert past[1].tolist() == [4] and peer[1].tolist() == [0, 1, 2]


def test_future_training_runs_only_on_users_whose_latest_item_someone_else_has():
    items = [np.array([0, 1]), np.array([1, 2]), np.array([0, 3]), np.array([2, 3])]
    latest = np.array([1, 2, 3, 0])  # item 0: user 2 has it (user 3 is the anchor only through its own latest)
    vecs = torch.randn(4, 6)
    _, info = fit_ego(
        items,
        vecs,
        torch.zeros(2, 0, dtype=torch.long),
        torch.full((4,), -1),
        hidden=4,
        batch=2,
        max_steps=3,
        views="future",
        latest=latest,
    )
    assert info["steps"] == 3 and np.isfinite(info["loss"])
