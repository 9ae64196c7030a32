"""Negative feedback in the graph (graphdb.feedback): hides and returns are stored like other behaviour,
idempotently, and the return rule is applied the same way by every reader. Real Neo4j (tests/conftest.py)."""

from __future__ import annotations

import time

from graphdb import subgraph
from graphdb.catalog import popular_items, shopper_exclusions
from graphdb.changes import read_marks
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise

NOW = time.time()


def _ev(n, user, type_, item_id, ts, **kw):
    return {"event_id": f"e{n}", "user_id": user, "type": type_, "item_id": item_id, "ts": ts, **kw}


def _pseudonym(graph_settings, user: str) -> str:
    return pseudonymise(graph_settings.pseudonym_key.get_secret_value(), user)


def test_hide_and_return_are_stored_once_per_event_id(graph, graph_settings) -> None:
    events = [
        _ev(1, "alice", "purchase", "mug", NOW - 300),
        _ev(2, "alice", "return", "mug", NOW - 200),
        _ev(3, "alice", "not_interested", "lamp", NOW - 100),
        _ev(4, "alice", "not_interested", "lamp", NOW - 50),
    ]
    assert ingest_events(graph, graph_settings, events).accepted == 4
    again = ingest_events(graph, graph_settings, events)  # a client retry
    assert again.accepted == 0 and again.duplicates == 4
    # what docs/analysts.md gives analysts to list a shopper's negative feedback
    rows = graph.execute_query(
        "MATCH (:User {id: $user})-[r:NOT_INTERESTED|RETURNED]->(i:Item) RETURN type(r) AS type, i.id AS item, r.count AS n "
        "ORDER BY type",
        user=_pseudonym(graph_settings, "alice"),
    ).records
    assert [(r["type"], r["item"], r["n"]) for r in rows] == [("NOT_INTERESTED", "lamp", 2), ("RETURNED", "mug", 1)]


def test_negative_events_need_an_item(graph, graph_settings) -> None:
    result = ingest_events(
        graph,
        graph_settings,
        [
            {"event_id": "x1", "user_id": "alice", "type": "not_interested", "ts": NOW},
            {"event_id": "x2", "user_id": "alice", "type": "return", "ts": NOW, "query": "mug"},
        ],
    )
    assert result.accepted == 0 and [r.index for r in result.rejected] == [0, 1]
    assert "not_interested event needs an item_id" in result.rejected[0].reason
    assert "return event needs an item_id" in result.rejected[1].reason


def test_return_rule_for_exclusions_edges_and_popularity(graph, graph_settings) -> None:
    events = [
        # mug: bought, then returned: no longer bought
        _ev(1, "alice", "purchase", "mug", NOW - 300),
        _ev(2, "alice", "return", "mug", NOW - 200),
        # pen: returned, then bought again: bought; the return arrives last (out of order), same outcome
        _ev(3, "alice", "purchase", "pen", NOW - 100),
        _ev(4, "alice", "return", "pen", NOW - 250),
        # ink: returned without a purchase: stored, changes nothing
        _ev(5, "alice", "return", "ink", NOW - 90),
        _ev(6, "alice", "view", "ink", NOW - 95),
        # lamp: hidden after a view; the view still counts as interest, the hide does not
        _ev(7, "alice", "view", "lamp", NOW - 80),
        _ev(8, "alice", "not_interested", "lamp", NOW - 70),
        _ev(9, "alice", "not_interested", "desk", NOW - 60),
        _ev(10, "bob", "purchase", "mug", NOW - 50),
    ]
    assert ingest_events(graph, graph_settings, events[:3] + events[4:]).accepted == 9
    assert ingest_events(graph, graph_settings, [events[3]]).accepted == 1
    alice = _pseudonym(graph_settings, "alice")

    excl = shopper_exclusions(graph, alice)
    assert excl.bought == ("pen",)
    assert excl.hidden == ("desk", "lamp")  # most recently hidden first

    # the incremental read and the full read give the same edges: the returned purchase and the negatives are gone
    edges, _ = subgraph.user_edges(graph, [alice])
    assert sorted(e.item for e in edges) == ["ink", "lamp", "pen"]
    full = [e for e in subgraph.all_edges(graph) if e.user == alice]
    assert sorted((e.item, e.weight, e.last_ts) for e in full) == sorted((e.item, e.weight, e.last_ts) for e in edges)

    # popularity: bob's mug counts, alice's returned one and every hide or return do not
    scores = dict(popular_items(graph, since=0.0, limit=10))
    assert "desk" not in scores and scores["mug"] == 5.0 and scores["lamp"] == 1.0

    # a return marks the shopper for recompute (in the same transaction as the write)
    ingest_events(graph, graph_settings, [_ev(11, "alice", "return", "pen", NOW - 10)])
    assert shopper_exclusions(graph, alice).bought == ()
    assert any(m.label == "User" and m.id == alice for m in read_marks(graph))
