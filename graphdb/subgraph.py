"""Subgraph reads for the embedding workers: exactly the rows a recompute needs, as plain Python values.

The workers turn these rows into tensors (``workers.live``); nothing here knows about models. Every read is
batched (``UNWIND $ids``) and parameterised. User edges come with the scalar state of the item at the other end
(vector version and update time) so a worker can tell whether its cached copy of that item's vector is current
without fetching the vector itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import neo4j

from graphdb.feedback import counts
from graphdb.schema import BRAND, CATEGORY, HAS_BRAND, IN_CATEGORY, ITEM, ITEM_INTERACTIONS, NODE_LABELS, QUERY, SUBCATEGORY_OF, USER

_ITEM_RELS = "|".join(ITEM_INTERACTIONS)


@dataclass(frozen=True)
class EdgeRow:
    """One aggregated user->item relationship (one per behaviour type)."""

    user: str
    item: str
    weight: float
    last_ts: float
    first_ts: float | None = None  # first interaction (the fold-in of new items, the quality gate's split)
    kind: str | None = None  # the behaviour's relationship type (PURCHASED, ...): typed weights (ml.signals.typed_weight)

    @property
    def first(self) -> float:
        """The first interaction's time, or the latest where the first is not stored."""
        return self.last_ts if self.first_ts is None else self.first_ts


@dataclass(frozen=True)
class ItemRow:
    """What the item encoder reads: categories (direct and their ancestors), brand and text."""

    id: str
    categories: tuple[str, ...]
    brand: str | None
    title: str | None
    description: str | None


@dataclass(frozen=True)
class StoredVector:
    id: str
    vector: list[float] | None
    version: str | None
    updated_at: float | None


# Both edge reads apply the same return rule (graphdb.feedback), so an incremental recompute equals a full one.
# One row per user with parallel lists: the driver decodes a few long lists far faster than many records.
_USER_EDGES = f"""
UNWIND $ids AS uid
MATCH (u:{USER} {{id: uid}})-[r:{_ITEM_RELS}]->(i:{ITEM})
WHERE {counts("u", "r", "i")}
WITH uid, collect(i.id) AS items, collect(r.weight) AS weights, collect(r.last_ts) AS last,
     collect(coalesce(r.first_ts, r.last_ts)) AS first, collect(type(r)) AS kinds, collect(i.emb_version) AS versions
RETURN uid AS user, items, weights, last, first, versions, kinds
"""

_ALL_EDGES = f"""
MATCH (u:{USER})-[r:{_ITEM_RELS}]->(i:{ITEM})
WHERE {counts("u", "r", "i")}
WITH u, collect(i.id) AS items, collect(r.weight) AS weights, collect(r.last_ts) AS last,
     collect(coalesce(r.first_ts, r.last_ts)) AS first, collect(type(r)) AS kinds
RETURN u.id AS user, items, weights, last, first, kinds
"""

_ITEM_FIELDS = f"""
OPTIONAL MATCH (i)-[:{IN_CATEGORY}]->(:{CATEGORY})-[:{SUBCATEGORY_OF}*0..]->(c:{CATEGORY})
WITH i, collect(DISTINCT c.id) AS cats
OPTIONAL MATCH (i)-[:{HAS_BRAND}]->(b:{BRAND})
WITH i, cats, min(b.id) AS brand
RETURN i.id AS id, cats, brand, i.title AS title, i.description AS description
"""

_ITEMS = f"UNWIND $ids AS iid MATCH (i:{ITEM} {{id: iid}})" + _ITEM_FIELDS
_ALL_ITEMS = f"MATCH (i:{ITEM})" + _ITEM_FIELDS

_ALL_USERS = f"MATCH (u:{USER}) RETURN u.id AS id"

_USERS_OF_ITEMS = f"""
UNWIND $ids AS iid
MATCH (u:{USER})-[:{_ITEM_RELS}]->(:{ITEM} {{id: iid}})
RETURN DISTINCT u.id AS id
"""

# Each item's first n shoppers: by their first interaction with it over behaviour types (the return rule as in
# the edge reads), ties by pseudonym.
_FIRST_USERS = f"""
UNWIND $ids AS iid
MATCH (u:{USER})-[r:{_ITEM_RELS}]->(i:{ITEM} {{id: iid}})
WHERE {counts("u", "r", "i")}
WITH iid, u.id AS uid, min(coalesce(r.first_ts, r.last_ts)) AS t
ORDER BY iid, t, uid
WITH iid, collect(uid)[..$n] AS users
RETURN iid AS item, users
"""

# Items whose encoder input depends on these categories (anywhere below them) or brands.
_ITEMS_UNDER = f"""
UNWIND $categories AS cid
MATCH (:{CATEGORY} {{id: cid}})<-[:{SUBCATEGORY_OF}*0..]-(:{CATEGORY})<-[:{IN_CATEGORY}]-(i:{ITEM})
RETURN DISTINCT i.id AS id
UNION
UNWIND $brands AS bid
MATCH (:{BRAND} {{id: bid}})<-[:{HAS_BRAND}]-(i:{ITEM})
RETURN DISTINCT i.id AS id
"""

# The K-layer encoders' neighbourhoods (workers.hetero_recompute): an item's shoppers with the edge rows a cap ranks,
# and the members of categories (their subtrees, as ItemRow.categories holds ancestors) and of brands (an item's
# brand is its smallest brand id, as in ItemRow; two MATCH clauses, as one pattern would need two distinct HAS_BRAND
# relationships and miss every item with one brand).
_ITEM_EDGES = f"""
UNWIND $ids AS iid
MATCH (u:{USER})-[r:{_ITEM_RELS}]->(i:{ITEM} {{id: iid}})
WHERE {counts("u", "r", "i")}
WITH iid, collect(u.id) AS users, collect(r.weight) AS weights, collect(r.last_ts) AS last,
     collect(coalesce(r.first_ts, r.last_ts)) AS first, collect(type(r)) AS kinds
RETURN iid AS item, users, weights, last, first, kinds
"""

_CATEGORY_MEMBERS = f"""
UNWIND $ids AS cid
MATCH (:{CATEGORY} {{id: cid}})<-[:{SUBCATEGORY_OF}*0..]-(:{CATEGORY})<-[:{IN_CATEGORY}]-(i:{ITEM})
RETURN cid AS id, collect(DISTINCT i.id) AS items
"""

_BRAND_MEMBERS = f"""
UNWIND $ids AS bid
MATCH (:{BRAND} {{id: bid}})<-[:{HAS_BRAND}]-(i:{ITEM})
MATCH (i)-[:{HAS_BRAND}]->(b:{BRAND})
WITH bid, i, min(b.id) AS brand WHERE brand = bid
RETURN bid AS id, collect(i.id) AS items
"""

_QUERIES = f"UNWIND $ids AS qid MATCH (q:{QUERY} {{id: qid}}) RETURN q.id AS id, q.text AS text"
_ALL_QUERIES = f"MATCH (q:{QUERY}) RETURN q.id AS id, q.text AS text"


def _stored_query(label: str) -> str:
    return f"""
UNWIND $ids AS nid
MATCH (n:{label} {{id: nid}})
RETURN n.id AS id, n.embedding AS vector, n.emb_version AS version, n.emb_updated_at AS updated_at
"""


_STORED = {label: _stored_query(label) for label in NODE_LABELS}


def _read(driver: neo4j.Driver, query: str, database: str, **params: Any) -> list[neo4j.Record]:
    records: list[neo4j.Record] = driver.execute_query(query, database_=database, routing_=neo4j.RoutingControl.READ, **params).records
    return records


def _chunks(ids: Sequence[str], size: int) -> Iterator[list[str]]:
    ids = list(ids)
    for s in range(0, len(ids), size):
        yield ids[s : s + size]


def _item_row(r: neo4j.Record) -> ItemRow:
    return ItemRow(r["id"], tuple(sorted(r["cats"])), r["brand"], r["title"], r["description"])


def _edge_rows(r: neo4j.Record) -> Iterator[EdgeRow]:
    user = r["user"]
    keys = r.keys()
    first = r["first"] if "first" in keys else [None] * len(r["items"])
    kinds = r["kinds"] if "kinds" in keys else [None] * len(r["items"])
    for item, w, t, f, kind in zip(r["items"], r["weights"], r["last"], first, kinds):
        yield EdgeRow(user, item, float(w or 0.0), float(t or 0.0), None if f is None else float(f), kind)


def user_edges(
    driver: neo4j.Driver, user_ids: Iterable[str], *, database: str = "neo4j", batch_size: int = 2000
) -> tuple[list[EdgeRow], dict[str, str | None]]:
    """Every item relationship of the given users, and the vector version of each item seen."""
    edges: list[EdgeRow] = []
    item_version: dict[str, str | None] = {}
    for chunk in _chunks(sorted(set(user_ids)), batch_size):
        for r in _read(driver, _USER_EDGES, database, ids=chunk):
            edges.extend(_edge_rows(r))
            item_version.update(zip(r["items"], r["versions"]))
    return edges, item_version


def first_users(
    driver: neo4j.Driver, item_ids: Iterable[str], n: int, *, database: str = "neo4j", batch_size: int = 500
) -> dict[str, list[str]]:
    """The first ``n`` shoppers of each item (``workers.live.fold_sets`` reads their edges); items without any
    are left out."""
    out: dict[str, list[str]] = {}
    for chunk in _chunks(sorted(set(item_ids)), batch_size):
        out.update((r["item"], list(r["users"])) for r in _read(driver, _FIRST_USERS, database, ids=chunk, n=n))
    return out


def all_edges(driver: neo4j.Driver, *, database: str = "neo4j") -> list[EdgeRow]:
    """Every user->item relationship in the graph (full recompute and training)."""
    with driver.session(database=database, default_access_mode=neo4j.READ_ACCESS) as session:
        return [e for r in session.run(_ALL_EDGES) for e in _edge_rows(r)]


def all_user_ids(driver: neo4j.Driver, *, database: str = "neo4j") -> list[str]:
    return [r["id"] for r in _read(driver, _ALL_USERS, database)]


def items(driver: neo4j.Driver, item_ids: Iterable[str], *, database: str = "neo4j", batch_size: int = 2000) -> list[ItemRow]:
    """Encoder inputs of the given items (unknown ids are skipped)."""
    out: list[ItemRow] = []
    for chunk in _chunks(sorted(set(item_ids)), batch_size):
        out.extend(_item_row(r) for r in _read(driver, _ITEMS, database, ids=chunk))
    return out


def all_items(driver: neo4j.Driver, *, database: str = "neo4j") -> list[ItemRow]:
    with driver.session(database=database, default_access_mode=neo4j.READ_ACCESS) as session:
        return [_item_row(r) for r in session.run(_ALL_ITEMS)]


def users_of_items(driver: neo4j.Driver, item_ids: Iterable[str], *, database: str = "neo4j", batch_size: int = 500) -> set[str]:
    """Users with any interaction on the given items."""
    out: set[str] = set()
    for chunk in _chunks(sorted(set(item_ids)), batch_size):
        out.update(r["id"] for r in _read(driver, _USERS_OF_ITEMS, database, ids=chunk))
    return out


def items_under(driver: neo4j.Driver, categories: Iterable[str], brands: Iterable[str], *, database: str = "neo4j") -> set[str]:
    """Items in (the subtree of) the given categories or of the given brands."""
    cats, brs = sorted(set(categories)), sorted(set(brands))
    if not cats and not brs:
        return set()
    return {r["id"] for r in _read(driver, _ITEMS_UNDER, database, categories=cats, brands=brs)}


def query_texts(driver: neo4j.Driver, query_ids: Iterable[str], *, database: str = "neo4j") -> dict[str, str]:
    ids = sorted(set(query_ids))
    if not ids:
        return {}
    return {r["id"]: r["text"] or "" for r in _read(driver, _QUERIES, database, ids=ids)}


def all_query_texts(driver: neo4j.Driver, *, database: str = "neo4j") -> dict[str, str]:
    return {r["id"]: r["text"] or "" for r in _read(driver, _ALL_QUERIES, database)}


def stored_vectors(
    driver: neo4j.Driver, label: str, ids: Iterable[str], *, database: str = "neo4j", batch_size: int = 5000
) -> dict[str, StoredVector]:
    """The stored vector, version and update time of each existing node (vector None when never embedded)."""
    query = _STORED[label]
    out: dict[str, StoredVector] = {}
    for chunk in _chunks(sorted(set(ids)), batch_size):
        for r in _read(driver, query, database, ids=chunk):
            vec = r["vector"]
            out[r["id"]] = StoredVector(r["id"], list(vec) if vec is not None else None, r["version"], r["updated_at"])
    return out


def item_edges(driver: neo4j.Driver, item_ids: Iterable[str], *, database: str = "neo4j", batch_size: int = 500) -> list[EdgeRow]:
    """Every user relationship of the given items (the same return rule as `user_edges`)."""
    edges: list[EdgeRow] = []
    for chunk in _chunks(sorted(set(item_ids)), batch_size):
        for r in _read(driver, _ITEM_EDGES, database, ids=chunk):
            item = r["item"]
            for user, w, t, f, kind in zip(r["users"], r["weights"], r["last"], r["first"], r["kinds"]):
                edges.append(EdgeRow(user, item, float(w or 0.0), float(t or 0.0), None if f is None else float(f), kind))
    return edges


def category_members(driver: neo4j.Driver, category_ids: Iterable[str], *, database: str = "neo4j") -> dict[str, list[str]]:
    """Items in (the subtree of) each category, ascending ids; every requested category is a key."""
    ids = sorted(set(category_ids))
    out: dict[str, list[str]] = {c: [] for c in ids}
    for chunk in _chunks(ids, 200):
        out.update((r["id"], sorted(r["items"])) for r in _read(driver, _CATEGORY_MEMBERS, database, ids=chunk))
    return out


def brand_members(driver: neo4j.Driver, brand_ids: Iterable[str], *, database: str = "neo4j") -> dict[str, list[str]]:
    """Items whose brand (their smallest brand id) is each brand, ascending ids; every requested brand is a key."""
    ids = sorted(set(brand_ids))
    out: dict[str, list[str]] = {b: [] for b in ids}
    for chunk in _chunks(ids, 200):
        out.update((r["id"], sorted(r["items"])) for r in _read(driver, _BRAND_MEMBERS, database, ids=chunk))
    return out
