"""One incremental round's writes in one transaction: the vectors of each label (each clearing the mark its row
answers when the token is unchanged), the ego marks of the users written (their ego vectors follow in ego rounds:
`graphdb.ego`), and the compare-and-clear of the other marks read.

The same statements as `graphdb.embeddings.write_and_clear`, `graphdb.ego.MARK` and `graphdb.changes.clear_marks`,
committed once instead of one by one: at 200 events/s a
round holds a few dozen users, and each commit carries a fixed cost (the vector indexes' update) that was a
third of such a round (issue 16). All or nothing: a round that fails before the commit leaves every mark it
read, and runs again (each statement is idempotent, so a retried transaction is too).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import neo4j

from graphdb.changes import _CLEAR as _CLEAR_MARKS
from graphdb.changes import Mark
from graphdb.ego import MARK as _MARK_EGO
from graphdb.embeddings import _WRITE as _WRITE_VECTORS
from graphdb.errors import InvalidInput
from graphdb.schema import ITEM, NODE_LABELS, QUERY, USER


@dataclass
class RoundWrites:
    """What one round writes. ``vectors``: label -> id -> vector; ``tokens``: label -> id -> the token of the mark
    the vector answers; ``in_scales``: item id -> in_scale (items only); ``ego_marks``: users whose ego vector is
    due (marked after the vectors); ``marks``: the other marks read, compared and cleared after the writes."""

    version: str
    vectors: Mapping[str, Mapping[str, Sequence[float]]] = field(default_factory=dict)
    tokens: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    in_scales: Mapping[str, float] = field(default_factory=dict)
    ego_marks: Sequence[str] = ()
    marks: Sequence[Mark] = ()


@dataclass
class RoundCounts:
    written: dict[str, int] = field(default_factory=dict)  # label -> vectors written
    cleared: int = 0  # marks cleared, by the writes and the compare-and-clear


def commit_round(
    driver: neo4j.Driver, writes: RoundWrites, *, database: str = "neo4j", now: float | None = None, batch_size: int = 5000
) -> RoundCounts:
    """Write everything of ``writes`` in one transaction (items, users, queries, the ego marks, then the other
    marks); returns the counts."""
    for label in writes.vectors:
        if label not in NODE_LABELS:
            raise InvalidInput(f"unknown node type {label!r}; expected one of {', '.join(NODE_LABELS)}")
    now = time.time() if now is None else now
    rows: dict[str, list[dict[str, Any]]] = {}
    for label, vecs in writes.vectors.items():
        tokens = writes.tokens.get(label, {})
        rows[label] = [
            {
                "id": i,
                "vector": [float(x) for x in v],
                "token": tokens.get(i),
                "in_scale": None if label != ITEM or (s := writes.in_scales.get(i)) is None else float(s),
            }
            for i, v in vecs.items()
        ]
    marks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in writes.marks:
        marks[m.label].append({"id": m.id, "token": m.token})

    def work(tx: neo4j.ManagedTransaction) -> RoundCounts:
        out = RoundCounts()
        for label in sorted(rows, key=_WRITE_ORDER.index):
            for batch in _batches(rows[label], batch_size):
                rec = tx.run(_WRITE_VECTORS[label], rows=batch, version=writes.version, now=now).single(strict=True)
                out.written[label] = out.written.get(label, 0) + rec["written"]
                out.cleared += rec["cleared"]
        if writes.ego_marks:
            tx.run(_MARK_EGO, ids=sorted(writes.ego_marks), now=now).consume()
        for label in sorted(marks):
            ordered = sorted(marks[label], key=lambda r: r["id"])  # a fixed lock order avoids deadlocks
            out.cleared += tx.run(_CLEAR_MARKS[label], marks=ordered).single(strict=True)["cleared"]
        return out

    if not (writes.ego_marks or any(rows.values()) or marks):
        return RoundCounts()
    with driver.session(database=database) as session:
        return session.execute_write(work)


_WRITE_ORDER = [ITEM, USER, QUERY, *sorted(set(NODE_LABELS) - {ITEM, USER, QUERY})]  # as the separate writes ran


def _batches(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [rows[s : s + size] for s in range(0, len(rows), size)]
