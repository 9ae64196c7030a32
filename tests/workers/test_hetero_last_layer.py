"""The last layer alone (`HeteroLive.encode(given=...)`), run on a node's own capped rows with the layer-(K-1)
outputs of the whole graph, gives the node the vector of the whole forward: what the incremental recompute does
with the layer store instead of pulling the K-hop rows (`workers.hetero_recompute.last_layer_inputs`)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from test_hetero_caps import _live, _slice

from ml.settings import ModelSettings
from workers.live import training_graph


@pytest.mark.parametrize("conv", ["sage", "gin"])
def test_last_layer_on_own_caps_equals_the_whole_forward(slices, conv):
    edges, rows = _slice(slices / "amazon-hin")
    graph = training_graph(edges, rows)
    torch.manual_seed(0)
    enc = _live(graph, ModelSettings(encoder=conv, hidden=8, layers=2, neighbour_cap=4))
    full = enc.encode([], edges, rows, layers=(1,))
    by_item, by_user = defaultdict(list), defaultdict(list)
    for e in edges:
        by_item[e.item].append(e)
        by_user[e.user].append(e)
    by_row = {r.id: r for r in rows}
    hub = max(by_item, key=lambda i: (len({e.user for e in by_item[i]}), i))
    heavy = max(by_user, key=lambda u: (len({e.item for e in by_user[u]}), u))
    # the two targets' own capped pairs, every edge row of each (one per behaviour type), and their items' rows
    pairs = {(e.user, hub) for e in enc.cap_of_item(by_item[hub], by_row[hub])[0]}
    pairs |= {(heavy, e.item) for e in enc.cap_of_user(by_user[heavy])}
    sub_edges = [e for e in edges if (e.user, e.item) in pairs]
    sub_rows = [by_row[i] for i in sorted({i for _, i in pairs})]
    assert len({e.user for e in by_item[hub]}) > enc.cap and len({e.item for e in by_user[heavy]}) > enc.cap
    # the heavy user's other rows rank its kept edges' recency, as in the whole graph (the recompute passes them)
    history = {heavy: by_user[heavy]}
    last = enc.encode([heavy], sub_edges, sub_rows, given=full.layers[1], histories=history)
    assert np.abs(last.items[hub] - full.items[hub]).max() <= 1e-5
    assert np.abs(last.users[heavy] - full.users[heavy]).max() <= 1e-5
    # and it reads the given outputs: other layer-1 outputs of the hub's sources give another vector
    shifted = {n: v + 1.0 if n[0] == "user" else v for n, v in full.layers[1].items()}
    assert np.abs(enc.encode([heavy], sub_edges, sub_rows, given=shifted, histories=history).items[hub] - full.items[hub]).max() > 1e-3
