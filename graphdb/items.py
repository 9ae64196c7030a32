"""Catalogue writes: item metadata, brands, the category hierarchy and "also viewed" links.

Called inside the ingestion transaction (metadata riding on events) and by the loaders (catalogue files),
so both paths produce the same graph. Every node whose neighbourhood changes is marked in the same
transaction (graphdb.marks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import neo4j

from graphdb.marks import mark
from graphdb.schema import ALSO_VIEWED, BRAND, CATEGORY, HAS_BRAND, IN_CATEGORY, ITEM, SUBCATEGORY_OF

CATEGORY_SEPARATOR = " > "


@dataclass(frozen=True)
class ItemRecord:
    """What the catalogue says about one item. ``None`` leaves a stored value as it is."""

    id: str
    title: str | None = None
    description: str | None = None
    brand: str | None = None
    categories: tuple[tuple[str, ...], ...] = ()


def category_id(path: tuple[str, ...]) -> str:
    """A category's id is its path from the root, so equal names under different parents stay apart."""
    return CATEGORY_SEPARATOR.join(name.strip() for name in path)


_UPSERT_ITEMS = f"""
UNWIND $items AS it
MERGE (i:{ITEM} {{id: it.id}})
  ON CREATE SET i.created_at = $now
SET i.title = coalesce(it.title, i.title),
    i.description = coalesce(it.description, i.description),
    {mark("i")}
"""

_DROP_STALE_BRAND = f"""
UNWIND $rows AS r
MATCH (i:{ITEM} {{id: r.item}})-[old:{HAS_BRAND}]->(b:{BRAND})
WHERE b.id <> r.brand
DELETE old
SET {mark("b")}
"""

_LINK_BRAND = f"""
UNWIND $rows AS r
MATCH (i:{ITEM} {{id: r.item}})
MERGE (b:{BRAND} {{id: r.brand}})
  ON CREATE SET b.name = r.brand, b.created_at = $now
MERGE (i)-[e:{HAS_BRAND}]->(b)
  ON CREATE SET {mark("b")}
"""

_UPSERT_CATEGORIES = f"""
UNWIND $cats AS c
MERGE (n:{CATEGORY} {{id: c.id}})
  ON CREATE SET n.name = c.name, n.depth = c.depth, n.created_at = $now
WITH n, c WHERE c.parent IS NOT NULL
MATCH (p:{CATEGORY} {{id: c.parent}})
MERGE (n)-[e:{SUBCATEGORY_OF}]->(p)
  ON CREATE SET {mark("n")}, {mark("p")}
"""

_DROP_STALE_CATEGORIES = f"""
UNWIND $rows AS r
MATCH (i:{ITEM} {{id: r.item}})-[old:{IN_CATEGORY}]->(c:{CATEGORY})
WHERE NOT c.id IN r.cats
DELETE old
SET {mark("c")}
"""

_LINK_CATEGORIES = f"""
UNWIND $rows AS r
MATCH (i:{ITEM} {{id: r.item}})
UNWIND r.cats AS cid
MATCH (c:{CATEGORY} {{id: cid}})
MERGE (i)-[e:{IN_CATEGORY}]->(c)
  ON CREATE SET {mark("c")}
"""

_ALSO_VIEWED = f"""
UNWIND $pairs AS p
MERGE (a:{ITEM} {{id: p.a}})
  ON CREATE SET a.created_at = $now
MERGE (b:{ITEM} {{id: p.b}})
  ON CREATE SET b.created_at = $now
MERGE (a)-[e:{ALSO_VIEWED}]->(b)
  ON CREATE SET {mark("a")}, {mark("b")}
"""


def upsert_items(tx: neo4j.ManagedTransaction, items: Iterable[ItemRecord], *, token: str, now: float) -> int:
    """Create or update items with their brand and categories (a given brand or category set replaces the old)."""
    items = list(items)
    if not items:
        return 0
    tx.run(
        _UPSERT_ITEMS, items=[{"id": i.id, "title": i.title, "description": i.description} for i in items], token=token, now=now
    ).consume()

    brands = [{"item": i.id, "brand": i.brand.strip()} for i in items if i.brand and i.brand.strip()]
    if brands:
        tx.run(_DROP_STALE_BRAND, rows=brands, token=token, now=now).consume()
        tx.run(_LINK_BRAND, rows=brands, token=token, now=now).consume()

    cats: dict[str, dict[str, Any]] = {}
    links = []
    for item in items:
        if not item.categories:
            continue
        leaves = []
        for path in item.categories:
            for depth in range(len(path)):
                cid = category_id(path[: depth + 1])
                parent = category_id(path[:depth]) if depth else None
                cats.setdefault(cid, {"id": cid, "name": path[depth].strip(), "depth": depth, "parent": parent})
            leaves.append(category_id(path))
        links.append({"item": item.id, "cats": sorted(set(leaves))})
    if cats:
        # Parents before children, so each child finds its parent.
        ordered = sorted(cats.values(), key=lambda c: (c["depth"], c["id"]))
        tx.run(_UPSERT_CATEGORIES, cats=ordered, token=token, now=now).consume()
        tx.run(_DROP_STALE_CATEGORIES, rows=links, token=token, now=now).consume()
        tx.run(_LINK_CATEGORIES, rows=links, token=token, now=now).consume()
    return len(items)


def link_also_viewed(tx: neo4j.ManagedTransaction, pairs: Iterable[tuple[str, str]], *, token: str, now: float) -> int:
    rows = [{"a": a, "b": b} for a, b in pairs if a != b]
    if rows:
        tx.run(_ALSO_VIEWED, pairs=rows, token=token, now=now).consume()
    return len(rows)
