"""graphdb.session against ingestion: the same rows and the same rejections as ``validate_events`` then
``aggregate`` for a stored shopper with the same events (no database: both are plain functions)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from graphdb.errors import InvalidInput
from graphdb.events import validate_events
from graphdb.ingest import aggregate
from graphdb.schema import ITEM_INTERACTIONS, REL_FOR_EVENT
from graphdb.session import SessionEvent, session_edges
from graphdb.settings import GraphSettings

KINDS = ("view", "click", "add_to_cart", "purchase", "rate", "review")


def _ingested(events: list[SessionEvent], settings: GraphSettings, now: float) -> dict:
    raw = []
    for n, (item, kind, ts, rating) in enumerate(events):
        ev = {"event_id": f"e{n}", "user_id": "u", "type": kind, "item_id": item, "ts": ts}
        if rating is not None:
            ev["rating"] = rating
        if kind == "review":
            ev["review"] = "text"
        raw.append(ev)
    valid, rejected = validate_events(raw, settings, now)
    assert not rejected
    rows = aggregate([(ev, "u") for _, ev in valid], settings.half_life_s)
    return {(rel, r["target"]): r for rel in ITEM_INTERACTIONS for r in rows.get(rel, ())}


@pytest.mark.parametrize("seed", range(5))
def test_a_sessions_rows_are_ingestions(seed: int) -> None:
    settings = GraphSettings()
    rng = np.random.default_rng(seed)
    now = time.time()
    events = []
    for _ in range(40):  # few items, many events each: repeated (type, item) pairs across days
        kind = KINDS[int(rng.integers(len(KINDS)))]
        rating = float(rng.integers(1, 6)) if kind == "rate" or (kind == "review" and rng.random() < 0.5) else None
        events.append(SessionEvent(f"item-{int(rng.integers(6))}", kind, now - float(rng.integers(0, 30 * 86400)), rating))
    session = session_edges(events, settings, now)
    want = _ingested(events, settings, now)
    assert set(session.times) == set(want)
    for key, edge in zip(session.times, session.edges("u")):  # edges come in the groups' order
        row = want[key]
        assert (edge.user, edge.item, edge.last_ts, edge.first_ts) == ("u", key[1], row["last"], row["first"])
        assert math.isclose(edge.weight, row["weight"], rel_tol=1e-12) and len(session.times[key]) == row["count"]
    assert session.latest == {i: max(r["last"] for (_, j), r in want.items() if j == i) for i in {j for _, j in want}}
    assert session.bought == {j for (rel, j) in want if rel == REL_FOR_EVENT["purchase"]}


@pytest.mark.parametrize(
    "bad",
    [
        SessionEvent(" item", "view", 1.7e9),
        SessionEvent("item\x01", "view", 1.7e9),
        SessionEvent("i" * 300, "view", 1.7e9),
        SessionEvent("item", "view", -5.0),
        SessionEvent("item", "view", math.nan),
        SessionEvent("item", "view", 4e9),
        SessionEvent("item", "rate", 1.7e9),
        SessionEvent("item", "rate", 1.7e9, 7.0),
        SessionEvent("item", "click", 1.7e9, 3.0),
    ],
)
def test_a_bad_event_is_refused_with_ingestions_reason_and_index(bad: SessionEvent) -> None:
    settings = GraphSettings()
    now = time.time()
    events = [SessionEvent("good", "view", now - 10), bad]
    raw = [{"event_id": f"e{n}", "user_id": "u", "type": k, "item_id": i, "ts": t} for n, (i, k, t, _) in enumerate(events)]
    if bad.rating is not None:
        raw[1]["rating"] = bad.rating
    _, rejected = validate_events(raw, settings, now)
    assert [r.index for r in rejected] == [1]
    with pytest.raises(InvalidInput) as err:
        session_edges(events, settings, now)
    assert str(err.value) == f"events[1]: {rejected[0].reason}"
