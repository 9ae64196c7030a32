"""What the graph holds: counts per label and relationship type, for the CLI, the demo and the loader tests."""

from __future__ import annotations

import neo4j

from graphdb.schema import DIRTY, NODE_LABELS, REL_TYPES


def _count_nodes(label: str) -> str:
    return f"MATCH (n:{label}) RETURN count(n) AS n"


def _count_rels(rel: str) -> str:
    return f"MATCH ()-[r:{rel}]->() RETURN count(r) AS n, coalesce(sum(r.count), 0) AS events"


_NODES = {label: _count_nodes(label) for label in (*NODE_LABELS, DIRTY)}
_RELS = {rel: _count_rels(rel) for rel in REL_TYPES}


def graph_counts(driver: neo4j.Driver, *, database: str = "neo4j") -> dict[str, dict[str, int]]:
    """{"nodes": {label: n}, "relationships": {type: n}, "events": {type: sum of counts}} (zeros omitted)."""
    nodes = {label: driver.execute_query(q, database_=database).records[0]["n"] for label, q in _NODES.items()}
    rels, events = {}, {}
    for rel, q in _RELS.items():
        r = driver.execute_query(q, database_=database).records[0]
        rels[rel], events[rel] = r["n"], r["events"]
    return {
        "nodes": {k: v for k, v in nodes.items() if v},
        "relationships": {k: v for k, v in rels.items() if v},
        "events": {k: v for k, v in events.items() if v},
    }
