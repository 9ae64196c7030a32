"""The K-layer heterogeneous encoders served: trained and rolled out by the worker, recomputed incrementally with
the K-hop affected set, equal to a full recompute, on the amazon-hin slice loaded through the importer (real
users, items, categories and brands; every user has their own history, so the users' vectors differ)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from graphdb import subgraph
from graphdb.changes import count_marks
from graphdb.ingest import ingest_events
from graphdb.loaders import load_dataset
from graphdb.model_state import active_model
from graphdb.pseudonym import pseudonymise
from graphdb.schema import ITEM, USER
from graphdb.settings import DataSettings
from ml.settings import ModelSettings, TrainSettings
from workers import hetero_recompute, jobs
from workers.hetero_live import HeteroLive
from workers.settings import WorkerSettings

T0 = 1_400_000_000.0
TYPES = ["view", "click", "add_to_cart", "purchase", "rate", "return"]

_HUB = "MATCH (i:Item)<-[]-(u:User) WITH i, count(DISTINCT u) AS d ORDER BY d DESC, i.id LIMIT 1 RETURN i.id AS id, d"


def _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, conv: str) -> jobs.Runtime:
    ws = WorkerSettings(model_dir=tmp_path / "models", text_cache_dir=tmp_path / "text", redis_url=redis_url, lock_timeout_s=30)
    # a small cap, so hub items and heavy users are capped; two layers
    ms = ModelSettings(encoder=conv, layers=2, neighbour_cap=4)
    ts = TrainSettings(max_epochs=1, patience=1, batch_size=256, val_fraction=0.0, threads=1, loss="bpr")
    return jobs.Runtime(neo4j_settings, graph_settings, ms, ts, ws, DataSettings())


def _rolled_out(rt: jobs.Runtime, graph_settings, slices, model: str = "hetero-sage") -> str:
    """The amazon-hin slice loaded, ``model`` trained on it by the worker and rolled out: its version."""
    load_dataset(rt.driver, graph_settings, "amazon-hin", slices / "amazon-hin")
    version: str = jobs.train_from_graph(rt, model=model)["version"]
    jobs.rebuild_version(rt, version)
    return version


def _events(rng: random.Random, batch: int, n: int, users: list[str], items: list[str], hub: str) -> list[dict]:
    out = []
    for k in range(n):
        roll = rng.random()
        item = hub if roll < 0.2 else (f"hin:new{rng.randrange(6)}" if roll < 0.35 else rng.choice(items))
        e = {
            "event_id": f"b{batch}-{k}",
            # external ids of the loader: known users and a few new ones
            "user_id": rng.choice(users) if rng.random() < 0.85 else f"hin:newuser{rng.randrange(8)}",
            "type": rng.choice(TYPES),
            "item_id": item,
            "ts": T0 + batch * 3600 + rng.uniform(0, 3600),
        }
        if e["type"] == "rate":
            e["rating"] = float(rng.randint(1, 5))
        if item.startswith("hin:new"):  # new items arrive with catalogue data the version never saw
            e["item"] = {"categories": [[f"hin:c{rng.randrange(4)}"]], "brand": f"hin:b{rng.randrange(3)}"}
        out.append(e)
    return out


def _drain(ctx) -> list:
    # several rounds (marks arrive and clear in parts), each followed by one step of the pending set, until both
    # the marks and the pending set are empty
    return hetero_recompute.drain(ctx, limit=50)


def _worst(driver, full, version: str) -> float:
    diffs = []
    for label, vectors in full.vectors.items():
        stored = subgraph.stored_vectors(driver, label, vectors)
        assert set(stored) == set(vectors), label
        for node_id, vec in vectors.items():
            s = stored[node_id]
            assert s.version == version, (label, node_id)
            diffs.append((float(np.max(np.abs(np.asarray(s.vector) - vec))), label, node_id))
    diffs.sort(reverse=True)
    print("worst stored-against-full differences:", diffs[:8], sum(d > 1e-4 for d, _, _ in diffs), "over 1e-4")
    return diffs[0][0] if diffs else 0.0


@pytest.mark.parametrize("conv", ["sage", "gin", "gcn"])
def test_hetero_incremental_equals_full_on_amazon_hin(graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices, conv):
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, conv)
    driver = rt.driver
    load_dataset(driver, graph_settings, "amazon-hin", slices / "amazon-hin")
    trained = jobs.train_from_graph(rt, model=f"hetero-{conv}")
    rolled = jobs.rebuild_version(rt, trained["version"])
    assert rolled["active"] == trained["version"] == active_model(driver).version
    assert count_marks(driver) == 0
    enc = rt.encoder(trained["version"])
    assert isinstance(enc, HeteroLive) and enc.kind == f"hetero-{conv}" and enc.dim == graph_settings.embedding_dim
    ctx = rt.hetero_context(trained["version"])

    rng = random.Random(3)
    hub = driver.execute_query(_HUB).records[0]
    assert hub["d"] > 4  # more shoppers than the cap keeps
    users = sorted({f"hin:{line.split()[0]}" for line in (slices / "amazon-hin" / "user_item.dat").read_text().splitlines()})
    items = [r["id"] for r in driver.execute_query("MATCH (i:Item) WHERE i.id =~ 'hin:[0-9]+' RETURN i.id AS id").records]
    for batch in range(4):
        assert not ingest_events(driver, graph_settings, _events(rng, batch, 60, users, items, hub["id"])).rejected
        rounds = _drain(ctx)
        assert sum(r.users for r in rounds) > 0
    assert count_marks(driver) == 0

    full = hetero_recompute.full_vectors(ctx)
    assert len(full.vectors[USER]) > 31 and any(i.startswith("hin:new") for i in full.vectors[ITEM])
    assert _worst(driver, full, trained["version"]) <= 1e-4
    vecs = np.stack(list(full.vectors[USER].values()))
    assert np.linalg.matrix_rank(vecs, tol=1e-4) > 5  # users differ from one another
    rt.close()


def test_an_event_recomputes_the_affected_set_not_the_ball(graph, neo4j_settings, graph_settings, redis_url, tmp_path, slices):
    """A newcomer views the hub item without entering the hub's top 4: the hub's capped in-list, its vector and
    its other shoppers stay; only the newcomer is recomputed, and the result equals a full recompute."""
    rt = _runtime(neo4j_settings, graph_settings, redis_url, tmp_path, "sage")
    driver = rt.driver
    version = _rolled_out(rt, graph_settings, slices)
    ctx = rt.hetero_context(version)
    hub = driver.execute_query(_HUB).records[0]
    # every edge here weighs 1 (one interaction each) decayed by its age, so the cap keeps the newest shoppers (ties
    # by the smallest pseudonyms): a newcomer whose view is older than the slice's first event, and whose pseudonym
    # sorts after every shopper of the hub, stays out of the hub's top 4
    shoppers = subgraph.users_of_items(driver, [hub["id"]])
    key = graph_settings.pseudonym_key.get_secret_value()
    name = next(n for n in (f"hin:newcomer{k}" for k in range(1000)) if pseudonymise(key, n) > max(shoppers))
    event = {"event_id": "hub-1", "user_id": name, "type": "view", "item_id": hub["id"], "ts": 900_000_000.0}
    assert ingest_events(driver, graph_settings, [event]).accepted == 1
    res = hetero_recompute.recompute_marked(ctx)
    assert res.changed == 1 and res.users == 1 and res.items == 0
    rest = _drain(ctx)  # the newcomer's out-set: the hub, which does not keep it
    assert sum(r.pending_users + r.pending_items for r in rest) == 0
    ball = subgraph.users_of_items(driver, [hub["id"]])
    assert len(ball) == hub["d"] + 1 > 4
    full = hetero_recompute.full_vectors(ctx)
    assert _worst(driver, full, version) <= 1e-4
    rt.close()
