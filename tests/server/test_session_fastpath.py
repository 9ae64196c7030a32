"""The shortcuts RecommendForSession takes to stay within 1.5x RecommendForUser (bench.serving), each against the
general function it stands in for, on random small inputs: the short-term pre-check against ``recent_items``, the
labels of many items against ``label_of``, and the table-based recency weights against the array formula."""

from __future__ import annotations

import numpy as np
import pytest

from graphdb.subgraph import EdgeRow
from ml.recency import _weight, recency_weights
from server.index import IndexParams, ItemIndex, LabelMap
from server.short_term import ShortTermParams, may_have_recent, recent_items


@pytest.mark.parametrize("seed", range(20))
def test_the_short_term_pre_check_says_whether_recent_items_finds_an_interest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    params = ShortTermParams(share=float(rng.choice([0.0, 0.3])), window_s=600.0, min_items=int(rng.integers(1, 4)), max_items=4)
    edges = [
        EdgeRow("u", f"i{int(rng.integers(8))}", 1.0, float(rng.choice([0.0, 5000.0])) + float(rng.integers(0, 900)))
        for _ in range(int(rng.integers(0, 14)))
    ]
    latest: dict[str, float] = {}
    for e in edges:
        latest[e.item] = max(e.last_ts, latest.get(e.item, e.last_ts))
    for total in {len(latest), len(latest) + int(rng.integers(1, 4))}:
        assert may_have_recent(latest.values(), total, params) == (recent_items(edges, total, params) is not None)


def test_live_labels_are_label_of_each_item() -> None:
    labels = LabelMap()
    index = ItemIndex.build(4, "v", labels, IndexParams(), ["a", "b", "c"], np.eye(3, 4, dtype=np.float32), None, None)
    index.delete("b")
    labels.assign("elsewhere")  # a label of another version, past this index's arrays
    ids = ["c", "b", "nope", "a", "elsewhere", "c"]
    assert index.live_labels(ids) == [-1 if index.label_of(i) is None else index.label_of(i) for i in ids]
    assert index.live_labels(ids) == [2, -1, -1, 0, -1, 2]


@pytest.mark.parametrize("n", [1, 2, 15, 64, 65, 300])
def test_recency_weights_from_the_table_equal_the_formula(n: int) -> None:
    rng = np.random.default_rng(n)
    times = 1.7e9 + 20.0 * rng.integers(0, 40, n)
    distinct = np.unique(times)
    want = _weight(len(distinct) - 1 - np.searchsorted(distinct, times), 30.0, 2.0)  # dense rank, newest = 0
    got = recency_weights(times, 30.0, 2.0)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(recency_weights(times, 0.0, 2.0), np.ones(n, np.float32))


@pytest.mark.parametrize("seed", range(10))
def test_a_sessions_strengths_are_pair_strengths_of_its_edges(seed: int) -> None:
    """`SessionEdges.strengths` (every RecommendForSession call at the default behaviour power) gives the same floats
    as `pair_strengths` over the session's edge rows, typed or not."""
    from graphdb.session import session_edges
    from graphdb.settings import GraphSettings
    from workers.user_side import pair_strengths

    rng = np.random.default_rng(seed)
    kinds = ["view", "click", "add_to_cart", "purchase"]
    events = [
        (f"i{int(rng.integers(6))}", kinds[int(rng.integers(4))], 1.7e9 - float(rng.integers(0, 90_000)), None) for _ in range(30)
    ]
    session = session_edges(events, GraphSettings(), now=1.7e9)
    for typed in ({}, {"VIEWED": 1.0, "CLICKED": 2.0, "ADDED_TO_CART": 4.0, "PURCHASED": 8.0}):
        pairs = pair_strengths(session.edges("u"), typed)
        assert session.strengths(typed) == {item: w for (_, item), w in pairs.items()}
