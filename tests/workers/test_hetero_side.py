"""A session under a 2-layer heterogeneous version, embedded without torch from the card and its items' stored
numbers (`workers.hetero_side`), equals the vector the encoder's whole forward gives a user with the same rows
(`workers.hetero_live`), for every aggregation the card knows; and GCN or another depth gets no card."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_hetero_caps import _live, _slice

from graphdb.subgraph import EdgeRow, ItemRow
from ml.settings import ModelSettings
from workers.hetero_side import Conv, HeteroSideCard, ItemSide, session_vector
from workers.live import training_graph

DAY = 86400


def _graph(slices):
    edges, rows = _slice(slices / "amazon-hin")
    # an item nobody has shopped: the session is its first shopper, which moves its layer-1 output
    lonely = ItemRow("hin:lonely", rows[0].categories, rows[0].brand, None, None)
    return edges, [*rows, lonely]


def _session(rows: list[ItemRow], edges: list[EdgeRow], t_ref: int, seed: int) -> list[EdgeRow]:
    """Nine rows over six items (more than the cap of 4): two behaviour types on some, ties in time, the hub item,
    and the lonely item."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    for e in edges:
        counts[e.item] = counts.get(e.item, 0) + 1
    hub = max(counts, key=lambda i: (counts[i], i))
    items = [hub, "hin:lonely", *rng.sample(sorted(counts), 4)]
    out = []
    for n, item in enumerate(items):
        t = float(t_ref - rng.choice([0, 1, 1, 30]) * DAY)
        out.append(EdgeRow("session", item, rng.choice([1.0, 2.0, 4.0]), t, None, "VIEWED"))
        if n % 2:
            out.append(EdgeRow("session", item, 3.0, t + 60, None, "PURCHASED"))
    return out


@pytest.mark.parametrize(
    "settings",
    [
        ModelSettings(encoder="sage", hidden=8, layers=2, neighbour_cap=4),  # the default: SAGE's weighted mean
        ModelSettings(encoder="sage", hidden=8, layers=2, neighbour_cap=4, hetero_weighted=False),
        ModelSettings(encoder="sage", hidden=8, layers=2, neighbour_cap=4, hetero_weighted=False, aggr="sum"),
        ModelSettings(encoder="sage", hidden=8, layers=2, neighbour_cap=4, hetero_weighted=False, aggr="max"),
        ModelSettings(encoder="gin", hidden=8, layers=2, neighbour_cap=4),
        ModelSettings(encoder="gin", hidden=8, layers=2, neighbour_cap=4, hetero_gin_aggr="add"),
    ],
    ids=["sage-weighted", "sage-mean", "sage-sum", "sage-max", "gin-mean", "gin-add"],
)
def test_a_session_equals_the_forward_of_a_user_with_its_rows(slices, settings):
    edges, rows = _graph(slices)
    torch.manual_seed(0)
    enc = _live(training_graph(edges, rows), settings)
    card = enc.side_card()
    assert card is not None
    card = HeteroSideCard.from_bytes(enc.version, card.to_bytes())  # as the server reads it
    before = enc.encode([], edges, rows, layers=(0, 1))
    by_item: dict[str, list[EdgeRow]] = {}
    for e in edges:
        by_item.setdefault(e.item, []).append(e)
    stored = {
        r.id: ItemSide(before.layers[0][("item", r.id)], before.layers[1][("item", r.id)], len(enc.item_in(by_item.get(r.id, []))))
        for r in rows
    }
    assert stored["hin:lonely"].rows == 0
    lonely_kept = 0
    for seed in range(3):
        session = _session(rows, edges, enc.model.time_ref, seed)
        want = enc.encode([], [*edges, *session], rows).users["session"]
        got = session_vector(card, session, stored)
        assert got is not None
        vector, items = got
        assert len(items) <= card.cap
        assert np.abs(vector - want).max() <= 1e-5, seed
        # the lonely item's first shopper moves it (SAGE and GIN alike): as if it had a full cap, the session differs
        lonely = {**stored, "hin:lonely": ItemSide(stored["hin:lonely"].x0, stored["hin:lonely"].h1, card.cap)}
        if "hin:lonely" in items:
            lonely_kept += 1
            assert np.abs(session_vector(card, session, lonely)[0] - want).max() > 1e-4  # type: ignore[index]
    assert lonely_kept  # the sessions did reach the lonely item


def test_gcn_and_other_depths_get_no_card(slices):
    edges, rows = _graph(slices)
    graph = training_graph(edges, rows)
    assert _live(graph, ModelSettings(encoder="gcn", hidden=8, layers=2, neighbour_cap=4)).side_card() is None
    assert _live(graph, ModelSettings(encoder="sage", hidden=8, layers=3, neighbour_cap=4)).side_card() is None
    assert _live(graph, ModelSettings(encoder="sage", hidden=8, layers=1, neighbour_cap=4)).side_card() is None


def test_a_card_that_names_an_unknown_aggregation_is_refused(slices):
    edges, rows = _graph(slices)
    card = _live(training_graph(edges, rows), ModelSettings(hidden=8, layers=2, neighbour_cap=4)).side_card()
    assert card is not None
    data = replace(card, to_item=Conv("sage-median", card.to_item.arrays)).to_bytes()
    with pytest.raises(ValueError, match="unknown aggregation 'sage-median'"):
        HeteroSideCard.from_bytes("v", data)
