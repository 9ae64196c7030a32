"""A thread that follows the delta stream and records when each node's vector was published (bench.freshness and
its load runs, bench.dashboard)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import redis

from proto.interest.v1 import interest_pb2 as pb


class StreamWatch(threading.Thread):
    """Every time each node id appears as an upsert on the delta stream, from the stream's tail at start:
    ``seen`` holds the first time, ``times`` all of them, ``answered`` the first that answers the node's mark."""

    def __init__(self, url: str, stream: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.stream = stream
        last = self.client.xrevrange(stream, count=1)
        self.position = last[0][0] if last else b"0-0"
        self.seen: dict[str, float] = {}
        self.times: dict[str, list[float]] = defaultdict(list)
        # the first upsert that answers a change mark of the node (``changed_at`` set: the round that read the
        # mark), not one that recomputed it for a neighbour's change (a K-layer encoder's out-set)
        self.answered: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.client.xread({self.stream: self.position}, count=2000, block=100)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                time.sleep(0.5)  # Redis restarts (the soak's faults): the stream survives in its append-only file
                continue
            now = time.time()
            for _name, entries in reply or ():
                for entry_id, fields in entries:
                    self.position = entry_id
                    d = pb.EmbeddingDelta.FromString(fields[b"d"])
                    if d.op == pb.EmbeddingDelta.OP_UPSERT:
                        self.seen.setdefault(d.id, now)
                        self.times[d.id].append(now)
                        if d.changed_at > 0:
                            self.answered.setdefault(d.id, now)

    def first_after(self, node: str, at: float) -> float | None:
        """When ``node`` was first published at or after ``at`` (None: not yet)."""
        for t in self.times.get(node, ()):
            if t >= at:
                return t
        return None
