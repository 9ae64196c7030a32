"""How many marks the next incremental round takes, and how many of them are the newest (issue 18, overload).

An event waits for the round in progress, then for its own, and a round's time grows with its marks (each
written vector updates Neo4j's vector index, holding the written nodes' locks until the commit). Under a backlog a
round of ``IG_WORKER_RECOMPUTE_BATCH`` oldest marks (20,000) took about 25 s on the 2-core machine and stalled
ingestion for its commit; a shopper active now waited behind every older mark, and at a load near the ceiling that
wait never ended. So, with ``IG_WORKER_ROUND_TARGET_S`` > 0:

- a round takes as many marks as this process's recent rounds did in that many seconds (their marks per second,
  a moving average), at least `FLOOR` and at most the batch;
- while rounds find a backlog (a round took all it could), each takes twice the last one's share of time, up to
  ``IG_WORKER_ROUND_MAX_S``: a round has a fixed cost (its reads, one commit), so rounds held at the target under a
  backlog drain it more slowly (measured rates include that cost, so they would stay small for good: the soak
  with Neo4j faults drained 2.6x slower, docs/reliability.md); the first round of a process starts at the floor
  and grows the same way;
- the newest first (`graphdb.changes.read_marks`: by their last change), so an active shopper's vector is fresh
  while the backlog drains; at least ``IG_WORKER_ROUND_OLDEST_SHARE`` of them the oldest, so the backlog drains
  at that share of the throughput also under a sustained overload, and no mark waits for ever. A partitioned
  round's hand-offs have no last change (`graphdb.marks.mark`): they wait at the oldest share. The share trades
  the median after an outage for its tail (the soak with Neo4j faults: 0.1 -> p50 3.7 s, p99 197 s; 0.3 -> 10.1 s,
  125 s; 1, arrival order -> 15.2 s, 89 s), and arrival order fails the overload at the ceiling (docs/benchmarks.md).

Any set of marks gives the same vectors (a round computes what its marks affect from the graph as it is), so the
choice changes only who waits, never what is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Marks a round takes at least; rounds smaller than this (a quiet load) say little of the per-mark rate, which
# their fixed cost dominates, and do not update it.
FLOOR = 100
# Weight of the last round in the moving average of the marks per second.
ALPHA = 0.5


@dataclass
class RoundSize:
    target_s: float  # 0: every round takes ``batch`` oldest marks (the behaviour before the overload fix)
    batch: int
    oldest_share: float
    max_s: float = 0.0  # under a backlog rounds grow up to this many seconds of marks (below target_s: no growth)
    rate: float | None = None  # marks per second of this process's recent rounds
    grow: float = 1.0  # the next round's seconds, as a multiple of target_s

    def next(self) -> tuple[int, int]:
        """(marks the next round takes at most, of which the newest at most)."""
        if not self.target_s:
            return self.batch, 0
        want = FLOOR * self.grow if self.rate is None else self.rate * self.target_s * self.grow
        limit = min(self.batch, max(FLOOR, int(want)))
        return limit, limit - math.ceil(limit * self.oldest_share)

    def record(self, marks: int, seconds: float, backlog: bool = False) -> None:
        """A round of ``marks`` took ``seconds``; ``backlog``: it took as many as it could, and more were waiting."""
        self.grow = min(2 * self.grow, max(1.0, self.max_s / self.target_s)) if backlog and self.target_s else 1.0
        if marks < FLOOR or seconds <= 0:
            return
        rate = marks / seconds
        self.rate = rate if self.rate is None else ALPHA * rate + (1 - ALPHA) * self.rate
