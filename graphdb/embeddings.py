"""Embedding write-back and reads: every vector in Neo4j carries its model version and update time.

Vectors are stored as float32 arrays through ``db.create.setNodeVectorProperty`` so the vector indexes of
graphdb.schema (``item_embedding``, ``user_embedding``) serve them to analysts' Cypher.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import neo4j
from neo4j.exceptions import ServiceUnavailable, SessionExpired

from graphdb.errors import InvalidInput, Unavailable
from graphdb.schema import DIRTY, NODE_LABELS


@dataclass(frozen=True)
class EmbeddingRecord:
    id: str
    vector: list[float]
    model_version: str
    updated_at: float
    # Items: s_j = d_j^(-a-b) of the served model, what a server needs to embed a session (workers.user_side).
    in_scale: float | None = None


def _label(label: str) -> str:
    if label not in NODE_LABELS:
        raise InvalidInput(f"unknown node type {label!r}; expected one of {', '.join(NODE_LABELS)}")
    return label


def _write_query(label: str) -> str:
    # A row may carry the token of the change mark its vector answers: the mark is removed in the same
    # transaction if the token is unchanged (the SET holds the node's write lock), as graphdb.changes does.
    return f"""
UNWIND $rows AS r
MATCH (n:{label} {{id: r.id}})
CALL db.create.setNodeVectorProperty(n, 'embedding', r.vector)
SET n.emb_version = $version, n.emb_updated_at = $now, n.emb_in_scale = r.in_scale
WITH n, r.token IS NOT NULL AND n:{DIRTY} AND n.chg = r.token AS done
FOREACH (_ IN CASE WHEN done THEN [1] ELSE [] END | REMOVE n:{DIRTY}, n.dirty_since, n.dirty_at)
RETURN count(n) AS written, sum(CASE WHEN done THEN 1 ELSE 0 END) AS cleared
"""


def _page_query(label: str) -> str:
    return f"""
MATCH (n:{label})
WHERE n.id > $after AND n.embedding IS NOT NULL AND ($version IS NULL OR n.emb_version = $version)
RETURN n.id AS id, n.embedding AS vector, n.emb_version AS version, n.emb_updated_at AS updated_at,
       n.emb_in_scale AS in_scale
ORDER BY n.id
LIMIT $limit
"""


def _get_query(label: str) -> str:
    return f"""
MATCH (n:{label} {{id: $id}})
RETURN n.embedding AS vector, n.emb_version AS version, n.emb_updated_at AS updated_at
"""


_WRITE = {label: _write_query(label) for label in NODE_LABELS}
_PAGE = {label: _page_query(label) for label in NODE_LABELS}
_GET = {label: _get_query(label) for label in NODE_LABELS}


def write_embeddings(
    driver: neo4j.Driver, label: str, rows: Iterable[tuple[str, Sequence[float]]], model_version: str, **options: Any
) -> int:
    """Write vectors for existing nodes (unknown ids are skipped); returns how many were written. Options as
    `write_and_clear` (with ``tokens``, each written node's change mark is cleared in the same transaction)."""
    return write_and_clear(driver, label, rows, model_version, **options)[0]


def write_and_clear(
    driver: neo4j.Driver,
    label: str,
    rows: Iterable[tuple[str, Sequence[float]]],
    model_version: str,
    *,
    database: str = "neo4j",
    now: float | None = None,
    batch_size: int = 5000,
    tokens: Mapping[str, str] | None = None,
    in_scales: Mapping[str, float] | None = None,
) -> tuple[int, int]:
    """`write_embeddings`, returning (vectors written, marks cleared). ``in_scales``: item id -> the served
    model's ``in_scale`` of that vector (stored beside it; a vector written without one has none)."""
    query = _WRITE[_label(label)]
    now = time.time() if now is None else now
    tokens = tokens or {}
    scales = in_scales or {}
    written = cleared = 0
    batch: list[dict[str, Any]] = []

    def flush() -> tuple[int, int]:
        if not batch:
            return 0, 0
        rec = driver.execute_query(query, rows=batch, version=model_version, now=now, database_=database)
        return rec.records[0]["written"], rec.records[0]["cleared"]

    for node_id, vector in rows:
        scale = scales.get(node_id)
        batch.append(
            {
                "id": node_id,
                "vector": [float(x) for x in vector],
                "token": tokens.get(node_id),
                "in_scale": None if scale is None else float(scale),
            }
        )
        if len(batch) >= batch_size:
            w, c = flush()
            written, cleared, batch = written + w, cleared + c, []
    w, c = flush()
    return written + w, cleared + c


def iter_embeddings(
    driver: neo4j.Driver,
    label: str,
    *,
    model_version: str | None = None,
    database: str = "neo4j",
    batch_size: int = 10000,
) -> Iterator[EmbeddingRecord]:
    """Every stored vector of a label (optionally of one model version), in id order, page by page."""
    query = _PAGE[_label(label)]
    after = ""
    while True:
        records = driver.execute_query(
            query, after=after, version=model_version, limit=batch_size, database_=database, routing_=neo4j.RoutingControl.READ
        ).records
        for r in records:
            yield EmbeddingRecord(r["id"], list(r["vector"]), r["version"], r["updated_at"], r["in_scale"])
        if len(records) < batch_size:
            return
        after = records[-1]["id"]


def get_embedding(driver: neo4j.Driver, label: str, node_id: str, *, database: str = "neo4j") -> EmbeddingRecord | None:
    """The node's vector, or None if the node does not exist or has no vector yet."""
    try:
        records = driver.execute_query(_GET[_label(label)], id=node_id, database_=database, routing_=neo4j.RoutingControl.READ).records
    except (ServiceUnavailable, SessionExpired) as exc:
        raise Unavailable(f"Neo4j is not reachable: {exc}") from exc
    if not records or records[0]["vector"] is None:
        return None
    r = records[0]
    return EmbeddingRecord(node_id, list(r["vector"]), r["version"], r["updated_at"])
