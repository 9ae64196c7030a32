"""How a shop's files map onto our fields: column names, behaviour names, the time format.

A mapping goes from the shop's names to ours (``customer: user_id``); a column that is not mapped is read under
our own name when the file has one. It comes from a small YAML file (``--map``) with an ``events`` and a
``catalogue`` section, and command-line pairs add to it. The functions below turn one row's raw values into an
event or item mapping for the same validation as ``IngestEvents``, or a reason the row is rejected.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graphdb.errors import InvalidInput
from graphdb.schema import EVENT_TYPES

EVENT_FIELDS = ("event_id", "user_id", "type", "item_id", "query", "ts", "rating", "review")
ITEM_FIELDS = ("id", "title", "description", "brand", "categories")
TimeFormat = Literal["auto", "unix", "unix_ms", "iso"]
# Derived event ids are namespaced so they never collide with a shop's own ids.
DERIVED_ID_PREFIX = "imp:"


class RowError(ValueError):
    """One row's value cannot become our field; the message names the field and the shop's column."""


def _check_targets(columns: dict[str, str], allowed: tuple[str, ...]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for shop, ours in columns.items():
        if ours not in allowed:
            raise ValueError(f"column {shop!r} maps to {ours!r}, which is none of {', '.join(allowed)}")
        if ours in seen:
            raise ValueError(f"columns {seen[ours]!r} and {shop!r} both map to {ours!r}")
        seen[ours] = shop
    return columns


def _sources(columns: dict[str, str], fields: tuple[str, ...]) -> dict[str, str]:
    """Our field -> the shop's column; an unmapped field is read under its own name unless that column is mapped."""
    found = {ours: shop for shop, ours in columns.items()}
    return {f: found[f] if f in found else f for f in fields if f in found or f not in columns}


class EventColumns(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, str] = Field(default_factory=dict)  # shop column -> our field
    behaviours: dict[str, str] = Field(default_factory=dict)  # shop behaviour name -> our event type
    # A file of one behaviour only (e.g. an order export) may have no behaviour column at all.
    behaviour: str | None = None
    timestamp: TimeFormat = "auto"

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_targets(v, EVENT_FIELDS)

    @model_validator(mode="after")
    def _types(self) -> "EventColumns":
        for shop, ours in [*self.behaviours.items(), ("behaviour", self.behaviour)]:
            if ours is not None and ours not in EVENT_TYPES:
                raise ValueError(f"behaviour {shop!r} maps to {ours!r}; expected one of {', '.join(EVENT_TYPES)}")
        return self

    def sources(self) -> dict[str, str]:
        """Our field -> the shop's column, for every field (unmapped fields under our own name)."""
        return _sources(self.columns, EVENT_FIELDS)


class CatalogueColumns(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, str] = Field(default_factory=dict)
    # A category path given as text, e.g. "Office > Paper > Notebooks"; a list in JSON or Parquet is a path too.
    category_separator: str = Field(default=" > ", min_length=1)

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_targets(v, ITEM_FIELDS)

    def sources(self) -> dict[str, str]:
        return _sources(self.columns, ITEM_FIELDS)


class ImportMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: EventColumns = Field(default_factory=EventColumns)
    catalogue: CatalogueColumns = Field(default_factory=CatalogueColumns)


def _pairs(pairs: list[str], what: str) -> dict[str, str]:
    out = {}
    for raw in pairs:
        shop, sep, ours = raw.partition("=")
        if not sep or not shop.strip() or not ours.strip():
            raise InvalidInput(f"{what}: expected SHOP=OURS, got {raw!r}")
        out[shop.strip()] = ours.strip()
    return out


def load_mapping(
    path: Path | None,
    *,
    event_columns: Sequence[str] = (),
    item_columns: Sequence[str] = (),
    behaviours: Sequence[str] = (),
    behaviour: str | None = None,
    timestamp: str | None = None,
) -> ImportMapping:
    """The YAML file's mapping (if any) with the command line's pairs added; InvalidInput says what is wrong."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InvalidInput(f"mapping file {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidInput(f"mapping file {path}: expected sections 'events' and 'catalogue', got a {type(loaded).__name__}")
        data = loaded or {}
    events = dict(data.get("events") or {})
    catalogue = dict(data.get("catalogue") or {})
    events["columns"] = {**(events.get("columns") or {}), **_pairs(list(event_columns), "--column")}
    events["behaviours"] = {**(events.get("behaviours") or {}), **_pairs(list(behaviours), "--behaviour")}
    if behaviour is not None:
        events["behaviour"] = behaviour
    if timestamp is not None:
        events["timestamp"] = timestamp
    catalogue["columns"] = {**(catalogue.get("columns") or {}), **_pairs(list(item_columns), "--item-column")}
    try:
        return ImportMapping.model_validate({**data, "events": events, "catalogue": catalogue})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"mapping {where}: {err['msg'].removeprefix('Value error, ')}") from exc


# -- one row's values ------------------------------------------------------------------------------------------


def _text(value: Any, field: str, column: str) -> str | None:
    """Text or an integer id (shops often number their customers and products); empty means missing."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"{field} (column {column!r}): expected text or an integer, got {type(value).__name__}")


def _number(value: Any, field: str, column: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowError(f"{field} (column {column!r}): expected a number, got a boolean")
    if isinstance(value, (int, float, decimal.Decimal)):
        return float(value)
    if isinstance(value, str) and value.strip().isascii():
        try:
            return float(value)
        except ValueError:
            pass
    raise RowError(f"{field} (column {column!r}): {str(value)[:40]!r} is not a number")


def parse_ts(value: Any, fmt: TimeFormat, column: str) -> float:
    """Unix seconds (or milliseconds with ``unix_ms``) or ISO 8601; times without a zone are UTC."""
    if value is None or value == "":
        raise RowError(f"ts (column {column!r}): missing")
    if isinstance(value, dt.datetime):  # Parquet timestamps arrive as seconds already; this is a fallback
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    if fmt != "iso":
        try:
            number = _number(value, "ts", column)
        except RowError:
            number = None
        if number is not None and math.isfinite(number):
            return number / 1000.0 if fmt == "unix_ms" else number
        if fmt != "auto":
            raise RowError(f"ts (column {column!r}): {str(value)[:40]!r} is not unix {'milli' if fmt == 'unix_ms' else ''}seconds")
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return (moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).timestamp()
    raise RowError(
        f"ts (column {column!r}): cannot read {str(value)[:40]!r} as " + ("ISO 8601" if fmt == "iso" else "unix seconds or ISO 8601")
    )


def derived_event_id(event: Mapping[str, Any]) -> str:
    """An id from the row's content: the same row always gets the same id, so re-importing changes nothing.

    Rows equal in every mapped field (same shopper, behaviour, target, second, rating, review) are one event.
    """
    key = [event.get(f) for f in ("user_id", "type", "item_id", "query", "ts", "rating", "review")]
    return DERIVED_ID_PREFIX + hashlib.sha256(json.dumps(key).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def row_to_event(row: Mapping[str, Any], mapping: EventColumns, sources: Mapping[str, str]) -> dict[str, Any]:
    """A row (our field -> raw value) as an event for ``graphdb.events`` validation, or RowError."""
    raw_type = _text(row.get("type"), "type", sources.get("type", "type"))
    if raw_type is None:
        if mapping.behaviour is None:
            raise RowError(f"type (column {sources.get('type', 'type')!r}): missing")
        kind = mapping.behaviour
    else:
        kind = mapping.behaviours.get(raw_type, raw_type)
        if kind not in EVENT_TYPES:
            raise RowError(
                f"type (column {sources.get('type', 'type')!r}): unknown behaviour {raw_type[:40]!r}; map it to one of "
                f"{', '.join(EVENT_TYPES)} (behaviours in the mapping, or --behaviour)"
            )
    user = _text(row.get("user_id"), "user_id", sources.get("user_id", "user_id"))
    if user is None:
        raise RowError(f"user_id (column {sources.get('user_id', 'user_id')!r}): missing")
    event: dict[str, Any] = {"user_id": user, "type": kind, "ts": parse_ts(row.get("ts"), mapping.timestamp, sources.get("ts", "ts"))}
    if kind == "search":
        query = _text(row.get("query"), "query", sources.get("query", "query"))
        if query is None:
            raise RowError(f"query (column {sources.get('query', 'query')!r}): missing for a search")
        event["query"] = query
    else:
        item = _text(row.get("item_id"), "item_id", sources.get("item_id", "item_id"))
        if item is None:
            raise RowError(f"item_id (column {sources.get('item_id', 'item_id')!r}): missing")
        event["item_id"] = item
    rating = _number(row.get("rating"), "rating", sources.get("rating", "rating"))
    if rating is not None:
        event["rating"] = rating
    review = _text(row.get("review"), "review", sources.get("review", "review"))
    if review is not None:
        event["review"] = review
    event_id = _text(row.get("event_id"), "event_id", sources.get("event_id", "event_id"))
    event["event_id"] = event_id if event_id is not None else derived_event_id(event)
    return event


def _category_paths(value: Any, separator: str, column: str) -> list[list[str]]:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [[name.strip() for name in value.split(separator)]]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [list(value)]  # one path, root first
    if isinstance(value, list) and all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in value):
        return [list(v) for v in value]  # several paths
    raise RowError(f"categories (column {column!r}): expected a path as text or a list of names, got {type(value).__name__}")


def row_to_item(row: Mapping[str, Any], mapping: CatalogueColumns, sources: Mapping[str, str]) -> dict[str, Any]:
    """A catalogue row as {"id", "title", "description", "brand", "categories"}, or RowError."""
    item_id = _text(row.get("id"), "id", sources.get("id", "id"))
    if item_id is None:
        raise RowError(f"id (column {sources.get('id', 'id')!r}): missing")
    out: dict[str, Any] = {"id": item_id}
    for name in ("title", "description", "brand"):
        value = row.get(name)
        if value is not None and value != "" and not isinstance(value, str):
            raise RowError(f"{name} (column {sources.get(name, name)!r}): expected text, got {type(value).__name__}")
        out[name] = value.strip() or None if isinstance(value, str) else None
    out["categories"] = _category_paths(row.get("categories"), mapping.category_separator, sources.get("categories", "categories"))
    return out
