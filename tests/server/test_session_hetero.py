"""RecommendForSession under a served 2-layer heterogeneous version (hetero-sage, hetero-gin): a session embedded at
request time answers as a stored user with exactly those events, also for a user and an item that arrive after the
rollout. The worker trains the model on a small live graph and rolls it out (the vectors to Neo4j; the layer store
and the version's card to Redis, `workers.hetero_side`); the server reads the card and the session items' numbers
from Redis. Real Neo4j, Redis, gRPC (tests/conftest.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from graphdb.errors import Unavailable
from graphdb.ingest import ingest_events
from graphdb.model_state import read_card
from graphdb.session import session_edges
from graphdb.settings import DataSettings
from ml.settings import ModelSettings, TrainSettings
from proto.interest.v1 import interest_pb2 as pb
from server.hetero_sessions import HeteroSides
from tests.server.conftest import base_settings, start_harness
from tests.server.test_session import _info, _item, _seeded, _session, _shoppers_match, _twin_matches
from workers import hetero_recompute, jobs
from workers.hetero_side import session_vector
from workers.settings import WorkerSettings

STREAM = "ig:test-session-hetero"


@pytest.fixture(scope="module", params=["hetero-sage", "hetero-gin"])
def served(request, neo4j_driver, neo4j_settings, graph_settings, redis_url, tmp_path_factory):
    """The model trained on the graph and rolled out; a server loaded from Neo4j following the delta stream."""
    t0, events = _seeded(neo4j_driver, graph_settings, redis_url, STREAM, hetero_recompute.PENDING)
    tmp = tmp_path_factory.mktemp("session-hetero")
    ws = WorkerSettings(model_dir=tmp / "models", text_cache_dir=tmp / "text", redis_url=redis_url, delta_stream=STREAM)
    ms = ModelSettings(layers=2, neighbour_cap=4)  # more items than the cap in the twin's and the late user's events
    ts = TrainSettings(max_epochs=1, patience=1, batch_size=256, val_fraction=0.0, threads=1, loss="bpr")
    rt = jobs.Runtime(neo4j_settings, graph_settings, ms, ts, ws, DataSettings())
    version = jobs.train_from_graph(rt, model=request.param)["version"]
    jobs.rebuild_version(rt, version)
    settings = base_settings(redis_url=redis_url, delta_stream=STREAM, delta_block_ms=20, max_session_events=30, max_batch=4)
    harness, stop = start_harness(settings, graph_settings, neo4j_driver, redis_url=redis_url, start_lifecycle=True)
    harness.version, harness.rt, harness.t0, harness.twin, harness.settings = version, rt, t0, events[-10:], settings
    yield harness
    stop()
    rt.close()


def test_the_rollout_records_a_card_in_redis_and_none_in_neo4j(served, neo4j_driver, graph_settings) -> None:
    assert read_card(neo4j_driver, served.version) is None  # the spectral user side: not this version's
    card = HeteroSides(served.settings).card(served.version)
    assert card is not None and card.cap == 4 and card.dim == graph_settings.embedding_dim
    assert HeteroSides(served.settings).card("no-such-version") is None


def _events_of(rows: list[dict]) -> list[tuple[str, str, float, float | None]]:
    """Ingestion's events as a session carries them (`server.service.session_events`)."""
    return [(e["item_id"], e["type"], e["ts"], e.get("rating")) for e in rows]


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_a_session_is_the_user_its_events_make(served, neo4j_driver, graph_settings) -> None:
    """A session embedded now equals the vector the worker stores for a new shopper once the same events land and
    are recomputed: for an item another shopper brought in after the rollout (its layer-0 input and counts stored
    by that round), items with fewer kept rows than the cap (GIN's sum counts the new shopper), and more rows
    than the cap."""
    stub = served.stub()
    now = time.time() - 120
    early = [{"event_id": "early-0", "user_id": "early", "type": "view", "item_id": "brand-new", "ts": now, "item": _info(3)}]
    assert not ingest_events(neo4j_driver, graph_settings, early).rejected
    ctx = served.rt.hetero_context(served.version)
    assert sum(r.users for r in hetero_recompute.drain(ctx)) == 1
    late = [
        *[
            {"event_id": f"late-{n}", "user_id": "late", "type": "click", "item_id": _item(j), "ts": now + 10 + n}
            for n, j in enumerate((3, 4, 17, 30, 31))
        ],
        {"event_id": "late-5", "user_id": "late", "type": "rate", "item_id": _item(4), "ts": now + 30, "rating": 5.0},
        {"event_id": "late-6", "user_id": "late", "type": "view", "item_id": "brand-new", "ts": now + 40},
        {"event_id": "late-7", "user_id": "late", "type": "purchase", "item_id": "brand-new", "ts": now + 41},
    ]
    sides = HeteroSides(served.settings)
    card = sides.card(served.version)
    assert card is not None
    rows = session_edges(_events_of(late), graph_settings, time.time()).edges("late")
    kept = session_vector(card, rows, sides.items(served.version, {e.item for e in rows}))
    assert kept is not None and {"brand-new", _item(4)} <= set(kept[1]) and len(rows) > card.cap  # the new item counts
    session = served.engine.session_vector(_events_of(late))
    assert session is not None
    assert not ingest_events(neo4j_driver, graph_settings, late).rejected
    rounds = hetero_recompute.drain(ctx)
    assert sum(r.users for r in rounds) >= 1 and sum(r.pending_items for r in rounds) >= 1
    stored = stub.GetEmbedding(pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_USER, id="late"), timeout=10)
    assert stored.model_version == served.version
    assert np.abs(_unit(stored.vector) - _unit(session)).max() <= 1e-4


@pytest.mark.parametrize("served", ["hetero-sage"], indirect=True)
def test_a_stored_shoppers_session_answers_as_that_shopper_under_sage(served) -> None:
    """Under SAGE's weighted mean (the default) a session that repeats a stored shopper's events answers as that
    shopper, with filters and without the items bought, in any order. (Under GIN's sum it is one more shopper of
    the items that keep fewer rows than the cap, which the test above covers.)"""
    stub = served.stub()
    twin = _session(served.twin)
    in_order = stub.RecommendForSession(pb.RecommendForSessionRequest(events=twin, k=10), timeout=30)
    shuffled = stub.RecommendForSession(pb.RecommendForSessionRequest(events=twin[::-1], k=10), timeout=30)
    assert not in_order.cold_start and in_order.model_version == served.version and len(in_order.items) == 10
    assert [(i.item_id, i.score) for i in shuffled.items] == [(i.item_id, i.score) for i in in_order.items]
    _twin_matches(stub, twin, served.version)
    _shoppers_match(stub, served.t0)


def test_a_session_of_unknown_items_gets_popular_items(served) -> None:
    stub = served.stub()
    unknown = stub.RecommendForSession(
        pb.RecommendForSessionRequest(events=[pb.SessionEvent(item_id="no-such-item", type=pb.EVENT_TYPE_VIEW, ts=time.time())], k=5),
        timeout=30,
    )
    assert unknown.cold_start and unknown.model_version == served.version


def test_redis_away_is_a_clear_unavailable(served) -> None:
    """The card is cached per version; the items' numbers are read per session: with Redis unreachable, a session
    under this version is refused with what failed, and the server goes on serving."""
    sides = HeteroSides(served.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    with pytest.raises(Unavailable, match="session inputs are kept, did not answer"):
        sides.items(served.version, ["item-01"])
    assert (
        not served.stub().RecommendForSession(pb.RecommendForSessionRequest(events=_session(served.twin), k=3), timeout=30).cold_start
    )
