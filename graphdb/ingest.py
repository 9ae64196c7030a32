"""Idempotent, batched ingestion of behaviour events.

One batch is one transaction: validate each event (bad ones are rejected with index and reason), drop event
ids already applied (``Seen`` nodes), record the new ids, upsert item metadata, upsert and mark the users and
targets once each (they return their internal ids), then write the interactions aggregated per (user, target,
type) with ``UNWIND`` — one statement per relationship type, finding both ends by those ids — all marking every
touched node for the workers in the same transaction.

Validation, pseudonymisation and aggregation happen before the transaction (``_prepare``), so a bulk load
(``ingest_batches``) prepares the next batch while Neo4j writes the current one; the aggregate is redone inside
the transaction only if some of the batch's events turn out to be applied already.

Duplicates: an event id is recognised for ``IG_DEDUP_RETENTION_HOURS`` (default 7 days) after it was applied;
``prune_seen`` forgets older ids. Retries by clients and redeliveries by the broker happen within seconds to
hours, and a replayed bulk file carries deterministic ids whose aggregates are only counted once per window, so a
week covers every retry path with a wide margin while keeping the id set bounded.

Weights: each interaction carries ``weight``, a count decayed with half-life ``IG_HALF_LIFE_DAYS`` and stored
as of ``last_ts``: w(t) = weight * 2^-((t - last_ts) / half_life). Merging two aggregates decays the older
one to the newer one's time, which is commutative, so out-of-order events give the same weight.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import neo4j
from neo4j.exceptions import ConstraintError, ServiceUnavailable, SessionExpired, TransientError

from graphdb.errors import Unavailable
from graphdb.events import Event, Rejection, validate_events
from graphdb.items import ItemRecord, upsert_items
from graphdb.marks import mark, new_token
from graphdb.pseudonym import pseudonymise
from graphdb.schema import ITEM, QUERY, REL_FOR_EVENT, SEEN, USER
from graphdb.settings import GraphSettings

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
# A concurrent batch may record the same event id first; re-running sees it as a duplicate.
_CONSTRAINT_RETRIES = 3
# Transient errors (DeadlockDetected, lock timeouts, a leader switch) are first retried by the driver's managed
# transaction for its ``max_transaction_retry_time``; several servers writing the same hub items can outlast
# that, so the batch is run again a few more times, after a jittered pause that lets the contenders part.
_TRANSIENT_RETRIES = 4
_TRANSIENT_PAUSE_S = 0.05


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def add(self, other: "IngestResult", offset: int = 0) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected.extend(Rejection(r.index + offset, r.reason) for r in other.rejected)


def query_id(text: str) -> str:
    """Search queries are nodes keyed by their normalised text."""
    return "q_" + hashlib.sha256(normalise_query(text).encode()).hexdigest()[:24]


def normalise_query(text: str) -> str:
    return " ".join(text.casefold().split())


_EXISTING_SEEN = f"UNWIND $ids AS id MATCH (s:{SEEN} {{id: id}}) RETURN s.id AS id"
_RECORD_SEEN = f"UNWIND $ids AS id CREATE (:{SEEN} {{id: id, at: $now}})"
_PRUNE_SEEN = f"MATCH (s:{SEEN}) WHERE s.at < $before WITH s LIMIT $batch DELETE s RETURN count(*) AS n"


def _upsert_nodes_query(label: str) -> str:
    # Nodes first, once each and marked, so the relationship statement below needs no label writes (which would
    # force the planner to materialise every row between steps). It returns each node's internal id (as one list
    # of [key, id] pairs: one record instead of thousands), valid for the rest of this transaction, so the
    # relationship statements find both ends by id instead of two more unique-index seeks per row.
    if label == QUERY:
        return f"""
UNWIND $nodes AS r
MERGE (n:{label} {{id: r.id}})
  ON CREATE SET n.created_at = $now, n.text = r.text
SET {mark("n")}
RETURN collect([r.id, id(n)]) AS nodes
"""
    return f"""
UNWIND $nodes AS key
MERGE (n:{label} {{id: key}})
  ON CREATE SET n.created_at = $now
SET {mark("n")}
RETURN collect([key, id(n)]) AS nodes
"""


def _interaction_query(rel: str) -> str:
    # SET items apply left to right: weight and rating read the stored last_ts before it is advanced.
    # The decay goes to the later of the two times, so merging aggregates is order-independent.
    create_rating = ", e.rating = r.rating, e.review = r.review" if rel == "RATED" else ""
    match_rating = (
        ", e.rating = CASE WHEN r.rating IS NOT NULL AND r.last >= e.last_ts THEN r.rating ELSE e.rating END"
        ", e.review = CASE WHEN r.review IS NOT NULL AND r.last >= e.last_ts THEN r.review ELSE e.review END"
        if rel == "RATED"
        else ""
    )
    # r.u and r.t are internal ids that the node statements of the same transaction returned; the nodes are
    # already locked by those statements (SET of the mark).
    return f"""
UNWIND $rows AS r
MATCH (u) WHERE id(u) = r.u
MATCH (t) WHERE id(t) = r.t
MERGE (u)-[e:{rel}]->(t)
  ON CREATE SET e.weight = r.weight, e.count = r.count, e.first_ts = r.first, e.last_ts = r.last{create_rating}
  ON MATCH SET e.weight = CASE WHEN r.last >= e.last_ts
                               THEN e.weight * exp($k * (e.last_ts - r.last)) + r.weight
                               ELSE e.weight + r.weight * exp($k * (r.last - e.last_ts)) END,
               e.count = e.count + r.count,
               e.first_ts = CASE WHEN r.first < e.first_ts THEN r.first ELSE e.first_ts END{match_rating},
               e.last_ts = CASE WHEN r.last > e.last_ts THEN r.last ELSE e.last_ts END
"""


def _target(rel: str) -> str:
    return QUERY if rel == "SEARCHED" else ITEM


_NODES = {label: _upsert_nodes_query(label) for label in (USER, ITEM, QUERY)}
_QUERIES = {rel: _interaction_query(rel) for rel in set(REL_FOR_EVENT.values())}


def decayed_weight(times: Sequence[float], last: float, k: float) -> float:
    """Several events of one (user, relationship, target) as one edge's weight at ``last``: each decays with rate
    ``k`` (ln 2 / half-life); a single event weighs 1."""
    return sum(math.exp(-k * (last - t)) for t in times)


def aggregate(events: Sequence[tuple[Event, str]], half_life_s: float) -> dict[str, list[dict[str, Any]]]:
    """Per relationship type, one row per (user pseudonym, target): count, first/last ts, decayed weight."""
    k = LN2 / half_life_s
    groups: dict[tuple[str, str, str], list[Event]] = defaultdict(list)
    texts: dict[str, str] = {}
    for ev, user in events:
        rel = REL_FOR_EVENT[ev.type]
        if rel == "SEARCHED":
            assert ev.query is not None  # validated: a search has its query
            target = query_id(ev.query)
            texts[target] = normalise_query(ev.query)
        else:
            assert ev.item_id is not None  # validated: any other event has its item
            target = ev.item_id
        groups[(rel, user, target)].append(ev)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (rel, user, target), evs in sorted(groups.items()):
        if len(evs) == 1:  # the common case, without the generator overhead
            ts = evs[0].ts
            row = {"user": user, "target": target, "count": 1, "first": ts, "last": ts, "weight": 1.0}
        else:
            last = max(e.ts for e in evs)
            row = {
                "user": user,
                "target": target,
                "count": len(evs),
                "first": min(e.ts for e in evs),
                "last": last,
                "weight": decayed_weight([e.ts for e in evs], last, k),
            }
        if rel == "RATED":
            latest = max(evs, key=lambda e: e.ts)
            rated = [e for e in evs if e.rating is not None]
            row["rating"] = max(rated, key=lambda e: e.ts).rating if rated else None
            row["review"] = latest.review
        if rel == "SEARCHED":
            row["text"] = texts[target]
        out[rel].append(row)
    return out


def _item_records(events: Sequence[Event]) -> list[ItemRecord]:
    latest: dict[str, Event] = {}
    for ev in events:
        if ev.item is not None and ev.item_id is not None and (ev.item_id not in latest or ev.ts >= latest[ev.item_id].ts):
            latest[ev.item_id] = ev
    return [
        ItemRecord(
            id=item_id, title=ev.item.title, description=ev.item.description, brand=ev.item.brand, categories=ev.item.categories
        )
        for item_id, ev in latest.items()
        if ev.item is not None
    ]


@dataclass
class _Batch:
    """A validated batch, aggregated before its transaction (which may run while the next batch is prepared).

    ``rows`` aggregates all of ``events``; the transaction re-aggregates only if some were already applied.
    """

    result: IngestResult  # rejections and in-batch duplicates so far
    events: list[Event]  # valid, unique by event id
    users: list[str]  # the pseudonym of each event's user
    rows: dict[str, list[dict[str, Any]]]
    now: float


def _prepare(settings: GraphSettings, raw: Sequence[Mapping[str, Any]], now: float | None) -> _Batch:
    now = time.time() if now is None else now
    valid, rejected = validate_events(raw, settings, now)
    result = IngestResult(rejected=rejected)
    unique: dict[str, Event] = {}
    for _, ev in valid:
        if ev.event_id in unique:
            result.duplicates += 1
        else:
            unique[ev.event_id] = ev
    events = list(unique.values())
    key = settings.pseudonym_key.get_secret_value()
    pseudonyms: dict[str, str] = {}
    users = []
    for ev in events:
        user = pseudonyms.get(ev.user_id)
        if user is None:
            user = pseudonyms[ev.user_id] = pseudonymise(key, ev.user_id)
        users.append(user)
    rows = aggregate(list(zip(events, users)), settings.half_life_s) if events else {}
    return _Batch(result, events, users, rows, now)


def _apply(tx: neo4j.ManagedTransaction, batch: _Batch, settings: GraphSettings) -> tuple[int, int]:
    now = batch.now
    existing = set(tx.run(_EXISTING_SEEN, ids=[e.event_id for e in batch.events]).value("id"))
    if existing:
        kept = [(e, u) for e, u in zip(batch.events, batch.users) if e.event_id not in existing]
        fresh = [e for e, _ in kept]
        rows = aggregate(kept, settings.half_life_s) if kept else {}
    else:
        fresh, rows = batch.events, batch.rows
    if not fresh:
        return 0, len(existing)
    token = new_token()
    tx.run(_RECORD_SEEN, ids=[e.event_id for e in fresh], now=now).consume()
    upsert_items(tx, _item_records(fresh), token=token, now=now)
    nodes: dict[str, dict[str, Any]] = {USER: {}, ITEM: {}, QUERY: {}}
    for rel, rel_rows in rows.items():
        targets = nodes[_target(rel)]
        for r in rel_rows:
            nodes[USER][r["user"]] = r["user"]
            targets[r["target"]] = {"id": r["target"], "text": r["text"]} if rel == "SEARCHED" else r["target"]
    node_ids: dict[str, dict[str, int]] = {}
    for label, found in nodes.items():
        if found:  # sorted: a fixed lock order keeps concurrent batches from deadlocking
            record = tx.run(_NODES[label], nodes=[found[i] for i in sorted(found)], token=token, now=now).single(strict=True)
            node_ids[label] = dict(record[0])
    k = LN2 / settings.half_life_s
    users = node_ids[USER]
    for rel, rel_rows in sorted(rows.items()):
        targets = node_ids[_target(rel)]
        params = []
        for r in rel_rows:
            p = {
                "u": users[r["user"]],
                "t": targets[r["target"]],
                "count": r["count"],
                "first": r["first"],
                "last": r["last"],
                "weight": r["weight"],
            }
            if rel == "RATED":
                p["rating"], p["review"] = r["rating"], r["review"]
            params.append(p)
        tx.run(_QUERIES[rel], rows=params, k=k).consume()
    return len(fresh), len(existing)


def _write(driver: neo4j.Driver, settings: GraphSettings, batch: _Batch, database: str) -> IngestResult:
    result = batch.result
    if not batch.events:
        return result
    constraint_tries = transient_tries = 0
    while True:
        try:
            with driver.session(database=database) as session:
                accepted, dups = session.execute_write(_apply, batch, settings)
            break
        except ConstraintError as exc:
            constraint_tries += 1
            if constraint_tries == _CONSTRAINT_RETRIES:
                raise Unavailable("concurrent batches kept recording the same event ids; retry the batch") from exc
        except TransientError as exc:
            # The transaction was rolled back, so running the batch again is safe (the Seen ids make it idempotent).
            transient_tries += 1
            if transient_tries > _TRANSIENT_RETRIES:
                raise Unavailable(f"Neo4j could not take the batch, retry it: {exc}") from exc
            log.warning("batch of %d events: %s outlasted the driver's retries; running it again", len(batch.events), exc.code)
            time.sleep(random.uniform(0.5, 1.5) * _TRANSIENT_PAUSE_S * 2**transient_tries)
        except (ServiceUnavailable, SessionExpired) as exc:
            raise Unavailable(f"Neo4j could not take the batch, retry it: {exc}") from exc
    result.accepted += accepted
    result.duplicates += dups
    return result


def ingest_events(
    driver: neo4j.Driver,
    settings: GraphSettings,
    events: Sequence[Mapping[str, Any]],
    *,
    database: str = "neo4j",
    now: float | None = None,
) -> IngestResult:
    """Validate and store one batch in one transaction. Safe to call again with the same events."""
    return _write(driver, settings, _prepare(settings, events, now), database)


# While a batch is prepared (pure Python, holding the GIL), the writer thread needs the GIL briefly after each
# reply from Neo4j; with the default 5 ms switch interval it would wait up to that long each time, idling Neo4j.
_GIL_SLICE_S = 0.0002
_gil_lock = threading.Lock()
_gil_users = 0
_gil_saved = 0.0


@contextlib.contextmanager
def _short_gil_slices() -> Iterator[None]:
    global _gil_users, _gil_saved
    with _gil_lock:
        if _gil_users == 0:
            _gil_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_gil_saved, _GIL_SLICE_S))
        _gil_users += 1
    try:
        yield
    finally:
        with _gil_lock:
            _gil_users -= 1
            if _gil_users == 0:
                sys.setswitchinterval(_gil_saved)


def ingest_batches(
    driver: neo4j.Driver,
    settings: GraphSettings,
    batches: Iterable[Sequence[Mapping[str, Any]]],
    *,
    database: str = "neo4j",
    now: float | None = None,
) -> Iterator[IngestResult]:
    """``ingest_events`` for each batch in order (one transaction each), yielding each batch's result.

    Pipelined for bulk loads: while one batch's transaction runs in Neo4j, the next batch is validated,
    pseudonymised and aggregated here. Transactions still run one after another, in order, so the outcome is
    the same as calling ``ingest_events`` per batch. If a batch fails, its error is raised and no later batch
    is written. A consumer that stops early still lets the batch already handed to Neo4j finish (ingestion is
    idempotent, so sending it again later is safe).
    """
    with _short_gil_slices(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest") as writer:
        pending: Future[IngestResult] | None = None
        try:
            for raw in batches:
                batch = _prepare(settings, raw, now)
                if pending is not None:
                    yield pending.result()
                pending = writer.submit(_write, driver, settings, batch, database)
            if pending is not None:
                yield pending.result()
                pending = None
        finally:
            if pending is not None:  # the consumer stopped early or preparing failed: let the write finish
                pending.exception()


def prune_seen(
    driver: neo4j.Driver, settings: GraphSettings, *, database: str = "neo4j", now: float | None = None, batch: int = 10000
) -> int:
    """Forget event ids applied longer ago than the retention window; returns how many."""
    before = (time.time() if now is None else now) - settings.dedup_retention_hours * 3600.0
    total = 0
    while True:
        n = int(driver.execute_query(_PRUNE_SEEN, before=before, batch=batch, database_=database).records[0]["n"])
        total += n
        if n < batch:
            return total
