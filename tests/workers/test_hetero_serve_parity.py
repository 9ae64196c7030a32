"""The served K-layer vectors are the trained model's: `HeteroLive` weighs the live rows with the training's own edge
weights (`HeteroGNN.interaction_weights`: time decay from the version's reference time, and on the edges into a user
the recency rank among all of the user's rows), so the worker's vectors equal `ml.train_hetero.encode`, the
whole-graph forward that training validates and bench.quality measures. On the amazon-hin slice (real times over
15 years), with more behaviour rows per pair at other times and strengths."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest
import torch
from test_hetero_caps import _live, _slice
from test_hetero_live import _drain, _rolled_out

from graphdb import subgraph
from graphdb.changes import count_marks
from graphdb.ingest import ingest_events
from graphdb.schema import ITEM, USER
from graphdb.settings import DataSettings
from ml.encoders.hetero_gnn import typed_edges
from ml.settings import ModelSettings, TrainSettings
from ml.train_hetero import encode
from workers import jobs
from workers.hetero_live import HeteroLive
from workers.live import training_graph
from workers.settings import WorkerSettings

DAY = 86400.0
TYPES = ["view", "click", "add_to_cart", "purchase", "rate"]


def _timed_slice(root):
    """The slice's rows, where each second behaviour row on a pair (30 %) comes 1-2,000 days after the first with
    another strength: a user's rows differ in time and weight, so decay, recency and the caps all matter."""
    rng = random.Random(1)
    edges, rows = _slice(root)
    out, seen = [], set()
    for e in edges:
        pair = (e.user, e.item)
        if pair in seen:
            e = type(e)(e.user, e.item, rng.choice([0.5, 2.0, 3.0]), e.last_ts + rng.randrange(1, 2000) * DAY)
        seen.add(pair)
        out.append(e)
    return out, rows


def _plain(model, graph) -> dict[str, torch.Tensor]:
    """The forward with the raw event strengths (no decay, no recency): what the live path computed before."""
    index, weight = typed_edges(graph, model.neighbour_cap)
    with torch.no_grad():
        return model(model.inputs(graph), index, weight)


@pytest.mark.parametrize("conv", ["sage", "gcn", "gin"])
def test_live_encode_equals_the_trained_forward(slices, conv):
    edges, rows = _timed_slice(slices / "amazon-hin")
    graph = training_graph(edges, rows)
    torch.manual_seed(0)
    enc = _live(graph, ModelSettings(encoder=conv, hidden=8, layers=2, neighbour_cap=4))
    m = enc.model
    assert m.half_life_s > 0 and m.recency_boost > 0  # the defaults the worker trains with
    with torch.no_grad():
        trained = encode(m, graph, m.neighbour_cap)
    live = enc.encode([], edges, rows)
    for kind, ids, vecs in (("user", graph.user_ids, live.users), ("item", graph.item_ids, live.items)):
        got = np.stack([vecs[x] for x in ids])
        assert np.abs(got - trained[kind].numpy()).max() <= 1e-4, kind
        # and the weights matter on these rows: the raw strengths give other vectors
        assert np.abs(got - _plain(m, graph)[kind].numpy()).max() > 1e-3, kind


def test_a_users_rows_outside_the_subgraph_rank_its_recency(slices):
    """The last layer on a user's own capped rows equals the whole forward when the user's other rows are given
    (`histories`): their times set the recency ranks of the kept edges. Without them, some users' vectors differ."""
    edges, rows = _timed_slice(slices / "amazon-hin")
    graph = training_graph(edges, rows)
    torch.manual_seed(0)
    enc = _live(graph, ModelSettings(hidden=8, layers=2, neighbour_cap=4))
    full = enc.encode([], edges, rows, layers=(1,))
    by_user = defaultdict(list)
    for e in edges:
        by_user[e.user].append(e)
    by_row = {r.id: r for r in rows}
    heavy = sorted(by_user, key=lambda u: (-len({e.item for e in by_user[u]}), u))[:20]
    assert len({e.item for e in by_user[heavy[-1]]}) > enc.cap  # each is capped
    without = []
    for u in heavy:
        kept = {e.item for e in enc.cap_of_user(by_user[u])}
        sub = [e for e in by_user[u] if e.item in kept]
        sub_rows = [by_row[i] for i in sorted(kept)]
        got = enc.encode([u], sub, sub_rows, given=full.layers[1], histories={u: by_user[u]}).users[u]
        assert np.abs(got - full.users[u]).max() <= 1e-5, u
        without.append(np.abs(enc.encode([u], sub, sub_rows, given=full.layers[1]).users[u] - full.users[u]).max())
    assert max(without) > 1e-4


def test_the_workers_vectors_are_the_trained_models_forward(graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices):
    """Trained and rolled out by the worker, then events of every behaviour type at times spread over five years
    recomputed incrementally: every stored vector equals the checkpoint's whole-graph forward on the live graph."""
    ws = WorkerSettings(model_dir=tmp_path / "models", text_cache_dir=tmp_path / "text", redis_url=redis_url, lock_timeout_s=30)
    ms = ModelSettings(layers=2, neighbour_cap=4)  # the default decay and recency, a small cap
    ts = TrainSettings(max_epochs=1, patience=1, batch_size=256, val_fraction=0.0, threads=1, loss="bpr")
    rt = jobs.Runtime(neo4j_settings, graph_settings, ms, ts, ws, DataSettings())
    driver = rt.driver
    version = _rolled_out(rt, graph_settings, slices)
    enc = rt.encoder(version)
    assert isinstance(enc, HeteroLive) and enc.model.half_life_s > 0 and enc.model.recency_boost > 0
    ctx = rt.hetero_context(version)
    t_ref = enc.model.time_ref
    rng = random.Random(7)
    lines = (slices / "amazon-hin" / "user_item.dat").read_text().splitlines()
    users = sorted({f"hin:{line.split()[0]}" for line in lines})
    items = sorted({f"hin:{line.split()[1]}" for line in lines})  # existing items: the version's vocabularies hold
    for batch in range(3):
        events = []
        for k in range(60):
            e = {
                "event_id": f"p{batch}-{k}",
                "user_id": rng.choice(users) if rng.random() < 0.9 else f"hin:newuser{rng.randrange(5)}",
                "type": rng.choice(TYPES),
                "item_id": rng.choice(items),
                "ts": t_ref - rng.uniform(0, 5 * 365) * DAY,
            }
            if e["type"] == "rate":
                e["rating"] = float(rng.randint(1, 5))
            events.append(e)
        assert not ingest_events(driver, graph_settings, events).rejected
        assert sum(r.users for r in _drain(ctx)) > 0
    assert count_marks(driver) == 0

    live = training_graph(subgraph.all_edges(driver), subgraph.all_items(driver))
    assert live.item_ids == list(enc.ck.item_ids) and live.category_names == list(enc.ck.category_names)
    with torch.no_grad():
        trained = encode(enc.model, live, enc.model.neighbour_cap)
    plain = _plain(enc.model, live)
    for label, kind, ids in ((USER, "user", live.user_ids), (ITEM, "item", live.item_ids)):
        stored = subgraph.stored_vectors(driver, label, ids)
        got = np.stack([np.asarray(stored[x].vector, np.float32) for x in ids])
        assert all(stored[x].version == version for x in ids)
        assert np.abs(got - trained[kind].numpy()).max() <= 1e-4, label
        assert np.abs(got - plain[kind].numpy()).max() > 1e-3, label  # the weights matter on this graph
    rt.close()
