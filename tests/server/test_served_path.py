"""What is measured is what is served: on a small live graph, the served row of `bench.quality` (its vectors and
its in-process engine, `bench._served`) gives each shopper the same top 20 as a running server's
RecommendForUser, after the worker trained the model on the graph and rolled it out. Real Neo4j, Redis, gRPC."""

from __future__ import annotations

import numpy as np
import pytest

from bench._served import engine_top_k, served_engine
from graphdb import subgraph
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from graphdb.settings import DataSettings
from ml.checkpoint import load_checkpoint, resolve
from ml.embed import served_vectors
from ml.settings import ModelSettings, TrainSettings
from proto.interest.v1 import interest_pb2 as pb
from tests.server.conftest import base_settings, start_harness
from workers import jobs
from workers.live import training_graph
from workers.settings import WorkerSettings

T0 = 1_700_000_000.0
USERS, ITEMS, CLUSTERS = 40, 48, 4


def _events(rng: np.random.Generator) -> list[dict]:
    """Shoppers in planted interest clusters, each with 5-9 items mostly from their own cluster."""
    out = []
    per = ITEMS // CLUSTERS
    for u in range(USERS):
        c = u % CLUSTERS
        n = int(rng.integers(5, 10))
        own = rng.choice(np.arange(c * per, (c + 1) * per), size=n - 1, replace=False)
        items = [*own.tolist(), int(rng.integers(ITEMS))]
        for k, j in enumerate(dict.fromkeys(items)):
            out.append(
                {"event_id": f"e{u}-{k}", "user_id": f"shopper-{u}", "type": "purchase", "item_id": f"item-{j:02d}", "ts": T0 + 60 * k}
            )
    return out


@pytest.fixture
def rolled_out(graph, neo4j_settings, graph_settings, redis_url, tmp_path):
    events = _events(np.random.default_rng(3))
    res = ingest_events(graph, graph_settings, events)
    assert not res.rejected
    ws = WorkerSettings(model_dir=tmp_path / "models", text_cache_dir=tmp_path / "text", redis_url=redis_url)
    # recency weights on (each shopper's purchases are a minute apart): the live path reads the pairs' times
    # from the edges, the bench path from the training graph, and both must weigh alike
    ms = ModelSettings(dim=graph_settings.embedding_dim, recency_boost=30.0, select_filter=False)
    rt = jobs.Runtime(neo4j_settings, graph_settings, ms, TrainSettings(threads=1), ws, DataSettings())
    trained = jobs.train_from_graph(rt)
    jobs.rebuild_version(rt, trained["version"])
    rt.close()
    bought: dict[str, list[str]] = {}
    for e in events:
        bought.setdefault(e["user_id"], []).append(e["item_id"])
    ck = load_checkpoint(resolve(ws.model_dir, trained["version"]))
    assert ck.model.recency_boost == 30.0
    yield ck, bought


def test_quality_served_row_equals_the_running_servers_answers(rolled_out, graph, graph_settings, redis_url):
    ck, bought = rolled_out
    shoppers = sorted(bought)
    # bench.quality's served row: the model's vectors for the graph, ranked by the in-process engine
    live_graph = training_graph(subgraph.all_edges(graph), subgraph.all_items(graph), ck.model.behaviour_weights)
    users, items = served_vectors(ck.model, live_graph)
    key = graph_settings.pseudonym_key.get_secret_value()
    row = {p: n for n, p in enumerate(live_graph.user_ids)}
    user_vecs = users.numpy()[[row[pseudonymise(key, s)] for s in shoppers]]
    engine = served_engine(live_graph.item_ids, items.numpy(), ck.version)
    bench_top = engine_top_k(engine, shoppers, user_vecs, 20, [bought[s] for s in shoppers])

    # the running server, loaded from Neo4j after the roll-out
    settings = base_settings(ann_min_items=20_000, max_filter_ids=100)  # the server's default index kind here
    harness, stop = start_harness(settings, graph_settings, graph, redis_url=redis_url, start_lifecycle=True)
    try:
        stub = harness.stub()
        for s, expected in zip(shoppers, bench_top):
            resp = stub.RecommendForUser(
                pb.RecommendForUserRequest(user_id=s, k=20, include_seen=True, filter=pb.ItemFilter(exclude_item_ids=bought[s])),
                timeout=30,
            )
            assert resp.model_version == ck.version and not resp.cold_start
            got = [i.item_id for i in resp.items]
            assert len(got) == 20 and not set(got) & set(bought[s])
            assert got == expected, (s, got, expected)
    finally:
        stop()
