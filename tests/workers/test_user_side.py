"""The served model's user side without torch (workers.user_side): the function the server embeds sessions with
equals the worker's LiveEncoder on the same rows (pure functions and a tiny model: no services)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphdb.subgraph import EdgeRow
from ml.checkpoint import Checkpoint
from ml.encoders.spectral_sage import SpectralSAGE
from workers.live import LiveEncoder
from workers.user_side import capped_neighbours, latest_times, user_vector

T = 1.7e9


def _encoder(recency_boost: float) -> LiveEncoder:
    torch.manual_seed(0)
    model = SpectralSAGE(num_items=6, dim=8, user_norm=0.4, item_norm=0.6, recency_boost=recency_boost, recency_scale=2.0)
    with torch.no_grad():
        model.filter.copy_(torch.tensor([2.0, -1.0, 0.5, 0.0, 1.5, -0.25, 1.0, 3.0]))  # signs of both kinds, and a zero
    model.set_degrees(torch.tensor([1.0, 3.0, 7.0, 2.0, 12.0, 5.0]))
    ck = Checkpoint(model, "v1", {}, {}, [], [f"i{j}" for j in range(6)], [], [], {})
    return LiveEncoder(ck, user_cap=3, half_life_days=30.0)


@pytest.mark.parametrize("boost", [0.0, 30.0])
def test_the_servers_user_vector_equals_the_workers(boost: float) -> None:
    enc = _encoder(boost)
    edges = [
        EdgeRow("u", "i0", 1.0, T),
        EdgeRow("u", "i1", 2.0, T - 60),
        EdgeRow("u", "i1", 1.0, T - 30),  # a second behaviour type of the same pair
        EdgeRow("u", "i4", 1.0, T - 120),
        EdgeRow("u", "i5", 0.5, T - 3600),  # beyond the cap of 3
    ]
    worker = enc.users(capped_neighbours(edges, 3, 30.0), ["u"], {}, latest_times(edges))[0].numpy()
    ids = ["i0", "i1", "i4", "i5"]
    z, s = enc.known_vectors(ids).numpy(), enc.known_scales(ids).numpy()
    card = enc.card()
    assert (card.version, card.user_cap, card.half_life_days, card.recency_boost, card.recency_scale) == ("v1", 3, 30.0, boost, 2.0)
    assert card.sign.tolist() == [1.0, -1.0, 1.0, 0.0, 1.0, -1.0, 1.0, 1.0]
    out = user_vector(edges, {i: (z[n], float(s[n])) for n, i in enumerate(ids)}, card)
    assert out is not None
    server, items = out
    assert items == ["i1", "i0", "i4"]
    assert np.allclose(server, worker, atol=1e-5, rtol=1e-5) and np.abs(worker).max() > 0.1


def test_items_without_a_vector_are_left_out_before_the_cap() -> None:
    enc = _encoder(30.0)
    edges = [EdgeRow("u", "i0", 1.0, T), EdgeRow("u", "new", 5.0, T), EdgeRow("u", "i2", 1.0, T - 60)]
    z, s = enc.known_vectors(["i0", "i2"]).numpy(), enc.known_scales(["i0", "i2"]).numpy()
    out = user_vector(edges, {"i0": (z[0], float(s[0])), "i2": (z[1], float(s[1]))}, enc.card())
    assert out is not None and out[1] == ["i0", "i2"]
    assert user_vector(edges, {}, enc.card()) is None
