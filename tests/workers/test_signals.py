"""Signals beside the interactions (ml.signals): behaviour strength and time decay move a user's vector the
way they should, equally on the worker's path, the server's session path and the whole-graph path; the metadata
blends of warm and new items (pure functions and tiny models: no services; the live graph runs them in
tests/workers/test_incremental.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import torch

from graphdb.subgraph import EdgeRow, ItemRow
from ml.checkpoint import Checkpoint
from ml.cold import embed_cold_items
from ml.embed import served_vectors
from ml.encoders.spectral_sage import SpectralSAGE
from ml.settings import ModelSettings, TrainSettings
from ml.signals import signal_weights, weigh_by_signals
from ml.train_served import fit_served
from planted_graphs import planted
from workers.live import LiveEncoder, training_graph
from workers.user_side import capped_neighbours, latest_times, pair_strengths, user_vector

T = 1.7e9
DAY = 86400.0


def test_weights_follow_strength_and_age():
    w = signal_weights(np.array([1.0, 3.0, 2.0]), np.array([T, T, T - 2 * DAY]), behaviour_power=1.0, half_life_s=DAY)
    assert np.allclose(w, [1.0, 3.0, 2.0 / 4])  # two half-lives back: a quarter
    assert np.allclose(signal_weights(np.array([1.0, 3.0]), np.array([T, T - DAY]), 0.0, 0.0), [1, 1])  # both off
    # the decay is to the user's latest time: shifting every time alike changes nothing
    a = signal_weights(np.ones(3), np.array([T, T - DAY, T - 3 * DAY]), 0.0, DAY)
    assert np.allclose(a, signal_weights(np.ones(3), np.array([T, T - DAY, T - 3 * DAY]) + 7 * DAY, 0.0, DAY))


def test_matrix_weights_equal_each_rows_own():
    rng = np.random.default_rng(0)
    r = sp.random(30, 20, density=0.3, format="csr", random_state=2)
    s, t = r.copy(), r.copy()
    r.data[:] = 1
    s.data = rng.integers(1, 6, r.nnz).astype(np.float64)
    t.data = T - rng.integers(0, 10, r.nnz) * DAY
    w = weigh_by_signals(r, s, t, 1.0, 2 * DAY)
    for u in range(r.shape[0]):
        a, b = r.indptr[u], r.indptr[u + 1]
        assert np.allclose(w.data[a:b], signal_weights(s.data[a:b], t.data[a:b], 1.0, 2 * DAY))


def _encoder(behaviour_power: float, decay_days: float, typed: dict[str, float] | None = None) -> LiveEncoder:
    torch.manual_seed(0)
    model = SpectralSAGE(
        num_items=6,
        dim=8,
        user_norm=0.4,
        item_norm=0.6,
        behaviour_power=behaviour_power,
        decay_half_life_days=decay_days,
        behaviour_weights=typed,
    )
    model.set_degrees(torch.tensor([1.0, 3.0, 7.0, 2.0, 12.0, 5.0]))
    ck = Checkpoint(model, "v1", {}, {}, [], [f"i{j}" for j in range(6)], [], [], {})
    return LiveEncoder(ck, user_cap=5, half_life_days=30.0)


def _worker_vector(enc: LiveEncoder, edges: list[EdgeRow]) -> np.ndarray:
    nb = capped_neighbours(edges, enc.user_cap, enc.half_life_days)
    return enc.users(nb, ["u"], {}, latest_times(edges), pair_strengths(edges, enc.behaviour_weights))[0].numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_a_purchase_moves_the_vector_more_than_a_view():
    """i0 viewed (strength 1), i1 purchased and carted (3 + 2, two behaviour types of one pair): with the
    behaviour weights on, the user's vector leans towards what they bought."""
    edges = [EdgeRow("u", "i0", 1.0, T), EdgeRow("u", "i1", 3.0, T), EdgeRow("u", "i1", 2.0, T)]
    off, on = _encoder(0.0, 0.0), _encoder(1.0, 0.0)
    z = off.in_known.numpy()  # what each item sends to its users (the same in both versions)
    plain, weighted = _worker_vector(off, edges) / off.filter.numpy(), _worker_vector(on, edges) / on.filter.numpy()
    assert np.allclose(plain, z[0] + z[1], atol=1e-5)
    assert np.allclose(weighted, z[0] + 5 * z[1], atol=1e-5)
    assert _cos(weighted, z[1]) > _cos(plain, z[1]) and _cos(weighted, z[0]) < _cos(plain, z[0])


TYPED = {"VIEWED": 1.0, "CLICKED": 2.0, "ADDED_TO_CART": 4.0, "PURCHASED": 8.0}


def test_typed_weights_make_a_purchase_outweigh_many_views():
    """i0 viewed three times (one VIEWED edge of decayed count 3), i1 viewed once and purchased: all types equal,
    the views weigh i0 at 3 against i1's 2; typed (view 1, purchase 8), i1 weighs 9."""
    edges = [
        EdgeRow("u", "i0", 3.0, T, None, "VIEWED"),
        EdgeRow("u", "i1", 1.0, T, None, "VIEWED"),
        EdgeRow("u", "i1", 1.0, T, None, "PURCHASED"),
    ]
    equal, typed = _encoder(1.0, 0.0), _encoder(1.0, 0.0, TYPED)
    assert equal.card().behaviour_weights == {} and typed.card().behaviour_weights == TYPED
    z = equal.in_known.numpy()
    assert np.allclose(_worker_vector(equal, edges) / equal.filter.numpy(), 3 * z[0] + 2 * z[1], atol=1e-5)
    assert np.allclose(_worker_vector(typed, edges) / typed.filter.numpy(), 3 * z[0] + 9 * z[1], atol=1e-5)


def test_typed_weights_reach_the_session_vector_as_the_workers():
    """RecommendForSession's edges carry their behaviour type (graphdb.session), so a session's typed strength is
    a stored shopper's: the card's weights, the same function."""
    from graphdb.session import session_edges
    from graphdb.settings import GraphSettings

    enc = _encoder(1.0, 0.0, TYPED)
    events = [("i0", "view", T, None), ("i0", "view", T, None), ("i1", "view", T - 5, None), ("i1", "purchase", T - 5, None)]
    edges = session_edges(events, GraphSettings(), now=T).edges("u")
    assert {e.kind for e in edges} == {"VIEWED", "PURCHASED"}
    ids = ["i0", "i1"]
    z, s = enc.known_vectors(ids).numpy(), enc.known_scales(ids).numpy()
    out = user_vector(edges, {i: (z[n], float(s[n])) for n, i in enumerate(ids)}, enc.card())
    assert out is not None
    assert np.allclose(out[0], _worker_vector(enc, edges), atol=1e-5, rtol=1e-5)
    assert not np.allclose(out[0], _worker_vector(_encoder(1.0, 0.0), edges), atol=1e-3)  # the types did count


def test_an_old_interaction_weighs_less_than_a_recent_one_with_decay():
    edges = [EdgeRow("u", "i2", 1.0, T), EdgeRow("u", "i3", 1.0, T - 3 * DAY)]  # i3 three half-lives back
    off, on = _encoder(0.0, 0.0), _encoder(0.0, 1.0)
    z = off.in_known.numpy()
    decayed = _worker_vector(on, edges) / on.filter.numpy()
    assert np.allclose(decayed, z[2] + z[3] / 8, atol=1e-5)
    plain = _worker_vector(off, edges) / off.filter.numpy()
    assert _cos(decayed, z[2]) > _cos(plain, z[2])


def test_the_servers_session_vector_equals_the_workers_with_signals():
    enc = _encoder(1.0, 2.0)
    edges = [
        EdgeRow("u", "i0", 1.0, T),
        EdgeRow("u", "i1", 3.0, T - DAY),
        EdgeRow("u", "i1", 1.0, T - 2 * DAY),  # a second behaviour type of the same pair
        EdgeRow("u", "i4", 2.0, T - 5 * DAY),
    ]
    ids = ["i0", "i1", "i4"]
    card = enc.card()
    assert (card.behaviour_power, card.decay_half_life_days) == (1.0, 2.0)
    z, s = enc.known_vectors(ids).numpy(), enc.known_scales(ids).numpy()
    out = user_vector(edges, {i: (z[n], float(s[n])) for n, i in enumerate(ids)}, card)
    assert out is not None
    assert np.allclose(out[0], _worker_vector(enc, edges), atol=1e-5, rtol=1e-5)


def test_the_whole_graph_path_applies_the_same_typed_weights():
    """A graph built from typed live edges (`training_graph` with the type weights) trains a model whose
    whole-graph user vectors equal the worker's from the same edges."""
    rng = np.random.default_rng(5)
    kinds = ["VIEWED", "CLICKED", "ADDED_TO_CART", "PURCHASED"]
    edges = [
        EdgeRow(
            f"u{u}", f"i{int(j)}", float(rng.integers(1, 4)), T - float(rng.integers(0, 9)) * DAY, None, kinds[int(rng.integers(4))]
        )
        for u in range(40)
        for j in rng.choice(12, size=5, replace=False)
    ]
    items = [ItemRow(f"i{j}", (), None, None, None) for j in range(12)]
    ms = ModelSettings(
        dim=8, select_filter=False, behaviour_power=1.0, behaviour_weights={"view": 1, "click": 2, "add_to_cart": 4, "purchase": 8}
    )
    g = training_graph(edges, items, ms.typed_weights())
    model = fit_served(g, ms, TrainSettings(served_epochs=0, val_fraction=0.0), progress=False).model
    assert model.behaviour_weights == TYPED
    full, _ = served_vectors(model, g)
    ck = Checkpoint(model, "v", {}, {}, g.user_ids, g.item_ids, [], [], {})
    enc = LiveEncoder(ck, user_cap=1000, half_life_days=30.0)
    for u in (0, 7, 33):
        mine = [dataclasses.replace(e, user="u") for e in edges if e.user == f"u{u}"]
        assert np.allclose(_worker_vector(enc, mine), full[g.user_ids.index(f"u{u}")].numpy(), atol=1e-4)


def test_the_whole_graph_path_applies_the_same_weights():
    """`served_vectors` (training, the benchmarks, the roll-out's reference) weighs a user's items as the worker."""
    split, _ = planted(seed=4)
    g = split.train
    rng = np.random.default_rng(1)
    coo = g.interactions().tocoo()
    shape = coo.shape
    strength = sp.csr_matrix((rng.integers(1, 6, coo.nnz).astype(np.float32), (coo.row, coo.col)), shape=shape)
    times = sp.csr_matrix((T - rng.integers(0, 20, coo.nnz) * DAY, (coo.row, coo.col)), shape=shape)
    timed = g.with_interactions(strength, times=times.astype(np.int64))
    ms = ModelSettings(dim=16, select_filter=False, behaviour_power=1.0, decay_half_life_days=5.0)
    model = fit_served(timed, ms, TrainSettings(served_epochs=0, val_fraction=0.0), progress=False).model
    full, _ = served_vectors(model, timed)
    ck = Checkpoint(
        model,
        "v",
        {},
        {},
        [],
        timed.item_ids,
        timed.category_names,
        timed.brand_names,
        {},
        item_category=timed.item_category,
        item_brand=timed.item_brand,
    )
    enc = LiveEncoder(ck, user_cap=1000, half_life_days=30.0)
    r, s, t = timed.interactions(), timed.interactions(binary=False), timed.interaction_times()
    for u in (0, 7, 33):
        sl = slice(r.indptr[u], r.indptr[u + 1])
        edges = [EdgeRow("u", timed.item_ids[j], float(w), float(ts)) for j, w, ts in zip(r.indices[sl], s.data[sl], t.data[sl])]
        assert np.allclose(_worker_vector(enc, edges), full[u].numpy(), atol=1e-4)


@torch.no_grad()
def test_warm_items_take_a_share_of_their_metadata_vector():
    split, _ = planted(seed=3)
    g = split.train
    base = ModelSettings(dim=16, select_filter=False)
    ts = TrainSettings(served_epochs=0, val_fraction=0.0)
    text = torch.nn.functional.one_hot(torch.arange(g.num_items) % 7, 16).float()  # any fixed item text
    a = fit_served(g, base, ts, item_text=text, progress=False).model
    b = fit_served(g, base.model_copy(update={"warm_meta_blend": 0.3}), ts, item_text=text, progress=False).model
    meta = a.meta(g.item_category, g.item_brand, text, g.num_items)
    trained = torch.from_numpy(np.asarray(g.interactions().sum(0)).ravel() > 0)
    xa, xb = a.item_base(meta), b.item_base(meta)
    assert torch.allclose(xb[trained], 0.7 * xa[trained] + 0.3 * meta[trained], atol=1e-5)
    assert not torch.allclose(xa[trained], xb[trained], atol=1e-3)


@torch.no_grad()
def test_new_items_keep_their_category_and_brand_beside_their_text_neighbours():
    torch.manual_seed(0)
    model = SpectralSAGE(num_items=5, dim=4, num_categories=2, num_brands=2, text_dim=3)
    model.set_known(torch.tensor([True, True, True, False, False]))
    text = torch.eye(5, 3)
    cats = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 1, 1, 0]])
    brands = torch.tensor([0, 1, 0, 1, -1])
    meta = model.meta(cats, brands, text, 5)
    blended = SpectralSAGE(num_items=5, dim=4, num_categories=2, num_brands=2, text_dim=3)
    blended.load_state_dict(model.state_dict())
    assert embed_cold_items(model, meta, text, k=2, meta_blend=0.0) == 2
    assert embed_cold_items(blended, meta, text, k=2, meta_blend=0.4) == 2
    nb = model.item_base(meta)[3:]  # today: the neighbours' mean alone
    assert torch.allclose(blended.item_base(meta)[3:], 0.6 * nb + 0.4 * meta[3:], atol=1e-6)


@torch.no_grad()
def test_the_warm_blend_is_applied_once_after_a_selection_without_refit():
    split, _ = planted(seed=3)
    g = split.train
    base = ModelSettings(dim=16, select_filter=True, warm_meta_blend_grid=())
    ts = TrainSettings(served_epochs=0, val_fraction=0.2, refit=False)
    a = fit_served(g, base, ts, progress=False).model
    b = fit_served(g, base.model_copy(update={"warm_meta_blend": 0.3}), ts, progress=False).model
    meta = a.meta(g.item_category, g.item_brand, None, g.num_items)
    trained = a.item_known.clone()
    assert torch.allclose(b.item_base(meta)[trained], 0.7 * a.item_base(meta)[trained] + 0.3 * meta[trained], atol=1e-5)


def test_a_users_newest_searches_are_chosen_the_same_in_any_order():
    from graphdb.searches import SearchRow
    from workers.user_side import latest_searches

    rows = [
        SearchRow("u", "q1", "oak desk", T),
        SearchRow("u", "q0", "lamp", T),
        SearchRow("u", "q2", "pen", T - 5),
        SearchRow("v", "q3", "ink", T),
    ]
    assert latest_searches(rows, 2) == {"u": ["lamp", "oak desk"], "v": ["ink"]}  # newest first, ties by query id
    assert latest_searches(rows[::-1], 2) == latest_searches(rows, 2)
