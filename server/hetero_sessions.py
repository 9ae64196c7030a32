"""What a server reads to embed a session under a 2-layer heterogeneous version (`workers.hetero_side`): the
version's card and its session items' stored numbers, from the Redis the workers keep them in, one round trip per
session. A spectral version's user side comes from Neo4j instead (`graphdb.model_state`)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
import redis

from graphdb.errors import Unavailable
from server.settings import ServerSettings
from workers.hetero_side import HeteroSideCard, ItemSide, field
from workers.redis_connect import connect
from workers.redis_keys import HETERO_CARD, HETERO_LAYERS

T = TypeVar("T")


class HeteroSides:
    """A blocking Redis client of its own (the delta stream's is the event loop's), made on first use."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self._client: Any = None  # redis.Redis, or RedisCluster
        self._lock = threading.Lock()

    def _redis(self) -> Any:
        with self._lock:
            if self._client is None:
                s = self.settings
                assert s.redis_url is not None  # made only with one (`server.engine.Engine`)
                self._client = connect(
                    s.redis_url, sentinel_master=s.redis_sentinel_master, cluster=s.redis_cluster, socket_timeout=5.0
                )
            return self._client

    def card(self, version: str) -> HeteroSideCard | None:
        """The version's card, None when it has none (a spectral version, or one rolled out before cards)."""
        data = self._read(lambda r: r.get(HETERO_CARD.format(version=version)))
        return None if data is None else HeteroSideCard.from_bytes(version, data)

    def items(self, version: str, item_ids: Iterable[str]) -> dict[str, ItemSide]:
        """The stored numbers of those items that have all three (input, layer-1 output, count)."""
        ids = sorted(set(item_ids))
        if not ids:
            return {}
        names = [field(k, "item", i) for i in ids for k in (0, 1, "n")]
        values = self._read(lambda r: r.hmget(HETERO_LAYERS.format(version=version), names))
        out = {}
        for n, i in enumerate(ids):
            x0, h1, rows = values[3 * n : 3 * n + 3]
            if isinstance(x0, bytes) and isinstance(h1, bytes) and rows is not None:
                out[i] = ItemSide(np.frombuffer(x0, np.float32), np.frombuffer(h1, np.float32), int(rows))
        return out

    def _read(self, call: Callable[[Any], T]) -> T:
        try:
            return call(self._redis())
        except redis.RedisError as exc:
            raise Unavailable(f"Redis, where this model's session inputs are kept, did not answer ({exc}); retry later") from exc
