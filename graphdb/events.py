"""The behaviour event model and its per-event validation.

``validate_events`` never raises for a bad event: it returns the valid events and, for each invalid one, its
index in the batch and a reason a person can act on. Ingestion stores the valid ones.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from graphdb.schema import EVENT_TYPES
from graphdb.settings import GraphSettings

# Interactions older than this are certainly bad clocks or bad units (e.g. milliseconds sent as seconds' typo).
MIN_TS = 0.0
MAX_CATEGORY_DEPTH = 8
MAX_CATEGORY_PATHS = 16
# Control characters are not allowed in ids; unpaired surrogates (which cannot be stored) nowhere.
_BAD_ID_CHARS = re.compile("[\x00-\x1f\ud800-\udfff]")
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Rejection:
    index: int
    reason: str


class ItemMeta(BaseModel):
    """Catalogue facts about an item that may ride along with an event (or come from a catalogue load)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    title: str | None = None
    description: str | None = None
    brand: str | None = None
    # Each path runs from the root category to the leaf, e.g. ["Office Products", "Paper"].
    categories: tuple[tuple[str, ...], ...] = ()

    @field_validator("categories", mode="before")
    @classmethod
    def _paths_to_tuples(cls, v: Any) -> Any:
        if isinstance(v, list):
            return tuple(tuple(p) if isinstance(p, list) else p for p in v)
        return v

    @field_validator("categories")
    @classmethod
    def _check_paths(cls, v: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        if len(v) > MAX_CATEGORY_PATHS:
            raise ValueError(f"at most {MAX_CATEGORY_PATHS} category paths")
        for path in v:
            if not path or len(path) > MAX_CATEGORY_DEPTH:
                raise ValueError(f"a category path has 1 to {MAX_CATEGORY_DEPTH} names")
            if any(not name.strip() for name in path):
                raise ValueError("category names must not be empty")
        return v


class Event(BaseModel):
    """One thing a shopper did. ``ts`` is unix seconds; ``user_id`` is the external id (pseudonymised later)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: str
    user_id: str
    type: str
    ts: float
    item_id: str | None = None
    query: str | None = None
    rating: float | None = None
    review: str | None = None
    item: ItemMeta | None = None

    # ts and rating: strict floats still take integers (seconds, stars) and turn them into floats, but not bools.

    @model_validator(mode="after")
    def _check_shape(self) -> "Event":
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}; expected one of {', '.join(EVENT_TYPES)}")
        if self.type == "search":
            if not self.query or not self.query.strip():
                raise ValueError("a search event needs a non-empty query")
            if self.item_id is not None:
                raise ValueError("a search event has a query, not an item_id")
        elif not self.item_id:
            raise ValueError(f"a {self.type} event needs an item_id")
        problem = rating_shape(self.type, self.rating)
        if problem:
            raise ValueError(problem)
        if self.type == "review" and not (self.review and self.review.strip()):
            raise ValueError("a review event needs review text")
        if self.item is not None and self.item_id is None:
            raise ValueError("item metadata needs an item_id")
        return self


def rating_shape(kind: str, rating: float | None) -> str | None:
    """Which event types carry a rating (the model's check, shared with sessions: ``graphdb.session``)."""
    if kind == "rate" and rating is None:
        return "a rate event needs a rating"
    if rating is not None and kind not in ("rate", "review"):
        return "only rate and review events carry a rating"
    return None


def check_id(name: str, value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    if not value or value != value.strip():
        return f"{name} must be non-empty without leading or trailing spaces"
    if len(value) > limit:
        return f"{name} is {len(value)} characters; the limit is {limit}"
    if _BAD_ID_CHARS.search(value):
        return f"{name} contains control characters or unpaired surrogates"
    return None


def check_time(ts: float, settings: GraphSettings, now: float) -> str | None:
    if not math.isfinite(ts) or ts < MIN_TS:
        return f"ts {ts!r} is not a valid unix time in seconds"
    if ts > now + settings.max_future_skew_s:
        return f"ts is {ts - now:.0f} s in the future (allowed skew {settings.max_future_skew_s:.0f} s)"
    return None


def check_rating(rating: float | None) -> str | None:
    if rating is not None and not (math.isfinite(rating) and 1.0 <= rating <= 5.0):
        return f"rating {rating!r} is outside 1..5"
    return None


def _check_limits(ev: Event, settings: GraphSettings, now: float) -> str | None:
    for name in ("event_id", "user_id", "item_id"):
        problem = check_id(name, getattr(ev, name), settings.max_id_chars)
        if problem:
            return problem
    problem = check_time(ev.ts, settings, now) or check_rating(ev.rating)
    if problem:
        return problem
    if ev.query is None and ev.review is None and ev.item is None:
        return None  # most events: ids and a time only
    texts = {"query": ev.query, "review": ev.review}
    if ev.item is not None:
        texts.update(title=ev.item.title, description=ev.item.description, brand=ev.item.brand)
    for name, text in texts.items():
        if text is not None and len(text) > settings.max_text_chars:
            return f"{name} is {len(text)} characters; the limit is {settings.max_text_chars}"
        if text is not None and _SURROGATES.search(text):
            return f"{name} contains unpaired surrogates"
    if ev.item is not None:
        for path in ev.item.categories:
            if any(len(n) > settings.max_id_chars for n in path):
                return f"a category name is longer than {settings.max_id_chars} characters"
    return None


def _reason(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def validate_events(
    raw: Sequence[Any], settings: GraphSettings, now: float | None = None
) -> tuple[list[tuple[int, Event]], list[Rejection]]:
    """Split a batch into (index, valid event) pairs and rejections with reasons."""
    now = time.time() if now is None else now
    valid: list[tuple[int, Event]] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(raw):
        if type(item) is not dict and not isinstance(item, Mapping):
            rejected.append(Rejection(index, f"an event is an object, got {type(item).__name__}"))
            continue
        try:
            ev = Event.model_validate(item if type(item) is dict else dict(item))
        except ValidationError as exc:
            rejected.append(Rejection(index, _reason(exc)))
            continue
        problem = _check_limits(ev, settings, now)
        if problem:
            rejected.append(Rejection(index, problem))
        else:
            valid.append((index, ev))
    return valid, rejected
