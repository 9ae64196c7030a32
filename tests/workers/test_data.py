import pytest
import torch

from graphdb.errors import InvalidInput
from ml.dataset_files import leave_last_out
from ml.interaction_graph import EdgeSet, InteractionGraph


def _graph(**kw):
    edges = {
        ("user", "clicked", "item"): EdgeSet.build([0, 0, 1], [0, 1, 1], time=[5, 7, 3]),
        ("user", "purchased", "item"): EdgeSet.build([0, 1], [1, 2], weight=[3.0, 3.0], time=[9, 1]),
    }
    args = dict(num_users=2, num_items=3, edges=edges, user_ids=["a", "b"], item_ids=["x", "y", "z"])
    args.update(kw)
    return InteractionGraph(**args)


def test_interactions_merge_relations():
    g = _graph()
    r = g.interactions(binary=False).toarray()
    assert r.tolist() == [[1.0, 4.0, 0.0], [0.0, 1.0, 3.0]]
    assert g.interactions().toarray().tolist() == [[1, 1, 0], [0, 1, 1]]


def test_out_of_range_index_is_rejected():
    with pytest.raises(InvalidInput):
        _graph(edges={("user", "clicked", "item"): EdgeSet.build([0], [3])})
    with pytest.raises(InvalidInput):
        _graph(user_ids=["a"])


def test_vocabulary_lookup():
    g = _graph()
    assert g.index_of("item", "z") == 2
    with pytest.raises(InvalidInput):
        g.index_of("user", "nobody")


def test_leave_last_out_takes_latest_per_user():
    g = _graph()
    split = leave_last_out(g, "t")
    # user a: latest is the purchase of y at t=9; user b: latest is the click on y at t=3
    assert split.test.toarray().tolist() == [[0, 1, 0], [0, 1, 0]]
    assert split.train.interactions().toarray().tolist() == [[1, 0, 0], [0, 0, 1]]
    assert torch.equal(split.train.item_brand, torch.full((3,), -1))


def test_interaction_times_keep_each_pairs_latest_and_survive_the_split():
    g = _graph()
    times = g.interaction_times()
    assert times.toarray().tolist() == [[5, 9, 0], [0, 3, 1]]  # (a, y): click at 7, purchase at 9
    r = g.interactions()
    assert (times.indptr == r.indptr).all() and (times.indices == r.indices).all()
    split = leave_last_out(g, "t")
    assert split.train.interaction_times().toarray().tolist() == [[5, 0, 0], [0, 0, 1]]
