"""Reasons for recommended items, read from the live graph: one batched, parameterised query per call.

Per recommended item, at most one reason of each kind, each a fact one Cypher query in docs/analysts.md
("Explanation: ...") checks:

- bought together: the item and one of the shopper's own items X were both bought by N shoppers (N at least
  ``min_shoppers``; a count, never who they are). X is the shopper's item with the largest N (ties: id);
- category: the item is in category C (its category or an ancestor) where the shopper bought N items (N at least
  ``min_category_items``); the most specific such C (then the largest N, then id);
- search: the item's title contains a word (``MIN_WORD_CHARS`` or longer) of one of the shopper's recent searches;
  the most recent such search.

For SimilarItems, relative to the asked item A instead of a shopper: bought together with A by N shoppers, and the
most specific category A and the item share.

The cost is bounded by caps on what is read of the shopper: the ``max_own_items`` most recent items they touched
(and as many of their purchases) and their ``max_queries`` most recent searches. Counts of category purchases are
over those, so for a shopper with more purchases than the cap the analysts' query, which counts all of them,
gives N or more. ``for_items`` takes the shopper's items and searches from the caller (an anonymous session)
instead of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import neo4j
from neo4j.exceptions import ClientError, ServiceUnavailable, SessionExpired, TransientError

from graphdb.errors import Unavailable
from graphdb.schema import CATEGORY, IN_CATEGORY, ITEM, ITEM_INTERACTIONS, QUERY, REL_FOR_EVENT, SUBCATEGORY_OF, USER

BOUGHT_TOGETHER, CATEGORY_YOU_BUY, RECENT_SEARCH, SAME_CATEGORY = "bought_together", "category", "search", "same_category"
# Shorter words ("a", "of") would match almost any title.
MIN_WORD_CHARS = 3

_PURCHASED = REL_FOR_EVENT["purchase"]
_SEARCHED = REL_FOR_EVENT["search"]
_TOUCHED = "|".join(ITEM_INTERACTIONS)
_CATEGORIES_OF = f"-[:{IN_CATEGORY}]->(:{CATEGORY})-[:{SUBCATEGORY_OF}*0..]->"


@dataclass(frozen=True)
class ExplainLimits:
    max_own_items: int = 50
    max_queries: int = 10
    min_shoppers: int = 2
    min_category_items: int = 2
    timeout_s: float = 2.0


@dataclass(frozen=True)
class Reason:
    kind: str
    text: str
    item_id: str = ""
    count: int = 0
    category_id: str = ""
    query: str = ""


# The shopper's side, from their own edges: recent items, recent purchases, recent searches (most recent first).
_SHOPPER_FROM_GRAPH = f"""
MATCH (u:{USER} {{id: $user}})
CALL (u) {{
  MATCH (u)-[r:{_TOUCHED}]->(x:{ITEM})
  WITH x, max(r.last_ts) AS ts
  ORDER BY ts DESC, x.id LIMIT $max_own
  RETURN collect(x) AS own
}}
CALL (u) {{
  MATCH (u)-[r:{_PURCHASED}]->(x:{ITEM})
  WITH x ORDER BY r.last_ts DESC, x.id LIMIT $max_own
  RETURN collect(x) AS bought
}}
CALL (u) {{
  MATCH (u)-[r:{_SEARCHED}]->(q:{QUERY})
  WITH q ORDER BY r.last_ts DESC, q.id LIMIT $max_queries
  RETURN collect(q.text) AS queries
}}
"""

# The same, given by the caller (already capped and ordered, most recent first).
_SHOPPER_GIVEN = f"""
CALL () {{
  UNWIND range(0, size($own) - 1) AS n
  MATCH (x:{ITEM} {{id: $own[n]}})
  WITH x ORDER BY n
  RETURN collect(x) AS own
}}
CALL () {{
  UNWIND $bought AS id
  MATCH (x:{ITEM} {{id: id}})
  RETURN collect(x) AS bought
}}
WITH own, bought, $queries AS queries
"""

# Per recommended item: the best bought-together partner among the shopper's items (from the item's buyers and
# their purchases: starting from the shopper's items, whose buyers' purchases are checked for the item, read ~100x
# more of the graph on amazon-office), the item's categories (with
# ancestors), the first of the shopper's searches its title matches. ``often``: the categories the shopper bought
# at least $min_category items in (the same for every row).
_PER_ITEM = f"""
CALL (bought) {{
  UNWIND bought AS x
  MATCH (x){_CATEGORIES_OF}(c:{CATEGORY})
  WITH c, count(DISTINCT x) AS n WHERE n >= $min_category
  RETURN collect([c.id, n]) AS often
}}
UNWIND $items AS item_id
MATCH (i:{ITEM} {{id: item_id}})
RETURN i.id AS id, often,
  COLLECT {{
    MATCH (i)<-[:{_PURCHASED}]-(s:{USER})-[:{_PURCHASED}]->(x:{ITEM})
    WHERE x IN own AND x <> i
    WITH x, count(DISTINCT s) AS n WHERE n >= $min_shoppers
    ORDER BY n DESC, x.id LIMIT 1
    RETURN [x.id, coalesce(x.title, x.id), n]
  }} AS together,
  COLLECT {{ MATCH (i){_CATEGORIES_OF}(c:{CATEGORY}) RETURN DISTINCT [c.id, c.depth] }} AS categories,
  [q IN queries WHERE any(w IN split(q, ' ') WHERE size(w) >= $min_word AND toLower(coalesce(i.title, '')) CONTAINS w)][0]
    AS query
"""

_FOR_USER = _SHOPPER_FROM_GRAPH + _PER_ITEM
_FOR_ITEMS = _SHOPPER_GIVEN + _PER_ITEM

# SimilarItems: relative to the asked item.
_FOR_ASKED_ITEM = f"""
MATCH (a:{ITEM} {{id: $asked}})
WITH a, COLLECT {{ MATCH (a){_CATEGORIES_OF}(c:{CATEGORY}) RETURN DISTINCT c }} AS asked_categories
UNWIND $items AS item_id
MATCH (i:{ITEM} {{id: item_id}})
RETURN i.id AS id, coalesce(a.title, a.id) AS asked_title,
  COUNT {{ (a)<-[:{_PURCHASED}]-(:{USER})-[:{_PURCHASED}]->(i) }} AS together,
  COLLECT {{
    MATCH (i){_CATEGORIES_OF}(c:{CATEGORY}) WHERE c IN asked_categories
    WITH DISTINCT c ORDER BY c.depth DESC, c.id LIMIT 1
    RETURN c.id
  }} AS shared
"""


def _shoppers(n: int) -> str:
    return "1 shopper" if n == 1 else f"{n} shoppers"


def _read(driver: neo4j.Driver, query: str, limits: ExplainLimits, database: str, params: dict[str, Any]) -> list[neo4j.Record]:
    try:
        records, _, _ = driver.execute_query(neo4j.Query(query, timeout=limits.timeout_s), params, database_=database, routing_="r")
    except (ServiceUnavailable, SessionExpired, TransientError) as exc:
        raise Unavailable(f"Neo4j could not read the explanations: {exc}") from exc
    except ClientError as exc:
        if "TimedOut" not in (exc.code or ""):
            raise
        raise Unavailable(f"reading the explanations took longer than {limits.timeout_s} s; retry, or ask without explain") from exc
    return records


def _shopper_reasons(records: list[neo4j.Record]) -> dict[str, list[Reason]]:
    out: dict[str, list[Reason]] = {}
    for r in records:
        reasons = []
        if r["together"]:
            x, label, n = r["together"][0]
            reasons.append(Reason(BOUGHT_TOGETHER, f"bought together with {label} by {_shoppers(n)}", item_id=x, count=int(n)))
        often = {c: int(n) for c, n in r["often"]}
        mine = [(depth, often[c], c) for c, depth in r["categories"] if c in often]
        if mine:  # the most specific category, then the one bought most often, then by id
            _, n, c = min(mine, key=lambda m: (-m[0], -m[1], m[2]))
            reasons.append(Reason(CATEGORY_YOU_BUY, f"in category {c} you often buy ({n} of your purchases)", count=n, category_id=c))
        if r["query"] is not None:
            reasons.append(Reason(RECENT_SEARCH, f'similar to your recent search "{r["query"]}"', query=r["query"]))
        if reasons:
            out[r["id"]] = reasons
    return out


def _shopper_params(limits: ExplainLimits, items: Sequence[str]) -> dict[str, Any]:
    return {
        "items": list(items),
        "max_own": limits.max_own_items,
        "max_queries": limits.max_queries,
        "min_shoppers": limits.min_shoppers,
        "min_category": limits.min_category_items,
        "min_word": MIN_WORD_CHARS,
    }


def for_user(
    driver: neo4j.Driver, pseudonym: str, items: Sequence[str], limits: ExplainLimits, *, database: str = "neo4j"
) -> dict[str, list[Reason]]:
    """item id -> its reasons (items without any are left out), for the shopper with this pseudonym."""
    if not items:
        return {}
    records = _read(driver, _FOR_USER, limits, database, {"user": pseudonym, **_shopper_params(limits, items)})
    return _shopper_reasons(records)


def for_items(
    driver: neo4j.Driver,
    items: Sequence[str],
    limits: ExplainLimits,
    *,
    own: Sequence[str],
    bought: Sequence[str] = (),
    queries: Sequence[str] = (),
    database: str = "neo4j",
) -> dict[str, list[Reason]]:
    """As ``for_user``, for a shopper given by their items (most recent first), purchases and normalised search
    texts (most recent first) rather than by their edges: an anonymous session. Caps apply as for a stored user."""
    if not items:
        return {}
    params = _shopper_params(limits, items)
    params.update(
        own=list(dict.fromkeys(own))[: limits.max_own_items],
        bought=list(dict.fromkeys(bought))[: limits.max_own_items],
        queries=list(dict.fromkeys(queries))[: limits.max_queries],
    )
    return _shopper_reasons(_read(driver, _FOR_ITEMS, limits, database, params))


def for_similar(
    driver: neo4j.Driver, asked: str, items: Sequence[str], limits: ExplainLimits, *, database: str = "neo4j"
) -> dict[str, list[Reason]]:
    """item id -> its reasons relative to the asked item (SimilarItems)."""
    if not items:
        return {}
    records = _read(driver, _FOR_ASKED_ITEM, limits, database, {"asked": asked, "items": list(items)})
    out: dict[str, list[Reason]] = {}
    for r in records:
        reasons = []
        n, label = int(r["together"]), r["asked_title"]
        if n >= limits.min_shoppers:
            reasons.append(Reason(BOUGHT_TOGETHER, f"bought together with {label} by {_shoppers(n)}", item_id=asked, count=n))
        if r["shared"]:
            c = r["shared"][0]
            reasons.append(Reason(SAME_CATEGORY, f"in {c}, like {label}", item_id=asked, category_id=c))
        if reasons:
            out[r["id"]] = reasons
    return out
