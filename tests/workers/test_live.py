"""The served model's neighbour cap on live rows (pure functions: no services)."""

import random

from graphdb.subgraph import EdgeRow, ItemRow
from workers.live import capped_neighbours, item_text, training_graph

DAY = 86400.0


def test_cap_keeps_the_heaviest_decayed_items_ties_by_id():
    t = 1.7e9
    edges = [
        EdgeRow("u", "old-heavy", 4.0, t - 90 * DAY),  # 4 decayed over three 30-day half-lives = 0.5 now
        EdgeRow("u", "recent", 1.0, t),
        EdgeRow("u", "b-tie", 0.75, t),
        EdgeRow("u", "a-tie", 0.75, t),
        EdgeRow("u", "faded", 1.0, t - 300 * DAY),
    ]
    assert capped_neighbours(edges, 3, 30.0) == {"u": ["recent", "a-tie", "b-tie"]}
    assert capped_neighbours(edges, 10, 30.0)["u"] == ["recent", "a-tie", "b-tie", "old-heavy", "faded"]


def test_behaviour_types_of_one_pair_add_up():
    t = 1.7e9
    edges = [
        EdgeRow("u", "x", 1.0, t),
        EdgeRow("u", "x", 1.0, t),  # viewed and clicked: 2
        EdgeRow("u", "y", 1.5, t),
        EdgeRow("v", "x", 1.0, t),
    ]
    assert capped_neighbours(edges, 1, 30.0) == {"u": ["x"], "v": ["x"]}


def test_cap_does_not_depend_on_the_order_rows_arrive_in():
    rng = random.Random(5)
    edges = [
        EdgeRow(
            f"u{rng.randrange(9)}", f"i{rng.randrange(25)}", rng.choice([0.5, 1.0, 2.0]), 1.7e9 + rng.choice([0.0, 3600.0, 7200.0])
        )
        for _ in range(400)
    ]
    first = capped_neighbours(edges, 4, 30.0)
    for _ in range(5):
        rng.shuffle(edges)
        assert capped_neighbours(edges, 4, 30.0) == first
    assert all(len(v) == 4 for v in first.values())


def test_training_graph_matches_the_rows():
    items = [ItemRow("i2", ("Office", "Office > Paper"), "acme", "Ream", "White paper"), ItemRow("i1", (), None, None, None)]
    edges = [EdgeRow("u1", "i2", 2.0, 10.0), EdgeRow("u0", "i1", 1.0, 5.0), EdgeRow("u1", "i1", 1.0, 7.0)]
    g = training_graph(edges, items)
    assert g.user_ids == ["u0", "u1"] and g.item_ids == ["i1", "i2"]
    assert g.interactions().toarray().tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert g.category_names == ["Office", "Office > Paper"] and g.brand_names == ["acme"]
    assert g.item_brand.tolist() == [-1, 0]
    assert g.item_text == ["", "Ream. White paper"] == ["", item_text(items[0])]
