"""Which model version the graph's vectors are served from: one small node, the source of truth for workers.

``activate`` records the new version and remembers the one it replaced, so a roll-back is one more
``activate`` of the previous version (after its vectors are rebuilt, see ``workers.recompute.rebuild``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import neo4j

MODEL_STATE = "ModelState"


@dataclass(frozen=True)
class ActiveModel:
    version: str
    previous: str | None
    activated_at: float


_GET = f"MATCH (m:{MODEL_STATE} {{id: 'active'}}) RETURN m.version AS version, m.previous AS previous, m.at AS at"

_SET = f"""
MERGE (m:{MODEL_STATE} {{id: 'active'}})
SET m.previous = CASE WHEN m.version = $version THEN m.previous ELSE m.version END,
    m.version = $version, m.at = $now
RETURN m.version AS version, m.previous AS previous, m.at AS at
"""


def _model(record: neo4j.Record | None) -> ActiveModel | None:
    if record is None or record["version"] is None:
        return None
    return ActiveModel(record["version"], record["previous"], float(record["at"] or 0.0))


def active_model(driver: neo4j.Driver, *, database: str = "neo4j") -> ActiveModel | None:
    records = driver.execute_query(_GET, database_=database, routing_=neo4j.RoutingControl.READ).records
    return _model(records[0] if records else None)


def activate(driver: neo4j.Driver, version: str, *, database: str = "neo4j") -> ActiveModel:
    """Make ``version`` the active one (idempotent); returns the new state."""
    records = driver.execute_query(_SET, version=version, now=time.time(), database_=database).records
    model = _model(records[0])
    assert model is not None  # the query has just set the version
    return model
