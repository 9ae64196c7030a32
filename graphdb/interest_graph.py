"""One shopper's interest graph as analysts look at it: the items they touched (with how), those items'
brands and categories up to the root, and their searches. Read with parameterised Cypher; drawn by
``interest graph picture`` (cli/picture.py)."""

from __future__ import annotations

from dataclasses import dataclass

import neo4j

from graphdb.errors import InvalidInput, NotFound

# Items by the user's latest behaviour towards them; one row per item with each behaviour's event count.
_ITEMS = """
MATCH (u:User {id: $user})-[r:VIEWED|CLICKED|ADDED_TO_CART|PURCHASED|RATED]->(i:Item)
WITH i, collect([type(r), r.count]) AS behaviours, max(r.last_ts) AS last_ts
ORDER BY last_ts DESC, i.id
LIMIT $max_items
OPTIONAL MATCH (i)-[:HAS_BRAND]->(b:Brand)
OPTIONAL MATCH (i)-[:IN_CATEGORY]->(c:Category)
WITH i, behaviours, last_ts, b, collect(c.id) AS categories
RETURN i.id AS item, i.title AS title, behaviours, b.name AS brand, categories
ORDER BY last_ts DESC, item
"""

# The categories and every ancestor, each with its parent, so the picture shows the tree they hang from.
_CATEGORIES = """
UNWIND $categories AS id
MATCH (:Category {id: id})-[:SUBCATEGORY_OF*0..]->(c:Category)
OPTIONAL MATCH (c)-[:SUBCATEGORY_OF]->(parent:Category)
RETURN DISTINCT c.id AS category, c.name AS name, parent.id AS parent
ORDER BY category
"""

_SEARCHES = """
MATCH (:User {id: $user})-[s:SEARCHED]->(q:Query)
RETURN q.text AS text, s.count AS searches
ORDER BY s.last_ts DESC, text
LIMIT $max_queries
"""

_USER_EXISTS = "MATCH (u:User {id: $user}) RETURN count(u) AS n"


@dataclass(frozen=True)
class ItemTouch:
    id: str
    title: str | None
    behaviours: tuple[tuple[str, int], ...]  # (relationship type, event count), sorted by type
    brand: str | None
    categories: tuple[str, ...]  # leaf category ids


@dataclass(frozen=True)
class CategoryNode:
    id: str
    name: str
    parent: str | None


@dataclass(frozen=True)
class InterestGraph:
    user: str  # the pseudonym
    items: tuple[ItemTouch, ...]
    categories: tuple[CategoryNode, ...]
    searches: tuple[tuple[str, int], ...]  # (normalised text, count)


def read_interest_graph(
    driver: neo4j.Driver, user: str, *, max_items: int = 25, max_queries: int = 10, database: str = "neo4j"
) -> InterestGraph:
    """The user's (pseudonym's) interest graph: their ``max_items`` most recently touched items, those items'
    brands and categories with all ancestors, and their ``max_queries`` most recent searches."""
    if max_items < 1 or max_queries < 0:
        raise InvalidInput(f"max_items must be >= 1 and max_queries >= 0, got {max_items} and {max_queries}")

    def read(query: str, **params: object) -> list[neo4j.Record]:
        return driver.execute_query(query, params, database_=database, routing_=neo4j.RoutingControl.READ).records

    if read(_USER_EXISTS, user=user)[0]["n"] == 0:
        raise NotFound(f"no user {user} in the graph (give the external id; it is pseudonymised with IG_PSEUDONYM_KEY)")
    items = tuple(
        ItemTouch(
            id=r["item"],
            title=r["title"],
            behaviours=tuple(sorted((t, n) for t, n in r["behaviours"])),
            brand=r["brand"],
            categories=tuple(sorted(r["categories"])),
        )
        for r in read(_ITEMS, user=user, max_items=max_items)
    )
    leaves = sorted({c for item in items for c in item.categories})
    categories = tuple(
        CategoryNode(id=r["category"], name=r["name"] or r["category"], parent=r["parent"])
        for r in read(_CATEGORIES, categories=leaves)
    )
    searches = tuple((r["text"], r["searches"]) for r in read(_SEARCHES, user=user, max_queries=max_queries))
    return InterestGraph(user=user, items=items, categories=categories, searches=searches)
