"""``interest graph import``: a shop's own event and catalogue files into the graph.

Rows are read in bounded batches (graphdb.sources), mapped to our fields (graphdb.columns) and sent through the
same path as ``IngestEvents``: events through ``ingest_batches`` (validation, pseudonymisation, idempotency by
event id, change marks, pipelined), catalogue rows through the same validation as item metadata and
``upsert_items``. A row that cannot be stored goes to the rejects file with its position and reason and the
import goes on; after each committed batch a checkpoint records how far it got (graphdb.import_state), so a
killed import resumes where it stopped. Rows without an event id get one derived from their content, so
importing a file again changes nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import neo4j
from neo4j.exceptions import ServiceUnavailable, SessionExpired, TransientError

from graphdb.columns import CatalogueColumns, EventColumns, RowError, row_to_event, row_to_item
from graphdb.errors import InvalidInput, Unavailable
from graphdb.events import validate_events
from graphdb.import_state import ImportState, Totals, input_identity
from graphdb.ingest import ingest_batches
from graphdb.items import ItemRecord, category_id, upsert_items
from graphdb.marks import new_token
from graphdb.schema import BRAND, HAS_BRAND, IN_CATEGORY, ITEM
from graphdb.settings import GraphSettings
from graphdb.sources import POSITION, count_rows, detect_format, read_rows

# (rows read, events or items stored) since the last call
Progress = Callable[[int, int], None]


@dataclass
class ImportReport:
    kind: str  # "events" or "catalogue"
    path: Path
    rejects: Path
    checkpoint: Path
    totals: Totals  # the whole import, across resumed runs
    resumed_from: int  # the position this run started after (0: from the start)
    read_now: int  # rows read by this run
    stored_now: int
    elapsed_s: float  # this run
    complete: bool


def default_rejects(path: Path) -> Path:
    return path.with_name(path.name + ".rejects.jsonl")


def total_rows(path: Path) -> int | None:
    return count_rows(path, detect_format(path))


def _state(
    path: Path, kind: str, mapping: EventColumns | CatalogueColumns, rejects: Path | None, restart: bool
) -> tuple[str, ImportState]:
    fmt = detect_format(path)
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist or is not a file")
    # A checkpoint holds for one file and one way of reading it.
    fingerprint = hashlib.sha256(mapping.model_dump_json().encode()).hexdigest()[:16]
    state = ImportState(rejects or default_rejects(path), input_identity(path, kind, fingerprint), POSITION[fmt])
    state.resume(restart=restart)
    return fmt, state


def _report(kind: str, path: Path, state: ImportState, started: float, read: int, stored: int, complete: bool) -> ImportReport:
    return ImportReport(
        kind,
        path,
        state.rejects_path,
        state.checkpoint_path,
        state.totals,
        state.resumed_from,
        read,
        stored,
        time.monotonic() - started,
        complete,
    )


@dataclass
class _Chunk:
    positions: list[int]  # of each event handed to ingestion
    rejected: list[tuple[int, str]]  # rows rejected before ingestion
    end: int
    rows: int


def import_events(
    driver: neo4j.Driver,
    settings: GraphSettings,
    path: Path,
    mapping: EventColumns,
    *,
    rejects: Path | None = None,
    restart: bool = False,
    database: str = "neo4j",
    progress: Progress | None = None,
    stop_after_batches: int | None = None,
) -> ImportReport:
    """Import an event file; ``stop_after_batches`` stops early as an interruption would (for tests)."""
    started = time.monotonic()
    fmt, state = _state(path, "events", mapping, rejects, restart)
    if state.done:
        state.close()
        return _report("events", path, state, started, 0, 0, True)
    sources = mapping.sources()
    chunks: deque[_Chunk] = deque()

    def batches() -> Iterator[list[dict[str, Any]]]:
        for rb in read_rows(path, fmt, sources, batch_rows=settings.batch_size, after=state.position):
            events, positions, rejected = [], [], list(rb.bad)
            for position, row in zip(rb.positions, rb.rows):
                try:
                    events.append(row_to_event(row, mapping, sources))
                except RowError as exc:
                    rejected.append((position, str(exc)))
                else:
                    positions.append(position)
            chunks.append(_Chunk(positions, rejected, rb.end, len(rb)))
            yield events

    read = stored = done_batches = 0
    try:
        # Pipelined: the next batch is read, mapped and validated while Neo4j writes this one; results in order.
        for result in ingest_batches(driver, settings, batches(), database=database):
            chunk = chunks.popleft()
            rejected = chunk.rejected + [(chunk.positions[r.index], r.reason) for r in result.rejected]
            state.commit(chunk.end, rejected, read=chunk.rows, stored=result.accepted, duplicates=result.duplicates)
            read, stored = read + chunk.rows, stored + result.accepted
            if progress:
                progress(chunk.rows, result.accepted)
            done_batches += 1
            if stop_after_batches is not None and done_batches >= stop_after_batches:
                return _report("events", path, state, started, read, stored, False)
        state.finish()
    finally:
        state.close()
    return _report("events", path, state, started, read, stored, True)


_CURRENT_ITEMS = f"""
UNWIND $ids AS id
MATCH (i:{ITEM} {{id: id}})
RETURN i.id AS id, i.title AS title, i.description AS description,
       [(i)-[:{HAS_BRAND}]->(b:{BRAND}) | b.id] AS brands, [(i)-[:{IN_CATEGORY}]->(c) | c.id] AS cats
"""


def _unchanged(record: ItemRecord, current: dict[str, Any] | None) -> bool:
    """Whether writing the record would change nothing (upsert_items leaves a None field as stored)."""
    if current is None:
        return False
    brand = record.brand.strip() if record.brand and record.brand.strip() else None
    return (
        (record.title is None or record.title == current["title"])
        and (record.description is None or record.description == current["description"])
        and (brand is None or current["brands"] == [brand])
        and (not record.categories or set(current["cats"]) == {category_id(p) for p in record.categories})
    )


def _write_items(tx: neo4j.ManagedTransaction, records: list[ItemRecord], now: float) -> int:
    # Unchanged items are left alone, so a catalogue imported again marks nothing for recompute.
    current = {r["id"]: dict(r) for r in tx.run(_CURRENT_ITEMS, ids=[r.id for r in records])}
    changed = [r for r in records if not _unchanged(r, current.get(r.id))]
    upsert_items(tx, changed, token=new_token(), now=now)
    return len(changed)


def _item_records(
    rows: list[tuple[int, dict[str, Any]]], settings: GraphSettings, now: float
) -> tuple[list[ItemRecord], list[tuple[int, str]]]:
    # Each row is checked as an event's item metadata, so the catalogue obeys exactly the limits IngestEvents does.
    probes = [
        {
            "event_id": "catalogue",
            "user_id": "catalogue",
            "type": "view",
            "item_id": item["id"],
            "ts": 0.0,
            "item": {k: item[k] for k in ("title", "description", "brand", "categories") if item[k]},
        }
        for _, item in rows
    ]
    valid, rejections = validate_events(probes, settings, now)
    latest: dict[str, ItemRecord] = {}  # a later row of the same item wins
    for _, ev in valid:
        meta = ev.item
        assert ev.item_id is not None
        latest[ev.item_id] = (
            ItemRecord(ev.item_id, meta.title, meta.description, meta.brand, meta.categories) if meta else ItemRecord(ev.item_id)
        )
    rejected = [(rows[r.index][0], r.reason.replace("item_id", "id").removeprefix("item.")) for r in rejections]
    return [latest[k] for k in sorted(latest)], rejected


def import_catalogue(
    driver: neo4j.Driver,
    settings: GraphSettings,
    path: Path,
    mapping: CatalogueColumns,
    *,
    rejects: Path | None = None,
    restart: bool = False,
    database: str = "neo4j",
    progress: Progress | None = None,
    stop_after_batches: int | None = None,
) -> ImportReport:
    """Import an item catalogue (id, title, description, brand, category path)."""
    started = time.monotonic()
    fmt, state = _state(path, "catalogue", mapping, rejects, restart)
    if state.done:
        state.close()
        return _report("catalogue", path, state, started, 0, 0, True)
    sources = mapping.sources()
    read = stored = done_batches = 0
    try:
        for rb in read_rows(path, fmt, sources, batch_rows=settings.batch_size, after=state.position):
            rows, rejected = [], list(rb.bad)
            for position, row in zip(rb.positions, rb.rows):
                try:
                    rows.append((position, row_to_item(row, mapping, sources)))
                except RowError as exc:
                    rejected.append((position, str(exc)))
            now = time.time()
            records, bad = _item_records(rows, settings, now)
            rejected += bad
            written = 0
            if records:
                try:
                    with driver.session(database=database) as session:
                        written = session.execute_write(_write_items, records, now)
                except (ServiceUnavailable, SessionExpired, TransientError) as exc:
                    raise Unavailable(f"Neo4j could not take the catalogue batch, run the import again: {exc}") from exc
            unchanged = len(rows) - len(bad) - written
            state.commit(rb.end, rejected, read=len(rb), stored=written, duplicates=unchanged)
            read, stored = read + len(rb), stored + written
            if progress:
                progress(len(rb), written)
            done_batches += 1
            if stop_after_batches is not None and done_batches >= stop_after_batches:
                return _report("catalogue", path, state, started, read, stored, False)
        state.finish()
    finally:
        state.close()
    return _report("catalogue", path, state, started, read, stored, True)
