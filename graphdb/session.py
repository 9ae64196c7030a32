"""An anonymous session's item events as the edge rows a stored shopper with those events has, in one pass.

RecommendForSession embeds a session on every call, so it cannot afford what ingestion does per event (an
``Event`` model, then ``aggregate``'s rows as dicts): that cost ~300 us for 20 events, more than the search the
call exists for (bench.serving). Here the same rules (``graphdb.events``: ids, times, ratings) and the same
weights (``graphdb.ingest.decayed_weight``) run over plain tuples, and only what a user vector needs comes out:
each item's latest time and the items bought; the edge rows are grouped only when asked for.
Nothing is written: sessions live in memory only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, NamedTuple, Sequence

from graphdb.errors import InvalidInput
from graphdb.events import MIN_TS, check_id, check_rating, check_time, rating_shape
from graphdb.ingest import LN2, decayed_weight
from graphdb.schema import ITEM_INTERACTIONS, REL_FOR_EVENT
from graphdb.settings import GraphSettings
from graphdb.subgraph import EdgeRow

_PURCHASED = REL_FOR_EVENT["purchase"]
# event type -> its relationship, for the item interactions a session may carry
_ITEM_RELS = {kind: rel for kind, rel in REL_FOR_EVENT.items() if rel in ITEM_INTERACTIONS}


class SessionEvent(NamedTuple):
    """One item event of a session; ``kind`` is an event type name (``graphdb.schema.EVENT_TYPES``)."""

    item_id: str
    kind: str
    ts: float
    rating: float | None = None


@dataclass(frozen=True)
class SessionEdges:
    events: Sequence[tuple[str, str, float, float | None]]  # the checked events, in the request's order
    latest: dict[str, float]  # item -> its latest event over every behaviour type
    bought: frozenset[str]
    half_life_s: float

    @cached_property
    def times(self) -> dict[tuple[str, str], list[float]]:
        """(relationship type, item) -> its events' times, in first-seen order: grouped on demand, as only the edge
        rows need them (a session past the user cap, a short-term interest, behaviour weights)."""
        groups: dict[tuple[str, str], list[float]] = {}
        for item, kind, ts, _ in self.events:
            key = (_ITEM_RELS[kind], item)
            times = groups.get(key)
            if times is None:
                groups[key] = [ts]
            else:
                times.append(ts)
        return groups

    def strengths(self, typed: Mapping[str, float] | None = None) -> dict[str, float]:
        """Each item's behaviour strength as ``workers.user_side.pair_strengths`` sums it over `edges` (each type's
        decayed count times its weight in ``typed``, in the same order, so the same floats), without building the
        rows: RecommendForSession weighs by it on every call at the default behaviour power."""
        k = LN2 / self.half_life_s
        out: dict[str, float] = {}
        for (rel, item), times in self.times.items():
            w = 1.0 if len(times) == 1 else decayed_weight(times, max(times), k)
            if typed:
                w = w * float(typed.get(rel, 1.0))
            out[item] = out.get(item, 0.0) + w
        return out

    def edges(self, user: str) -> list[EdgeRow]:
        """One row per (behaviour type, item), as ingestion aggregates a stored user's events: only a session
        past the user cap needs them (to rank its items), so they are built on demand."""
        k = LN2 / self.half_life_s
        out = []
        for (rel, item), times in self.times.items():
            last = max(times)
            out.append(EdgeRow(user, item, 1.0 if len(times) == 1 else decayed_weight(times, last, k), last, min(times), rel))
        return out


def session_edges(events: Sequence[tuple[str, str, float, float | None]], settings: GraphSettings, now: float) -> SessionEdges:
    """``events`` (item events only, as ``SessionEvent`` or plain tuples of its shape) checked by ingestion's rules;
    ``SessionEdges.edges`` aggregates them as ingestion does.

    Raises InvalidInput naming the first bad event (``events[i]: ...``), as ingestion would reject it."""
    limit = settings.max_id_chars
    newest = now + settings.max_future_skew_s
    rels = _ITEM_RELS
    checked: set[str] = set()
    latest: dict[str, float] = {}
    bought: set[str] = set()
    for i, (item, kind, ts, rating) in enumerate(events):
        rel = rels.get(kind)
        # Most events: a known item interaction without a rating at a plausible time (NaN fails both comparisons),
        # for which only a new item's id is left to check. Anything else goes through ingestion's own checks.
        if rel is None or rating is not None or kind == "rate" or not MIN_TS <= ts <= newest:
            if rel is None:
                raise InvalidInput(f"events[{i}]: {kind!r} is not an item interaction")
            rated = rating is not None or kind == "rate"  # the rating rules have nothing to say otherwise
            problem = rating_shape(kind, rating) if rated else None
            if problem is None and item not in checked:
                problem = check_id("item_id", item, limit)
                checked.add(item)
            problem = problem or check_time(ts, settings, now) or (check_rating(rating) if rated else None)
            if problem:
                raise InvalidInput(f"events[{i}]: {problem}")
        elif item not in checked:
            problem = check_id("item_id", item, limit)
            if problem:
                raise InvalidInput(f"events[{i}]: {problem}")
            checked.add(item)
        if ts > latest.get(item, ts - 1):
            latest[item] = ts
        if rel == _PURCHASED:
            bought.add(item)
    return SessionEdges(events, latest, frozenset(bought), settings.half_life_s)
