"""The graph's schema: the one allow-list of labels and relationship types, and an idempotent migration.

Cypher cannot take labels or relationship types as parameters, so every query that needs one picks it from
the constants here; nothing from a request is ever spliced into a query string.
"""

from __future__ import annotations

import neo4j

from graphdb.errors import FailedPrecondition

# The behaviours and their relationship types (re-exported: no driver there, so the model package reads them too).
from graphdb.event_types import EVENT_TYPES as EVENT_TYPES
from graphdb.event_types import INTERACTION_TYPES as INTERACTION_TYPES
from graphdb.event_types import ITEM_INTERACTIONS as ITEM_INTERACTIONS
from graphdb.event_types import NEGATIVE_TYPES as NEGATIVE_TYPES
from graphdb.event_types import REL_FOR_EVENT as REL_FOR_EVENT
from graphdb.settings import GraphSettings

USER, ITEM, CATEGORY, BRAND, QUERY = "User", "Item", "Category", "Brand", "Query"
NODE_LABELS = (USER, ITEM, CATEGORY, BRAND, QUERY)

# Marks a node whose neighbourhood changed since its vector was last computed (see graphdb.changes).
DIRTY = "Dirty"
# Marks a user whose vector was recomputed and whose ego vector (SimilarUsers) is not yet (see graphdb.ego).
EGO_DIRTY = "EgoDirty"
# One node per applied event id, so a replayed event is recognised (see graphdb.ingest).
SEEN = "Seen"


IN_CATEGORY = "IN_CATEGORY"  # (Item)-[:IN_CATEGORY]->(Category)
HAS_BRAND = "HAS_BRAND"  # (Item)-[:HAS_BRAND]->(Brand)
SUBCATEGORY_OF = "SUBCATEGORY_OF"  # (Category)-[:SUBCATEGORY_OF]->(parent Category)
ALSO_VIEWED = "ALSO_VIEWED"  # (Item)-[:ALSO_VIEWED]->(Item)
STRUCTURE_TYPES = (IN_CATEGORY, HAS_BRAND, SUBCATEGORY_OF, ALSO_VIEWED)
REL_TYPES = INTERACTION_TYPES + STRUCTURE_TYPES

EMBEDDING_INDEXES = {ITEM: "item_embedding", USER: "user_embedding"}

SCHEMA_VERSION = 1

_CONSTRAINTS = [
    f"CREATE CONSTRAINT {label.lower()}_id IF NOT EXISTS FOR (n:{label}) REQUIRE n.id IS UNIQUE" for label in (*NODE_LABELS, SEEN)
]
_INDEXES = [
    f"CREATE INDEX seen_at IF NOT EXISTS FOR (n:{SEEN}) ON (n.at)",
    f"CREATE INDEX dirty_since IF NOT EXISTS FOR (n:{DIRTY}) ON (n.dirty_since)",
    f"CREATE INDEX dirty_at IF NOT EXISTS FOR (n:{DIRTY}) ON (n.dirty_at)",  # the newest marks (graphdb.changes)
    f"CREATE INDEX dirty_slot IF NOT EXISTS FOR (n:{DIRTY}) ON (n.slot)",  # a partition's marks (graphdb.slots)
    f"CREATE INDEX ego_dirty_since IF NOT EXISTS FOR (n:{EGO_DIRTY}) ON (n.ego_since)",
]
_VECTOR_INDEX = (
    "CREATE VECTOR INDEX {name} IF NOT EXISTS FOR (n:{label}) ON n.embedding "
    "OPTIONS {{indexConfig: {{`vector.dimensions`: {dim}, `vector.similarity_function`: 'cosine'}}}}"
)
_SHOW_VECTOR_INDEXES = (
    "SHOW INDEXES YIELD name, type, options WHERE type = 'VECTOR' RETURN name, options.indexConfig['vector.dimensions'] AS dim"
)
_SET_VERSION = "MERGE (s:SchemaInfo {id: 'schema'}) SET s.version = $version RETURN s.version AS version"


def migrate(driver: neo4j.Driver, settings: GraphSettings, database: str = "neo4j") -> int:
    """Create constraints and indexes if missing; safe to run any number of times. Returns the schema version."""
    dim = int(settings.embedding_dim)  # validated int; DDL options cannot be parameters
    existing = {r["name"]: r["dim"] for r in driver.execute_query(_SHOW_VECTOR_INDEXES, database_=database).records}
    for name in EMBEDDING_INDEXES.values():
        if name in existing and existing[name] is not None and int(existing[name]) != dim:
            raise FailedPrecondition(
                f"vector index {name} has dimension {existing[name]} but IG_EMBEDDING_DIM is {dim}; "
                f"drop it (DROP INDEX {name}) and re-embed, or set the matching dimension"
            )
    for statement in _CONSTRAINTS + _INDEXES:
        driver.execute_query(statement, database_=database)
    for label, name in EMBEDDING_INDEXES.items():
        driver.execute_query(_VECTOR_INDEX.format(name=name, label=label, dim=dim), database_=database)
    driver.execute_query("CALL db.awaitIndexes(300)", database_=database)
    from graphdb.slots import fill_slots  # imports graphdb.marks, which imports this module

    fill_slots(driver, database=database)  # marks written before slots existed
    record = driver.execute_query(_SET_VERSION, version=SCHEMA_VERSION, database_=database).records[0]
    return int(record["version"])


def wipe(driver: neo4j.Driver, database: str = "neo4j", batch: int = 20000) -> None:
    """Delete every node and relationship (schema stays). For tests and ``stack reset``."""
    query = "MATCH (n) WITH n LIMIT $batch DETACH DELETE n RETURN count(*) AS deleted"
    while driver.execute_query(query, batch=batch, database_=database).records[0]["deleted"]:
        pass
