"""The driver's routing path (``neo4j://``, as on a cluster or Aura) against the local single instance: the driver
fetches a routing table (this server is router, writer and reader), ingestion goes to the writer, and the reads
that say READ (``routing_=READ``) go to a reader, seeing the writes through the driver's bookmarks."""

from __future__ import annotations

import time

import neo4j
import pytest

from graphdb import recent
from graphdb.driver import connect
from graphdb.errors import Unavailable
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from graphdb.settings import Neo4jSettings


def test_a_neo4j_uri_routes_ingest_to_the_writer_and_reads_to_a_reader(stack, graph, graph_settings) -> None:
    port = stack.settings.neo4j_port
    settings = Neo4jSettings(uri=f"neo4j://127.0.0.1:{port}")
    driver = connect(settings)
    try:
        assert isinstance(driver, neo4j.Neo4jDriver)  # the routing driver, not the direct bolt:// one
        now = time.time()
        events = [
            {"event_id": f"route-{j}", "user_id": "router-shopper", "type": "view", "item_id": f"route-item-{j}", "ts": now - j}
            for j in range(3)
        ]
        result = ingest_events(driver, graph_settings, events, database=settings.database)
        assert (result.accepted, result.duplicates, result.rejected) == (3, 0, [])
        assert ingest_events(driver, graph_settings, events, database=settings.database).duplicates == 3

        # The routing table this driver fetched: the one instance, in every role, at its advertised address.
        records = driver.execute_query("CALL dbms.routing.getRoutingTable({}, $db)", db=settings.database).records
        servers = {s["role"]: s["addresses"] for s in records[0]["servers"]}
        assert servers == {role: [f"127.0.0.1:{port}"] for role in ("WRITE", "READ", "ROUTE")}

        # A read routed to a reader (graphdb.recent reads with routing_=READ) sees the write just made.
        user = pseudonymise(graph_settings.pseudonym_key.get_secret_value(), "router-shopper")
        edges, items = recent.recent_edges(driver, user, limit=10, database=settings.database)
        assert [e.item for e in edges] == [f"route-item-{j}" for j in range(3)] and items == 3  # newest first
        with driver.session(database=settings.database, default_access_mode=neo4j.READ_ACCESS) as session:
            n = session.execute_read(lambda tx: tx.run("MATCH (:Seen) RETURN count(*) AS n").single(strict=True)["n"])
        assert n == 3
    finally:
        driver.close()


def test_a_neo4j_uri_to_nothing_is_unavailable() -> None:
    from graphdb import localstack

    with pytest.raises(Unavailable, match="not reachable"):
        connect(Neo4jSettings(uri=f"neo4j://127.0.0.1:{localstack.free_port()}"))
