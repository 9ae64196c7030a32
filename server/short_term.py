"""The short-term interest beside the long-term vector (issue 16, dynamic capture of interest).

A shopper's stored vector averages their whole capped history, so a fresh interest (a burst of clicks and a
purchase or two in another part of the shop) drowns in the standing ones. The server therefore also embeds the
shopper's most recent items, and when that short-term interest is not simply the whole history it reserves a
share of the k slots for its nearest items, as PinnerSage mixes a shopper's interests by recency and weight:

- recent items: those interacted with within ``window_s`` of the shopper's latest interaction, newest first, at
  most ``max_items``; fewer than ``min_items`` (one odd click) or every item the shopper has (a new shopper, a
  session) gives no short-term interest;
- its query: the sum of those items' served vectors, each weighted by its summed (decayed) behaviour weight;
- the answer: the long-term ranking with ``round(share * k)`` slots, alternating from the second rank, given to
  the short-term ranking's best items not already in the answer (``mix``). Both rankings see the same filter,
  exclusions and feedback; the order is deterministic.

The same functions serve a stored shopper (recent edges read from Neo4j, ``graphdb.recent``) and a session
(its own edges), so a session answers as the stored shopper with the same events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

from graphdb.subgraph import EdgeRow


@dataclass(frozen=True)
class ShortTermParams:
    share: float  # of the k slots reserved for the short-term interest (0: off)
    window_s: float
    min_items: int
    max_items: int


def recent_items(edges: Sequence[EdgeRow], total_items: int, params: ShortTermParams) -> dict[str, float] | None:
    """The short-term interest of one shopper: recent item -> its weight (summed over behaviour types), or None.

    ``edges``: the shopper's relationships (all of them, or at least the newest ``max_items`` items' worth);
    ``total_items``: how many distinct items the shopper has in all."""
    if params.share <= 0.0 or not edges:
        return None
    since = max(e.last_ts for e in edges) - params.window_s
    latest: dict[str, float] = {}
    weight: dict[str, float] = {}
    for e in edges:
        if e.last_ts >= since:
            latest[e.item] = max(e.last_ts, latest.get(e.item, e.last_ts))
            weight[e.item] = weight.get(e.item, 0.0) + e.weight
    picked = sorted(latest, key=lambda i: (-latest[i], i))[: params.max_items]
    # not a short-term interest: one odd click, or all the shopper has (the long-term vector is that already)
    if len(picked) < params.min_items or len(picked) >= total_items:
        return None
    return {i: weight[i] for i in sorted(picked)}


def may_have_recent(latest: Collection[float], total_items: int, params: ShortTermParams) -> bool:
    """Whether a shopper whose items' latest times are ``latest`` has a short-term interest at all, i.e. whether
    `recent_items` of their edges can be other than None: the same count of recent items, from one time per item,
    without the edge rows. A session mostly has none (its items are recent, and all it has), so it spares building
    them (~50 us a call, bench.serving)."""
    if params.share <= 0.0 or not latest:
        return False
    since = max(latest) - params.window_s
    picked = min(sum(t >= since for t in latest), params.max_items)
    return params.min_items <= picked < total_items


def reserved_slots(k: int, share: float) -> int:
    """Slots of a top-k given to the short-term interest; at least one long-term item stays."""
    return min(k - 1, max(0, round(share * k))) if k > 1 else 0


def mix(long: Sequence[tuple[str, float]], short: Sequence[tuple[str, float]], k: int, reserved: int) -> list[tuple[str, float]]:
    """Top ``k`` from two rankings: long-term first, then short-term and long-term alternately until ``reserved``
    short-term items are in, then long-term; an item already taken is skipped, and either ranking fills the
    other's slots when it runs out. Each item keeps its score from the ranking that placed it."""
    out: list[tuple[str, float]] = []
    taken: set[str] = set()
    li = si = 0
    placed_short = 0

    def take(ranking: Sequence[tuple[str, float]], pos: int) -> int:
        while pos < len(ranking) and ranking[pos][0] in taken:
            pos += 1
        if pos < len(ranking):
            out.append(ranking[pos])
            taken.add(ranking[pos][0])
            pos += 1
        return pos

    while len(out) < k and (li < len(long) or si < len(short)):
        before = len(out)
        wants_short = placed_short < reserved and len(out) % 2 == 1 or li >= len(long)
        if wants_short:
            si = take(short, si)
            placed_short += len(out) - before
            if len(out) == before:  # the short-term ranking ran out: long-term fills the rest
                li = take(long, li)
        else:
            li = take(long, li)
            if len(out) == before:
                si = take(short, si)
                placed_short += len(out) - before
    return out
