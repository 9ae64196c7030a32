"""Loaders for the shared datasets, through the same ingestion path as live events.

Each loader turns a dataset into (a) catalogue records and links, written with graphdb.items, and (b) behaviour
events with deterministic event ids, written with graphdb.ingest in batches. Loading a dataset twice therefore
changes nothing (the ids are recognised), and the graph equals what a live stream of the same events builds.

Ids are prefixed with the dataset name (``gowalla:17``) so datasets can share one graph.
Where a dataset has no timestamps, synthetic ones keep its order (documented per loader).
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import neo4j

from graphdb.errors import InvalidInput
from graphdb.ingest import IngestResult, ingest_batches
from graphdb.items import ItemRecord, link_also_viewed, upsert_items
from graphdb.marks import new_token
from graphdb.settings import GraphSettings

# Datasets without timestamps get events one day apart from this instant (2014-01-01), in file order.
SYNTHETIC_EPOCH = 1388534400.0
DAY = 86400.0

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Dataset:
    events: Callable[[Path], Iterator[dict[str, Any]]]
    items: Callable[[Path], Iterable[ItemRecord]]
    also_viewed: Callable[[Path], Iterable[tuple[str, str]]]
    count_events: Callable[[Path], int]


# Every format problem becomes InvalidInput naming the file and line, before anything is written (load_dataset
# reads the whole input once first), so a malformed file changes nothing in the graph.
MAX_ID_DIGITS = 18


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of the non-blank lines of a UTF-8 text file, without the line break and outer spaces.
    Tabs stay: in a tab-separated file a leading or trailing tab is an empty field, which the parser must see."""
    if not path.is_file():
        raise InvalidInput(f"dataset file {path} does not exist")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip(" \r\n")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"{path}:{n}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
            if "\x00" in line:
                raise InvalidInput(f"{path}:{n}: contains NUL bytes (binary data?)")
            if line.strip():
                yield n, line


def _fields(path: Path, n: int, line: str, sep: str | None, names: tuple[str, ...]) -> list[str]:
    parts = line.split(sep)
    if len(parts) != len(names):
        shown = line if len(line) <= 80 else line[:77] + "..."
        sep_name = {"\t": "tab", ",": "comma", None: "space"}[sep]
        raise InvalidInput(
            f"{path}:{n}: expected {len(names)} {sep_name}-separated fields ({', '.join(names)}), got {len(parts)}: {shown!r}"
        )
    return parts


def _int_id(path: Path, n: int, text: str, name: str) -> str:
    """Dataset ids are non-negative decimal integers; returned as written (they become id strings)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise InvalidInput(f"{path}:{n}: {name} {shown!r} is not a non-negative integer id (at most {MAX_ID_DIGITS} digits)")
    return text


def _number(path: Path, n: int, text: str, name: str, low: float, high: float) -> float:
    try:  # ASCII only: float() also reads other scripts' digits ("١" is 1.0), which no dataset file holds
        value = float(text) if text.isascii() else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise InvalidInput(f"{path}:{n}: {name} {shown!r} is not a number between {low:g} and {high:g}")
    return value


def _json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or InvalidInput saying where it is broken."""
    if not path.is_file():
        raise InvalidInput(f"dataset file {path} does not exist")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError as exc:
        raise InvalidInput(f"{path}: JSON nested too deeply") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a JSON object at the top, got {type(data).__name__}")
    return data


def _json_id(path: Path, value: object, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**MAX_ID_DIGITS:
        return str(value)
    if isinstance(value, str):
        return _json_str_id(path, value, what)
    raise InvalidInput(f"{path}: {what} {value!r:.40} is not a non-negative integer id")


def _json_str_id(path: Path, value: str, what: str) -> str:
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS):
        raise InvalidInput(f"{path}: {what} {value!r:.40} is not a non-negative integer id")
    return text


# gowalla (LightGCN split): `user item item ...` per line; check-ins become `view` events.
def _gowalla_events(root: Path) -> Iterator[dict[str, Any]]:
    path = root / "train.txt"
    for n, line in _lines(path):
        user, *items = line.split()
        user = _int_id(path, n, user, "user id")
        for pos, item in enumerate(items):
            item = _int_id(path, n, item, f"item id #{pos + 1}")
            yield {
                "event_id": f"gowalla:{user}:{item}",
                "user_id": f"gowalla:{user}",
                "type": "view",
                "item_id": f"gowalla:{item}",
                "ts": SYNTHETIC_EPOCH + pos,
            }


def _gowalla_count(root: Path) -> int:
    return sum(len(line.split()) - 1 for _, line in _lines(root / "train.txt"))


# amazon-hin: timestamped ratings become `rate` events; categories, brands and also-viewed are catalogue.
def _hin_events(root: Path) -> Iterator[dict[str, Any]]:
    path = root / "user_item.dat"
    for n, line in _lines(path):
        user, item, rating, ts = _fields(path, n, line, "\t", ("user", "item", "rating", "timestamp"))
        user, item = _int_id(path, n, user, "user id"), _int_id(path, n, item, "item id")
        stars = _number(path, n, rating, "rating", 1.0, 5.0)
        seconds = _number(path, n, ts, "timestamp", 0.0, 1e11)
        yield {
            "event_id": f"hin:{user}:{item}:{ts.strip()}",
            "user_id": f"hin:{user}",
            "type": "rate",
            "item_id": f"hin:{item}",
            "rating": stars,
            "ts": seconds,
        }


def _hin_count(root: Path) -> int:
    return sum(1 for _ in _lines(root / "user_item.dat"))


def _pairs(path: Path, names: tuple[str, str]) -> Iterator[tuple[str, str]]:
    for n, line in _lines(path):
        a, b = _fields(path, n, line, ",", names)
        yield _int_id(path, n, a, names[0]), _int_id(path, n, b, names[1])


def _hin_items(root: Path) -> list[ItemRecord]:
    cats: dict[str, list[tuple[str, ...]]] = {}
    for item, cat in _pairs(root / "item_category.dat", ("item", "category")):
        cats.setdefault(item, []).append((f"hin:c{cat}",))
    brands = {}
    for item, brand in _pairs(root / "item_brand.dat", ("item", "brand")):
        brands[item] = f"hin:b{brand}"
    ids = sorted(set(cats) | set(brands), key=int)
    return [ItemRecord(id=f"hin:{i}", brand=brands.get(i), categories=tuple(cats.get(i, ()))) for i in ids]


def _hin_also_viewed(root: Path) -> Iterator[tuple[str, str]]:
    # The "viewed" ids are a separate id space (products outside the rated set): they become items of their own.
    for item, view in _pairs(root / "item_view.dat", ("item", "viewed item")):
        yield f"hin:{item}", f"hin:v{view}"


# amazon-office 5-core: per-user item lists, last = most recent; reviews imply purchases.
def _office_inter(root: Path) -> dict[str, list[str]]:
    path = root / "Office.inter.json"
    out = {}
    for user, items in _json(path).items():
        user = _json_str_id(path, user, "user id")
        if not isinstance(items, list):
            raise InvalidInput(f"{path}: user {user}: expected a list of item ids, got {type(items).__name__}")
        out[user] = [_json_id(path, item, f"user {user}: item id #{pos + 1}") for pos, item in enumerate(items)]
    return out


def _office_events(root: Path) -> Iterator[dict[str, Any]]:
    for user, items in _office_inter(root).items():
        for pos, item in enumerate(items):
            yield {
                "event_id": f"office:{user}:{item}",
                "user_id": f"office:{user}",
                "type": "purchase",
                "item_id": f"office:{item}",
                "ts": SYNTHETIC_EPOCH + pos * DAY,
            }


def _office_count(root: Path) -> int:
    return sum(len(v) for v in _office_inter(root).values())


def _clean(text: str | None) -> str | None:
    text = (text or "").replace("&amp;", "&").strip()
    return text or None


OFFICE_FIELDS = ("title", "description", "brand", "categories")


def _office_items(root: Path) -> list[ItemRecord]:
    file = root / "Office.item.json"
    out = []
    for item, m in _json(file).items():
        item = _json_str_id(file, item, "item id")
        if not isinstance(m, dict):
            raise InvalidInput(f"{file}: item {item}: expected an object, got {type(m).__name__}")
        for name in OFFICE_FIELDS:
            if m.get(name) is not None and not isinstance(m[name], str):
                raise InvalidInput(f"{file}: item {item}: {name} must be text, got {type(m[name]).__name__}")
        path = tuple(p.strip() for p in (_clean(m.get("categories")) or "").split(",") if p.strip())
        out.append(
            ItemRecord(
                id=f"office:{item}",
                title=_clean(m.get("title")),
                description=_clean(m.get("description")),
                brand=_clean(m.get("brand")),
                categories=(path,) if path else (),
            )
        )
    return out


DATASETS: dict[str, Dataset] = {
    "gowalla": Dataset(_gowalla_events, lambda root: [], lambda root: [], _gowalla_count),
    "amazon-hin": Dataset(_hin_events, _hin_items, _hin_also_viewed, _hin_count),
    "amazon-office": Dataset(_office_events, _office_items, lambda root: [], _office_count),
}


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load_dataset(
    driver: neo4j.Driver,
    settings: GraphSettings,
    name: str,
    root: Path,
    *,
    database: str = "neo4j",
    limit: int | None = None,
    progress: Progress | None = None,
) -> IngestResult:
    """Load catalogue then events of a dataset; ``limit`` caps the events (for quick runs)."""
    if name not in DATASETS:
        raise InvalidInput(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    ds = DATASETS[name]
    # Read everything once before writing: a malformed file fails here, with file and line, changing nothing.
    items = list(ds.items(root))
    also_viewed = list(ds.also_viewed(root))
    n_events = sum(1 for _ in (ds.events(root) if limit is None else zip(range(limit), ds.events(root))))
    if n_events == 0 and limit != 0:
        raise InvalidInput(f"dataset {name!r} in {root} holds no events")
    now = time.time()
    for chunk in _chunks(items, settings.batch_size):
        with driver.session(database=database) as s:
            s.execute_write(lambda tx: upsert_items(tx, chunk, token=new_token(), now=now))
    for chunk in _chunks(also_viewed, settings.batch_size):
        with driver.session(database=database) as s:
            s.execute_write(lambda tx: link_also_viewed(tx, chunk, token=new_token(), now=now))
    result = IngestResult()
    events: Iterable[dict[str, Any]] = ds.events(root)
    if limit is not None:
        events = (e for i, e in zip(range(limit), events))
    sizes: deque[int] = deque()

    def chunks() -> Iterator[list[dict[str, Any]]]:
        for chunk in _chunks(events, settings.batch_size):
            sizes.append(len(chunk))
            yield chunk

    offset = 0
    # Pipelined: the next batch is prepared while Neo4j writes this one; results come back in order.
    for batch_result in ingest_batches(driver, settings, chunks(), database=database):
        size = sizes.popleft()
        result.add(batch_result, offset)
        offset += size
        if progress:
            progress(size)
    return result
