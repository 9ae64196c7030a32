"""Forgetting a user removes the node, its relationships and queries only it typed; items get marked."""

from __future__ import annotations

import time

from graphdb.forget import forget_user
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise


def test_forget_user_removes_user_and_private_queries(graph, graph_settings) -> None:
    now = time.time()
    events = [
        {"event_id": "a1", "user_id": "alice", "type": "purchase", "item_id": "i1", "ts": now - 5},
        {"event_id": "a2", "user_id": "alice", "type": "search", "query": "my rare query", "ts": now - 4},
        {"event_id": "a3", "user_id": "alice", "type": "search", "query": "shoes", "ts": now - 3},
        {"event_id": "b1", "user_id": "bob", "type": "search", "query": "shoes", "ts": now - 2},
        {"event_id": "b2", "user_id": "bob", "type": "view", "item_id": "i1", "ts": now - 1},
    ]
    assert ingest_events(graph, graph_settings, events, now=now).accepted == 5
    graph.execute_query("MATCH (n) REMOVE n:Dirty")
    key = graph_settings.pseudonym_key.get_secret_value()
    alice = pseudonymise(key, "alice")

    assert forget_user(graph, alice) is True
    assert forget_user(graph, alice) is False  # idempotent

    users = {r["id"] for r in graph.execute_query("MATCH (u:User) RETURN u.id AS id").records}
    assert users == {pseudonymise(key, "bob")}
    queries = {r["t"] for r in graph.execute_query("MATCH (q:Query) RETURN q.text AS t").records}
    assert queries == {"shoes"}
    dirty = {r["id"] for r in graph.execute_query("MATCH (i:Item:Dirty) RETURN i.id AS id").records}
    assert dirty == {"i1"}
    assert graph.execute_query("MATCH (:Item {id: 'i1'})<-[r]-() RETURN count(r) AS n").records[0]["n"] == 1
