"""The marks of a partition: a set of slots (``graphdb.marks.SLOTS``) read through the ``dirty_slot`` index.

A partitioned recompute (``workers.partitions``) owns the slots ``s`` with ``s % partitions == index``. It reads
only their marks, and hands work that belongs to another partition over as a mark there (``hand_off``): the
change tracking stays the one transactional mechanism, and no node is written by two partitions.
"""

from __future__ import annotations

from typing import Iterable

import neo4j

from graphdb.changes import MARK_COLUMNS, Mark, newest_and_oldest
from graphdb.marks import SLOTS, mark, new_token, slot_expr
from graphdb.schema import DIRTY, NODE_LABELS

_READ = f"""
MATCH (n:{DIRTY}) WHERE n.slot IN $slots
WITH n ORDER BY n.dirty_since, n.id
LIMIT $limit
RETURN {MARK_COLUMNS}
"""

_READ_NEWEST = f"""
MATCH (n:{DIRTY}) WHERE n.slot IN $slots AND n.dirty_at IS NOT NULL
WITH n ORDER BY n.dirty_at DESC, n.id
LIMIT $limit
RETURN {MARK_COLUMNS}
"""

# Per partition: marks waiting and the oldest one's dirty_since (the backlog operators watch, per partition).
_BACKLOG = f"""
MATCH (n:{DIRTY})
RETURN n.slot % $partitions AS part, count(n) AS waiting, min(n.dirty_since) AS oldest
"""

_FILL = f"""
MATCH (n:{DIRTY}) WHERE n.slot IS NULL
WITH n LIMIT $batch
SET n.slot = {slot_expr("n")}
RETURN count(n) AS n
"""


def _hand_off_query(label: str) -> str:
    return f"""
UNWIND $ids AS id
MATCH (n:{label} {{id: id}})
SET {mark("n", last_change=False)}
RETURN count(n) AS marked
"""


_HAND_OFF = {label: _hand_off_query(label) for label in NODE_LABELS}


def slots_of(index: int, partitions: int) -> list[int]:
    """The slots of partition ``index`` among ``partitions``."""
    return list(range(index, SLOTS, partitions))


def read_partition_marks(
    driver: neo4j.Driver, index: int, partitions: int, *, limit: int = 10000, newest: int = 0, database: str = "neo4j"
) -> list[Mark]:
    """``limit`` marks of one partition: its ``newest`` most recently changed ones, then its oldest
    (`graphdb.changes.read_marks`)."""
    slots = slots_of(index, partitions)
    return newest_and_oldest(
        lambda query, n: driver.execute_query(
            query, slots=slots, limit=n, database_=database, routing_=neo4j.RoutingControl.READ
        ).records[0],
        _READ_NEWEST,
        _READ,
        limit,
        newest,
    )


def partition_backlog(driver: neo4j.Driver, partitions: int, *, database: str = "neo4j") -> dict[int, tuple[int, float | None]]:
    """partition -> (marks waiting, oldest ``dirty_since``), for the partitions with marks."""
    records = driver.execute_query(_BACKLOG, partitions=partitions, database_=database, routing_=neo4j.RoutingControl.READ).records
    return {int(r["part"]): (int(r["waiting"]), r["oldest"]) for r in records if r["part"] is not None}


def hand_off(driver: neo4j.Driver, nodes: dict[str, Iterable[str]], *, now: float, database: str = "neo4j") -> int:
    """Mark these nodes (label -> ids) in one transaction, for the partitions that own them; returns how many."""
    by_label = {label: sorted(set(ids)) for label, ids in nodes.items() if ids}  # a fixed lock order

    def work(tx: neo4j.ManagedTransaction) -> int:
        token = new_token()
        return sum(
            tx.run(_HAND_OFF[label], ids=ids, token=token, now=now).single(strict=True)["marked"]
            for label, ids in sorted(by_label.items())
        )

    if not by_label:
        return 0
    with driver.session(database=database) as session:
        return session.execute_write(work)


def fill_slots(driver: neo4j.Driver, *, database: str = "neo4j", batch: int = 10000) -> int:
    """Give a slot to marked nodes that lack one (marked before slots existed); returns how many."""
    total = 0
    while n := int(driver.execute_query(_FILL, batch=batch, database_=database).records[0]["n"]):
        total += n
    return total
