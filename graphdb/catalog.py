"""Catalogue reads for serving: item facets for filters, popular items for cold start, a user's purchases.

Category facets include every ancestor, so filtering on "Electronics" keeps items filed under
"Electronics > Audio > Headphones"; the direct (leaf) categories the item is filed under come separately, for the
per-category caps of the ranking rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import neo4j
from neo4j.exceptions import ServiceUnavailable, SessionExpired

from graphdb.errors import Unavailable
from graphdb.feedback import NOT_INTERESTED, PURCHASED, Exclusions, counts, purchase_counts
from graphdb.schema import BRAND, CATEGORY, HAS_BRAND, IN_CATEGORY, ITEM, ITEM_INTERACTIONS, REL_FOR_EVENT, SUBCATEGORY_OF, USER

# Strength of each behaviour when ranking popular items: buying says more than looking.
POPULARITY_WEIGHTS = {
    REL_FOR_EVENT["view"]: 1.0,
    REL_FOR_EVENT["click"]: 1.0,
    REL_FOR_EVENT["add_to_cart"]: 3.0,
    REL_FOR_EVENT["purchase"]: 5.0,
    REL_FOR_EVENT["rate"]: 2.0,
}


@dataclass(frozen=True)
class ItemFacets:
    id: str
    category_ids: tuple[str, ...]  # the item's categories and all their ancestors
    brand_ids: tuple[str, ...]
    direct_category_ids: tuple[str, ...] = ()  # the categories the item is filed under (IN_CATEGORY), no ancestors


_FACETS_PAGE = f"""
MATCH (i:{ITEM})
WHERE i.id > $after
WITH i ORDER BY i.id LIMIT $limit
OPTIONAL MATCH (i)-[:{IN_CATEGORY}]->(d:{CATEGORY})
WITH i, collect(DISTINCT d.id) AS direct
OPTIONAL MATCH (i)-[:{IN_CATEGORY}]->(:{CATEGORY})-[:{SUBCATEGORY_OF}*0..]->(c:{CATEGORY})
WITH i, direct, collect(DISTINCT c.id) AS cats
OPTIONAL MATCH (i)-[:{HAS_BRAND}]->(b:{BRAND})
RETURN i.id AS id, cats, direct, collect(DISTINCT b.id) AS brands
ORDER BY id
"""

_FACETS_OF = f"""
UNWIND $ids AS item_id
MATCH (i:{ITEM} {{id: item_id}})
OPTIONAL MATCH (i)-[:{IN_CATEGORY}]->(d:{CATEGORY})
WITH i, collect(DISTINCT d.id) AS direct
OPTIONAL MATCH (i)-[:{IN_CATEGORY}]->(:{CATEGORY})-[:{SUBCATEGORY_OF}*0..]->(c:{CATEGORY})
WITH i, direct, collect(DISTINCT c.id) AS cats
OPTIONAL MATCH (i)-[:{HAS_BRAND}]->(b:{BRAND})
RETURN i.id AS id, cats, direct, collect(DISTINCT b.id) AS brands
"""


def _run(driver: neo4j.Driver, query: str, database: str, **params: Any) -> list[neo4j.Record]:
    try:
        records, _, _ = driver.execute_query(query, params, database_=database, routing_="r")
    except (ServiceUnavailable, SessionExpired) as exc:
        raise Unavailable(f"Neo4j is not reachable: {exc}") from exc
    return records


def iter_item_facets(driver: neo4j.Driver, *, database: str = "neo4j", batch_size: int = 20000) -> Iterator[ItemFacets]:
    """Every item's facets, paged by id."""
    after = ""
    while True:
        records = _run(driver, _FACETS_PAGE, database, after=after, limit=batch_size)
        yield from map(_facets, records)
        if len(records) < batch_size:
            return
        after = records[-1]["id"]


def item_facets(driver: neo4j.Driver, item_ids: Sequence[str], *, database: str = "neo4j") -> list[ItemFacets]:
    """Facets of the given items (unknown ids are left out)."""
    records = _run(driver, _FACETS_OF, database, ids=list(item_ids))
    return [_facets(r) for r in records]


def _facets(r: neo4j.Record) -> ItemFacets:
    return ItemFacets(r["id"], tuple(sorted(r["cats"])), tuple(sorted(r["brands"])), tuple(sorted(r["direct"])))


_REL_ALT = "|".join(ITEM_INTERACTIONS)
_POPULAR = f"""
MATCH (u:{USER})-[r:{_REL_ALT}]->(i:{ITEM})
WHERE r.last_ts >= $since AND {counts("u", "r", "i")}
WITH i, sum(coalesce(r.weight, toFloat(r.count), 1.0) * coalesce($weights[type(r)], 1.0)) AS score
ORDER BY score DESC, i.id
LIMIT $limit
RETURN i.id AS id, score
"""


def popular_items(driver: neo4j.Driver, *, since: float, limit: int, database: str = "neo4j") -> list[tuple[str, float]]:
    """Items ranked by weighted behaviour since ``since`` (unix seconds), best first; all time if none."""
    records = _run(driver, _POPULAR, database, since=since, limit=limit, weights=POPULARITY_WEIGHTS)
    if not records and since > 0:
        records = _run(driver, _POPULAR, database, since=0.0, limit=limit, weights=POPULARITY_WEIGHTS)
    return [(r["id"], float(r["score"])) for r in records]


# One read for both kinds of exclusion: serving asks it on every RecommendForUser.
_EXCLUSIONS = f"""
MATCH (u:{USER} {{id: $user}})-[r:{PURCHASED}|{NOT_INTERESTED}]->(i:{ITEM})
WHERE type(r) = '{NOT_INTERESTED}' OR {purchase_counts("u", "r", "i")}
RETURN type(r) = '{NOT_INTERESTED}' AS hidden, i.id AS id, r.last_ts AS at
ORDER BY at DESC, id
"""

_USER_EXISTS = f"MATCH (u:{USER} {{id: $user}}) RETURN count(u) AS n"


def shopper_exclusions(driver: neo4j.Driver, pseudonym: str, *, database: str = "neo4j") -> Exclusions:
    """The items the user bought (returns applied, graphdb.feedback) and hid; the user is given by pseudonym."""
    records = _run(driver, _EXCLUSIONS, database, user=pseudonym)
    bought = tuple(sorted(r["id"] for r in records if not r["hidden"]))
    return Exclusions(bought, tuple(r["id"] for r in records if r["hidden"]))  # hidden: newest first


def purchased_items(driver: neo4j.Driver, pseudonym: str, *, database: str = "neo4j") -> list[str]:
    """Ids of the items the user bought and has not returned since (the user is given by pseudonym)."""
    return list(shopper_exclusions(driver, pseudonym, database=database).bought)


def user_exists(driver: neo4j.Driver, pseudonym: str, *, database: str = "neo4j") -> bool:
    return bool(_run(driver, _USER_EXISTS, database, user=pseudonym)[0]["n"] > 0)


_LATEST_VERSION = f"""
MATCH (i:{ITEM})
WHERE i.emb_version IS NOT NULL
RETURN i.emb_version AS version, max(i.emb_updated_at) AS at
ORDER BY at DESC
LIMIT 1
"""


def latest_model_version(driver: neo4j.Driver, *, database: str = "neo4j") -> str | None:
    """The model version of the most recently written item vectors (None when there are none)."""
    records = _run(driver, _LATEST_VERSION, database)
    return records[0]["version"] if records else None
