"""Negative feedback: what a hidden item (``NOT_INTERESTED``) and a returned purchase (``RETURNED``) mean.

Both are stored like every behaviour, aggregated per (user, item, type) with count, first/last ts and weight
(graphdb.ingest), so analysts can query them; neither is ever a sign of interest (graphdb.schema.ITEM_INTERACTIONS
leaves them out of model reads and popularity).

The return rule, one for every reader (subgraph reads for recompute and training, popularity, the serving
exclusions), so an incremental recompute equals a full one:

- a purchase counts unless the shopper's latest return of that item is no earlier than their latest purchase of
  it (``RETURNED.last_ts >= PURCHASED.last_ts``): a returned purchase no longer counts in the shopper's interest
  nor as "bought";
- a purchase after the return (a later ``PURCHASED.last_ts``) counts again, with the purchase edge's whole
  aggregate (its count and decayed weight include the returned purchase: the edge does not keep them apart);
- a return with no purchase, or one older than the latest purchase, changes nothing but is stored.

The rule reads only the two edges' latest times, so events arriving out of order give the same outcome.
A hidden item stays hidden (there is no un-hide event); ForgetUser removes it with everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphdb.schema import REL_FOR_EVENT

PURCHASED = REL_FOR_EVENT["purchase"]
RETURNED = REL_FOR_EVENT["return"]
NOT_INTERESTED = REL_FOR_EVENT["not_interested"]


def purchase_counts(user: str, rel: str, item: str) -> str:
    """A Cypher predicate: the ``PURCHASED`` relationship ``rel`` from ``user`` to ``item`` still counts (see the
    module's rule). Variable names come from code, never from a request."""
    return f"NOT EXISTS {{ MATCH ({user})-[x:{RETURNED}]->({item}) WHERE x.last_ts >= {rel}.last_ts }}"


def counts(user: str, rel: str, item: str) -> str:
    """A Cypher predicate for a relationship ``rel`` of any positive type: true unless it is a returned purchase."""
    return f"(type({rel}) <> '{PURCHASED}' OR {purchase_counts(user, rel, item)})"


@dataclass(frozen=True)
class Exclusions:
    """What a shopper's answers leave out: items bought (and not returned since), and items hidden, the most
    recently hidden first."""

    bought: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
