"""Users' ego-graph vectors (graph-level embeddings of their interest subgraphs) and the similar-users search.

Workers write each user's ego vector with its model version (``ego``, ``ego_version``, ``ego_updated_at``) after
they compute the user vector, in rounds of their own: a round that writes user vectors marks those users
(``EgoDirty``, with a fresh token ``ego_chg`` and the oldest ``ego_since``, in its transaction), and an ego round
reads the oldest marks, computes from the graph as it is then, and writes each vector only if the token is
unchanged, clearing the mark with it (a user recomputed meanwhile keeps a mark, so the newer graph is read next
time; the same compare-and-clear as graphdb.changes). A vector index (``user_ego``, cosine) serves "users nearest to this one"
to the server's SimilarUsers and to analysts. A forgotten user's node is deleted with its vector, so it can
never be an answer. The index's width is the vectors' (the ego model's), created on first write.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import neo4j
from neo4j.exceptions import ServiceUnavailable, SessionExpired

from graphdb.errors import NotFound, Unavailable
from graphdb.marks import slot_expr
from graphdb.schema import EGO_DIRTY, USER

INDEX = "user_ego"

_SHOW = "SHOW INDEXES YIELD name, options WHERE name = $name RETURN options.indexConfig['vector.dimensions'] AS dim"
_CREATE = (
    f"CREATE VECTOR INDEX {INDEX} IF NOT EXISTS FOR (n:{USER}) ON n.ego "
    "OPTIONS {{indexConfig: {{`vector.dimensions`: {dim}, `vector.similarity_function`: 'cosine'}}}}"
)
_DROP = f"DROP INDEX {INDEX} IF EXISTS"

_WRITE = f"""
UNWIND $rows AS r
MATCH (n:{USER} {{id: r.id}})
CALL db.create.setNodeVectorProperty(n, 'ego', r.vector)
SET n.ego_version = $version
RETURN count(n) AS written
"""

_CLEAR = f"UNWIND $ids AS id MATCH (n:{USER} {{id: id}}) REMOVE n.ego, n.ego_version"

# Set in the transaction that writes the users' vectors (graphdb.round_commit): a new token each time, so an ego
# round that read an older one neither writes nor clears; ``ego_since`` keeps the oldest, which orders the rounds.
MARK = f"""
UNWIND $ids AS id
MATCH (n:{USER} {{id: id}})
SET n:{EGO_DIRTY}, n.ego_chg = randomUUID(), n.ego_since = coalesce(n.ego_since, $now)
"""

# One partition's (`workers.partitions`: slot % P = p), the slot its user's change marks carry; computed when
# missing, so no ego mark is outside every partition.
_READ_MARKS = f"""
MATCH (n:{EGO_DIRTY})
WHERE $partitions = 1 OR coalesce(n.slot, {slot_expr("n")}) % $partitions = $index
WITH n ORDER BY n.ego_since, n.id
LIMIT $limit
RETURN collect(n.id) AS ids, collect(n.ego_chg) AS tokens
"""

_COUNT_MARKS = f"MATCH (n:{EGO_DIRTY}) RETURN count(n) AS n"

# The SET/REMOVE of a throw-away property takes the node's write lock before the token is compared (graphdb.changes).
_LOCKED = f"""
UNWIND $rows AS r
MATCH (n:{USER} {{id: r.id}})
SET n._lock = true
REMOVE n._lock
WITH n, r WHERE n:{EGO_DIRTY} AND n.ego_chg = r.token
"""
# Only over a user vector of the same version: an ego round of the previous version that commits after a roll-out
# wrote the user's new vector leaves the mark for the new version's round (ego rounds hold no recompute lock).
_SAME_VERSION = "  AND n.emb_version = $version\n"
_WRITE_MARKED = (
    _LOCKED
    + _SAME_VERSION
    + f"""CALL db.create.setNodeVectorProperty(n, 'ego', r.vector)
SET n.ego_version = $version, n.ego_updated_at = $now
REMOVE n:{EGO_DIRTY}, n.ego_chg, n.ego_since
RETURN count(n) AS n
"""
)
_CLEAR_MARKED = (
    _LOCKED
    + _SAME_VERSION
    + f"""REMOVE n:{EGO_DIRTY}, n.ego_chg, n.ego_since, n.ego, n.ego_version
SET n.ego_updated_at = $now
RETURN count(n) AS n
"""
)
_DROP_MARKS = _LOCKED + f"REMOVE n:{EGO_DIRTY}, n.ego_chg, n.ego_since\nRETURN count(n) AS n\n"

_GET = f"MATCH (u:{USER} {{id: $id}}) RETURN u.ego AS vector, u.ego_version AS version"
_GET_MANY = f"""
UNWIND $ids AS id
MATCH (u:{USER} {{id: id}})
WHERE u.ego IS NOT NULL
RETURN u.id AS id, u.ego AS vector, u.ego_version AS version
"""

# The index is approximate (HNSW over a quantised copy, docs/analysts.md): it proposes $fetch candidates, ranked
# here by the exact `vector.similarity.cosine`, which is (1 + cos) / 2; answers carry the cosine itself.
_NEAREST = f"""
CALL db.index.vector.queryNodes('{INDEX}', $fetch, $vector) YIELD node
WITH node
WHERE node.id <> $id AND node.ego_version = $version
WITH node, 2 * vector.similarity.cosine(node.ego, $vector) - 1 AS score
RETURN node.id AS id, score
ORDER BY score DESC, id
LIMIT $k
"""

_ready: dict[tuple[int, str], int] = {}  # (driver, database) -> the index width known to exist


@dataclass(frozen=True)
class SimilarUser:
    pseudonym: str
    score: float


def ensure_index(driver: neo4j.Driver, dim: int, *, database: str = "neo4j") -> None:
    """The ``user_ego`` index at width ``dim``; one of another width (a model with another ego width) is
    replaced: the vectors of the new model are the only ones served."""
    key = (id(driver), database)
    if _ready.get(key) == dim:
        return
    rows = driver.execute_query(_SHOW, name=INDEX, database_=database).records
    if rows and rows[0]["dim"] is not None and int(rows[0]["dim"]) != dim:
        driver.execute_query(_DROP, database_=database)
    driver.execute_query(_CREATE.format(dim=int(dim)), database_=database)
    driver.execute_query("CALL db.awaitIndexes(300)", database_=database)
    _ready[key] = dim


def write_ego_vectors(
    driver: neo4j.Driver,
    rows: Iterable[tuple[str, Sequence[float]]],
    model_version: str,
    *,
    database: str = "neo4j",
    batch_size: int = 5000,
) -> int:
    """Store the users' ego vectors with the model version (unknown users are skipped); returns how many."""
    written, batch, dim = 0, [], 0
    for user_id, vector in rows:
        batch.append({"id": user_id, "vector": [float(x) for x in vector]})
        dim = len(batch[-1]["vector"])
        if len(batch) >= batch_size:
            ensure_index(driver, dim, database=database)
            written += driver.execute_query(_WRITE, rows=batch, version=model_version, database_=database).records[0]["written"]
            batch = []
    if batch:
        ensure_index(driver, dim, database=database)
        written += driver.execute_query(_WRITE, rows=batch, version=model_version, database_=database).records[0]["written"]
    return written


@dataclass(frozen=True)
class EgoMark:
    id: str  # the user
    token: str


@dataclass
class EgoCounts:
    written: int = 0  # ego vectors written (their marks cleared with them)
    removed: int = 0  # users left without items: vector removed, mark cleared
    dropped: int = 0  # marks cleared without a vector (a version without an ego model)
    stale: int = 0  # marks whose token changed meanwhile (or whose user vector is another version's): kept


def read_ego_marks(driver: neo4j.Driver, *, limit: int, partition: tuple[int, int] = (0, 1), database: str = "neo4j") -> list[EgoMark]:
    """The oldest ``limit`` ego marks of ``partition`` (index, partitions; the default: every mark)."""
    index, partitions = partition
    r = driver.execute_query(
        _READ_MARKS,
        limit=limit,
        index=index,
        partitions=partitions,
        database_=database,
        routing_=neo4j.RoutingControl.READ,
    ).records[0]
    return [EgoMark(i, t) for i, t in zip(r["ids"], r["tokens"]) if i is not None and t is not None]


def count_ego_marks(driver: neo4j.Driver, *, database: str = "neo4j") -> int:
    return int(driver.execute_query(_COUNT_MARKS, database_=database).records[0]["n"])


def commit_ego(
    driver: neo4j.Driver,
    marks: Sequence[EgoMark],
    vectors: Mapping[str, Sequence[float] | None],
    model_version: str,
    *,
    database: str = "neo4j",
    now: float | None = None,
) -> EgoCounts:
    """One ego round's writes in one transaction: for each mark whose token is unchanged, its user's vector from
    ``vectors`` (None: the user has no items, so no vector), the mark cleared with it; a mark whose user is not in
    ``vectors`` is only cleared (the version has no ego model). A mark whose token changed, or whose user's stored
    vector is of another version than ``model_version``, stays."""
    now = time.time() if now is None else now
    rows: dict[str, list[dict[str, Any]]] = {"write": [], "remove": [], "drop": []}
    for m in sorted(marks, key=lambda m: m.id):  # a fixed lock order avoids deadlocks
        if m.id not in vectors:
            rows["drop"].append({"id": m.id, "token": m.token})
        elif (v := vectors[m.id]) is None:
            rows["remove"].append({"id": m.id, "token": m.token})
        else:
            rows["write"].append({"id": m.id, "token": m.token, "vector": [float(x) for x in v]})
    if rows["write"]:
        ensure_index(driver, len(rows["write"][0]["vector"]), database=database)  # a schema change: outside the write

    def work(tx: neo4j.ManagedTransaction) -> EgoCounts:
        out = EgoCounts()
        for key, query in (("write", _WRITE_MARKED), ("remove", _CLEAR_MARKED), ("drop", _DROP_MARKS)):
            if rows[key]:
                n = int(tx.run(query, rows=rows[key], version=model_version, now=now).single(strict=True)["n"])
                setattr(out, {"write": "written", "remove": "removed", "drop": "dropped"}[key], n)
        out.stale = len(marks) - out.written - out.removed - out.dropped
        return out

    if not marks:
        return EgoCounts()
    with driver.session(database=database) as session:
        return session.execute_write(work)


def stored_ego_vectors(
    driver: neo4j.Driver, user_ids: Sequence[str], *, database: str = "neo4j"
) -> dict[str, tuple[list[float], str]]:
    """user id -> (ego vector, model version) of those of ``user_ids`` that have one."""
    rows = driver.execute_query(_GET_MANY, ids=list(user_ids), database_=database, routing_=neo4j.RoutingControl.READ).records
    return {r["id"]: (list(r["vector"]), r["version"]) for r in rows}


def clear_ego_vectors(driver: neo4j.Driver, user_ids: Sequence[str], *, database: str = "neo4j") -> None:
    """Remove the ego vectors of users left without items (an empty ego-graph says nothing about interests)."""
    if user_ids:
        driver.execute_query(_CLEAR, ids=list(user_ids), database_=database)


def similar_users(driver: neo4j.Driver, pseudonym: str, k: int, model_version: str, *, database: str = "neo4j") -> list[SimilarUser]:
    """The ``k`` users nearest to this one by ego vector of ``model_version`` (best first, ties by pseudonym);
    `NotFound` when the user has no ego vector of that version."""
    read = neo4j.RoutingControl.READ
    try:
        rec = driver.execute_query(_GET, id=pseudonym, database_=database, routing_=read).records
        if not rec or rec[0]["vector"] is None or rec[0]["version"] != model_version:
            raise NotFound(f"user has no interest-graph vector of model {model_version!r} yet")
        # candidates: a few times k, as the user and (during a roll-out) vectors of another version are among them
        rows = driver.execute_query(
            _NEAREST,
            id=pseudonym,
            vector=list(rec[0]["vector"]),
            version=model_version,
            fetch=4 * k + 10,
            k=k,
            database_=database,
            routing_=read,
        ).records
    except (ServiceUnavailable, SessionExpired) as exc:
        raise Unavailable(f"Neo4j is not reachable: {exc}") from exc
    return [SimilarUser(r["id"], float(r["score"])) for r in rows]
