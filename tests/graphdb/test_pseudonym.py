import time

from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise


def test_pseudonym_is_keyed_stable_and_hides_the_id():
    a = pseudonymise("k1", "alice@example.com")
    assert a == pseudonymise("k1", "alice@example.com")
    assert a != pseudonymise("k2", "alice@example.com")
    assert a != pseudonymise("k1", "bob@example.com")
    assert "alice" not in a and a.startswith("u_") and len(a) == 34


def test_external_user_ids_never_reach_the_graph(graph, graph_settings):
    ingest_events(
        graph, graph_settings, [{"event_id": "p1", "user_id": "alice@example.com", "type": "view", "item_id": "i1", "ts": time.time()}]
    )
    ids = graph.execute_query("MATCH (u:User) RETURN u.id AS id").records
    assert [r["id"] for r in ids] == [pseudonymise(graph_settings.pseudonym_key.get_secret_value(), "alice@example.com")]
    leaked = graph.execute_query(
        "MATCH (n) UNWIND keys(n) AS k WITH n[k] AS v WHERE toString(v) CONTAINS 'alice' RETURN count(*) AS n"
    )
    assert leaked.records[0]["n"] == 0
