"""Loaders for the shared datasets, through the same ingestion path as live events.

Each loader turns a dataset into (a) catalogue records and links, written with graphdb.items, and (b) behaviour
events with deterministic event ids, written with graphdb.ingest in batches. Loading a dataset twice therefore
changes nothing (the ids are recognised), and the graph equals what a live stream of the same events builds.

Ids are prefixed with the dataset name (``gowalla:17``) so datasets can share one graph.
Where a dataset has no timestamps, synthetic ones keep its order (documented per loader).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import neo4j

from graphdb.errors import InvalidInput
from graphdb.ingest import IngestResult, ingest_events
from graphdb.items import ItemRecord, link_also_viewed, upsert_items
from graphdb.marks import new_token
from graphdb.settings import GraphSettings

# Datasets without timestamps get events one day apart from this instant (2014-01-01), in file order.
SYNTHETIC_EPOCH = 1388534400.0
DAY = 86400.0

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Dataset:
    events: Callable[[Path], Iterator[dict]]
    items: Callable[[Path], Iterable[ItemRecord]]
    also_viewed: Callable[[Path], Iterable[tuple[str, str]]]
    count_events: Callable[[Path], int]


def _lines(path: Path) -> Iterator[str]:
    if not path.exists():
        raise InvalidInput(f"dataset file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


# gowalla (LightGCN split): `user item item ...` per line; check-ins become `view` events.
def _gowalla_events(root: Path) -> Iterator[dict]:
    for line in _lines(root / "train.txt"):
        user, *items = line.split()
        for pos, item in enumerate(items):
            yield {"event_id": f"gowalla:{user}:{item}", "user_id": f"gowalla:{user}", "type": "view",
                   "item_id": f"gowalla:{item}", "ts": SYNTHETIC_EPOCH + pos}


def _gowalla_count(root: Path) -> int:
    return sum(len(line.split()) - 1 for line in _lines(root / "train.txt"))


# amazon-hin: timestamped ratings become `rate` events; categories, brands and also-viewed are catalogue.
def _hin_events(root: Path) -> Iterator[dict]:
    for line in _lines(root / "user_item.dat"):
        user, item, rating, ts = line.split("\t")
        yield {"event_id": f"hin:{user}:{item}:{ts}", "user_id": f"hin:{user}", "type": "rate",
               "item_id": f"hin:{item}", "rating": float(rating), "ts": float(ts)}


def _hin_count(root: Path) -> int:
    return sum(1 for _ in _lines(root / "user_item.dat"))


def _hin_items(root: Path) -> list[ItemRecord]:
    cats: dict[str, list[tuple[str, ...]]] = {}
    for line in _lines(root / "item_category.dat"):
        item, cat = line.split(",")
        cats.setdefault(item, []).append((f"hin:c{cat}",))
    brands = {}
    for line in _lines(root / "item_brand.dat"):
        item, brand = line.split(",")
        brands[item] = f"hin:b{brand}"
    ids = sorted(set(cats) | set(brands), key=int)
    return [ItemRecord(id=f"hin:{i}", brand=brands.get(i), categories=tuple(cats.get(i, ()))) for i in ids]


def _hin_also_viewed(root: Path) -> Iterator[tuple[str, str]]:
    # The "viewed" ids are a separate id space (products outside the rated set): they become items of their own.
    for line in _lines(root / "item_view.dat"):
        item, view = line.split(",")
        yield f"hin:{item}", f"hin:v{view}"


# amazon-office 5-core: per-user item lists, last = most recent; reviews imply purchases.
def _office_events(root: Path) -> Iterator[dict]:
    inter = json.loads((root / "Office.inter.json").read_text())
    for user, items in inter.items():
        for pos, item in enumerate(items):
            yield {"event_id": f"office:{user}:{item}", "user_id": f"office:{user}", "type": "purchase",
                   "item_id": f"office:{item}", "ts": SYNTHETIC_EPOCH + pos * DAY}


def _office_count(root: Path) -> int:
    return sum(len(v) for v in json.loads((root / "Office.inter.json").read_text()).values())


def _clean(text: str | None) -> str | None:
    text = (text or "").replace("&amp;", "&").strip()
    return text or None


def _office_items(root: Path) -> list[ItemRecord]:
    meta = json.loads((root / "Office.item.json").read_text())
    out = []
    for item, m in meta.items():
        path = tuple(p.strip() for p in (_clean(m.get("categories")) or "").split(",") if p.strip())
        out.append(ItemRecord(id=f"office:{item}", title=_clean(m.get("title")), description=_clean(m.get("description")),
                              brand=_clean(m.get("brand")), categories=(path,) if path else ()))
    return out


DATASETS: dict[str, Dataset] = {
    "gowalla": Dataset(_gowalla_events, lambda root: [], lambda root: [], _gowalla_count),
    "amazon-hin": Dataset(_hin_events, _hin_items, _hin_also_viewed, _hin_count),
    "amazon-office": Dataset(_office_events, _office_items, lambda root: [], _office_count),
}


def _chunks(rows: Iterable, size: int) -> Iterator[list]:
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
    now = time.time()
    for chunk in _chunks(ds.items(root), settings.batch_size):
        with driver.session(database=database) as s:
            s.execute_write(lambda tx: upsert_items(tx, chunk, token=new_token(), now=now))
    for chunk in _chunks(ds.also_viewed(root), settings.batch_size):
        with driver.session(database=database) as s:
            s.execute_write(lambda tx: link_also_viewed(tx, chunk, token=new_token(), now=now))
    result = IngestResult()
    events: Iterable[dict] = ds.events(root)
    if limit is not None:
        events = (e for i, e in zip(range(limit), events))
    offset = 0
    for chunk in _chunks(events, settings.batch_size):
        result.add(ingest_events(driver, settings, chunk, database=database), offset)
        offset += len(chunk)
        if progress:
            progress(len(chunk))
    return result
