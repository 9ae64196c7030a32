"""The K-layer encoders' inputs on real-data shapes: time-decayed weights under the caps, the weighted mean,
per-relation training pairs, items viewed together, and items past the ID table."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.nn import SAGEConv

from ml.dataset_files import category_tree, co_viewed
from ml.encoders.hetero_gnn import WeightedSAGEConv, decayed, typed_edges
from ml.interaction_graph import EdgeSet, InteractionGraph
from ml.settings import ModelSettings
from ml.train_hetero import build_hetero, encode, keep_pairs
from planted_graphs import cluster_text, planted

DAY = 86400


def _graph(edges: dict, n_users: int = 3, n_items: int = 3) -> InteractionGraph:
    return InteractionGraph(
        num_users=n_users,
        num_items=n_items,
        edges=edges,
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
    )


def test_decay_halves_per_half_life_and_leaves_untimed_edges():
    w = decayed(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([100 * DAY, 90 * DAY, 0]), 10 * DAY, 100 * DAY)
    assert torch.allclose(w, torch.tensor([2.0, 1.0, 2.0]))


def test_cap_keeps_the_latest_neighbours_when_weights_decay():
    # item 0 has three buyers of equal weight; with decay the two most recent survive a cap of 2, not the lowest ids
    g = _graph({("user", "bought", "item"): EdgeSet.build([0, 1, 2], [0, 0, 0], time=[10 * DAY, 30 * DAY, 20 * DAY])})
    plain, _ = typed_edges(g, cap=2)
    assert plain[("user", "bought", "item")][0].tolist() == [0, 1]
    timed, weight = typed_edges(g, cap=2, half_life_s=10 * DAY, time_ref=30 * DAY)
    assert sorted(timed[("user", "bought", "item")][0].tolist()) == [1, 2]
    assert torch.allclose(weight[("item", "rev_bought", "user")].sort().values, torch.tensor([0.25, 0.5, 1.0]))


def test_weighted_mean_equals_sage_mean_at_unit_weights_and_follows_weights():
    torch.manual_seed(0)
    ours, ref = WeightedSAGEConv(4, 3), SAGEConv((4, 4), 3, aggr="mean")
    ref.load_state_dict(ours.state_dict())  # same parameter names and shapes
    xs, xd = torch.randn(5, 4), torch.randn(2, 4)
    ei = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 1, 1, 1]])
    assert torch.allclose(ours((xs, xd), ei), ref((xs, xd), ei), atol=1e-6)
    # a neighbour with (almost) all the weight is (almost) the whole mean
    w = torch.tensor([1e-6, 1.0, 1.0, 1.0, 1.0])
    only = ours((xs, xd), ei[:, 1:2].clone(), torch.ones(1))
    assert torch.allclose(ours((xs, xd), ei, w)[0], only[0], atol=1e-4)


def test_keep_pairs_keeps_each_behaviour_with_its_weights_and_times():
    g = _graph(
        {
            ("user", "viewed", "item"): EdgeSet.build([0, 0, 1], [0, 1, 2], [1.0, 1.0, 1.0], [5, 6, 7]),
            ("user", "purchased", "item"): EdgeSet.build([0, 1], [1, 2], [3.0, 3.0], [8, 9]),
            ("item", "also_viewed", "item"): EdgeSet.build([0], [1]),
        }
    )
    kept = keep_pairs(g, sp.csr_matrix(([1.0], ([0], [1])), shape=(3, 3)))  # only the pair (user 0, item 1)
    v, p = kept.edges[("user", "viewed", "item")], kept.edges[("user", "purchased", "item")]
    assert v.index.tolist() == [[0], [1]] and v.time.tolist() == [6]
    assert p.index.tolist() == [[0], [1]] and p.weight.tolist() == [3.0] and p.time.tolist() == [8]
    assert kept.edges[("item", "also_viewed", "item")].num_edges == 1
    assert g.edges[("user", "viewed", "item")].num_edges == 3  # the input is unchanged


def test_items_sharing_a_view_node_are_linked_once_weighted_by_shared_nodes():
    iv = np.array([[0, 7], [1, 7], [0, 8], [1, 8], [2, 8], [3, 9], [9, 7]])  # item 9 is outside the catalogue
    es = co_viewed(iv, n_items=4)
    pairs = {(int(a), int(b)): float(w) for a, b, w in zip(es.index[0], es.index[1], es.weight)}
    assert pairs == {(0, 1): 2.0, (0, 2): 1.0, (1, 2): 1.0}
    g = _graph({("item", "also_viewed", "item"): es}, n_items=4)
    index, _ = typed_edges(g, cap=10)
    assert torch.equal(index[("item", "rev_also_viewed", "item")], index[("item", "also_viewed", "item")].flip(0))


def test_category_paths_link_each_level_to_its_parent():
    names = ["Office", "Office > Pens", "Office > Pens > Gel", "Toys > Cars"]  # "Toys" itself is not a category
    es = category_tree(names)
    assert sorted(zip(es.index[0].tolist(), es.index[1].tolist())) == [(1, 0), (2, 1)]


@pytest.mark.parametrize("conv", ["sage", "gcn", "gin"])
def test_an_item_past_the_id_table_starts_from_its_metadata(conv):
    split, cluster = planted(seed=3)
    g, text = split.train, cluster_text(cluster)
    model = build_hetero(g, ModelSettings(encoder=conv, hidden=8, hetero_item_ids="always"), text.size(1)).eval()
    assert model.item_id is not None and model.item_id.num_embeddings == g.num_items
    # one more item (a copy of item 0's metadata, never bought) and one user who bought it
    grown = InteractionGraph(
        num_users=g.num_users + 1,
        num_items=g.num_items + 1,
        edges={
            ("user", "clicked", "item"): EdgeSet.build(
                np.r_[g.edges[("user", "clicked", "item")].index[0].numpy(), g.num_users],
                np.r_[g.edges[("user", "clicked", "item")].index[1].numpy(), g.num_items],
            )
        },
        user_ids=g.user_ids + ["new"],
        item_ids=g.item_ids + ["new"],
        num_categories=g.num_categories,
        num_brands=g.num_brands,
        item_category=torch.cat([g.item_category, torch.tensor([[g.num_items], [int(cluster[0])]])], 1),
        item_brand=torch.cat([g.item_brand, g.item_brand[:1]]),
    )
    grown_text = torch.cat([text, text[:1]])
    with torch.no_grad():
        x = model.inputs(grown, grown_text)["item"]
        out = encode(model, grown, model.neighbour_cap, grown_text)
    meta_only = x[0] - model.item_id.weight[0]
    assert torch.allclose(x[-1], meta_only, atol=1e-6)
    assert out["user"].shape[0] == g.num_users + 1 and torch.isfinite(out["user"][-1]).all()


def test_recency_weighs_a_users_latest_items_most_and_only_on_the_edges_into_users():
    g = _graph(
        {
            ("user", "viewed", "item"): EdgeSet.build([0, 0, 1], [0, 1, 2], time=[5, 9, 3]),
            ("user", "bought", "item"): EdgeSet.build([0, 1], [2, 0], [3.0, 3.0], time=[9, 3]),
        }
    )
    index, weight = typed_edges(g, cap=10, recency_boost=9.0, recency_scale=1.0)
    back = weight[("item", "rev_viewed", "user")]
    # user 0: times 9 (item 1 viewed, item 2 bought) rank 0 -> 1.0; time 5 rank 1 -> (1 + 9/e) / 10
    assert torch.allclose(back, torch.tensor([(1 + 9 / np.e) / 10, 1.0, 1.0]))
    assert torch.allclose(weight[("item", "rev_bought", "user")], torch.tensor([3.0, 3.0]))  # both newest of their user
    assert torch.allclose(weight[("user", "viewed", "item")], torch.ones(3))  # items see their shoppers unweighted
    # equal times (gowalla has none) weigh every edge 1
    flat = _graph({("user", "viewed", "item"): EdgeSet.build([0, 0], [0, 1])})
    assert torch.allclose(typed_edges(flat, cap=10, recency_boost=9.0)[1][("item", "rev_viewed", "user")], torch.ones(2))


@pytest.mark.parametrize("conv", ["sage", "gcn", "gin"])
def test_relations_within_a_node_type_pass_messages(conv):
    """Item-item (also viewed) and category-category (the tree) relations, in both directions, move the vectors."""
    split, cluster = planted(seed=4)
    g, text = split.train, cluster_text(cluster)
    linked = dataclasses.replace(
        g,
        edges={
            **g.edges,
            ("item", "also_viewed", "item"): EdgeSet.build([0, 1], [1, 2], [2.0, 1.0]),
            ("category", "child_of", "category"): EdgeSet.build([1], [0]),
        },
    )
    ms = ModelSettings(encoder=conv, hidden=8)
    torch.manual_seed(0)
    model = build_hetero(linked, ms, text.size(1)).eval()
    assert ("item", "rev_also_viewed", "item") in model.edge_types and ("category", "rev_child_of", "category") in model.edge_types
    with torch.no_grad():
        with_links = encode(model, linked, model.neighbour_cap, text)["item"]
        without = encode(model, g, model.neighbour_cap, text)["item"]
    assert torch.isfinite(with_links).all()
    assert not torch.allclose(with_links[1], without[1])  # item 1 hears items 0 and 2
