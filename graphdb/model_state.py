"""Which model version the graph's vectors are served from: one small node, the source of truth for workers.

``activate`` records the new version and remembers the one it replaced, so a roll-back is one more
``activate`` of the previous version (after its vectors are rebuilt, see ``workers.recompute.rebuild``).

Each version also has a card (``UserSideCard``, one ``ModelCard`` node per version): what a server needs, besides
the item vectors and their ``in_scale``, to embed a session with the version's user side (``workers.user_side``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import neo4j
import numpy as np

MODEL_STATE = "ModelState"
MODEL_CARD = "ModelCard"


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


@dataclass(frozen=True, eq=False)
class UserSideCard:
    """A model version's user side: ``sign`` [dim] of its spectral filter and the settings that pick and weigh a
    user's items (the neighbour cap, the decay half-life that ranks them, the recency weights)."""

    version: str
    sign: np.ndarray  # float32 [dim], read-only; built from any sequence of numbers
    user_cap: int
    half_life_days: float
    recency_boost: float
    recency_scale: float
    # ml.signals: behaviour strength ** power and the half-life decay of a user's items (0 = off)
    behaviour_power: float = 0.0
    decay_half_life_days: float = 0.0
    # the behaviour types' weights in the strength (relationship type -> weight; empty: every type weighs 1)
    behaviour_weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # an array once, not a list per request: converting 1,024 Python floats costs ~30 us (bench.serving)
        sign = np.array(self.sign, np.float32)
        sign.flags.writeable = False
        object.__setattr__(self, "sign", sign)


_SET_CARD = f"""
MERGE (c:{MODEL_CARD} {{version: $version}})
SET c.sign = $sign, c.user_cap = $user_cap, c.half_life_days = $half_life_days,
    c.recency_boost = $recency_boost, c.recency_scale = $recency_scale,
    c.behaviour_power = $behaviour_power, c.decay_half_life_days = $decay_half_life_days,
    c.behaviour_kinds = $behaviour_kinds, c.behaviour_weights = $behaviour_weights
"""

_GET_CARD = f"""
MATCH (c:{MODEL_CARD} {{version: $version}})
RETURN c.sign AS sign, c.user_cap AS user_cap, c.half_life_days AS half_life_days,
       c.recency_boost AS recency_boost, c.recency_scale AS recency_scale,
       coalesce(c.behaviour_power, 0.0) AS behaviour_power, coalesce(c.decay_half_life_days, 0.0) AS decay_half_life_days,
       coalesce(c.behaviour_kinds, []) AS behaviour_kinds, coalesce(c.behaviour_weights, []) AS behaviour_weights
"""


def write_card(driver: neo4j.Driver, card: UserSideCard, *, database: str = "neo4j") -> None:
    """Records (or replaces, idempotently) the card of ``card.version``."""
    driver.execute_query(
        _SET_CARD,
        version=card.version,
        sign=[float(x) for x in card.sign],
        user_cap=int(card.user_cap),
        half_life_days=float(card.half_life_days),
        recency_boost=float(card.recency_boost),
        recency_scale=float(card.recency_scale),
        behaviour_power=float(card.behaviour_power),
        decay_half_life_days=float(card.decay_half_life_days),
        behaviour_kinds=sorted(card.behaviour_weights),
        behaviour_weights=[float(card.behaviour_weights[k]) for k in sorted(card.behaviour_weights)],
        database_=database,
    )


def read_card(driver: neo4j.Driver, version: str, *, database: str = "neo4j") -> UserSideCard | None:
    """The card of ``version``, or None when no worker has written one."""
    records = driver.execute_query(_GET_CARD, version=version, database_=database, routing_=neo4j.RoutingControl.READ).records
    if not records:
        return None
    r = records[0]
    return UserSideCard(
        version,
        np.asarray(r["sign"], np.float32),
        int(r["user_cap"]),
        float(r["half_life_days"]),
        float(r["recency_boost"]),
        float(r["recency_scale"]),
        float(r["behaviour_power"]),
        float(r["decay_half_life_days"]),
        {str(k): float(w) for k, w in zip(r["behaviour_kinds"], r["behaviour_weights"])},
    )
