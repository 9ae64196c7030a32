"""The embedding delta stream (workers -> servers): a Redis stream of ``interest.v1.EmbeddingDelta`` messages.

Each stream entry has one field, ``d``, holding the serialised message. Consumers read with plain ``XREAD``
(no consumer group: every server replica must see every delta) from the position recorded in its snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import numpy as np
from numpy.typing import ArrayLike

from proto.interest.v1 import interest_pb2 as pb
from workers.redis_connect import AsyncRedis, connect_async

log = logging.getLogger(__name__)

FIELD = b"d"
Delta = pb.EmbeddingDelta


def connect_redis(url: str, block_ms: int = 200, *, sentinel_master: str = "", cluster: bool = False) -> AsyncRedis:
    """An async client whose reads time out, so a lost connection can never hang the consumer (one instance,
    Sentinel or Cluster: workers.redis_connect)."""
    return connect_async(
        url, sentinel_master=sentinel_master, cluster=cluster, socket_timeout=block_ms / 1000.0 + 5.0, socket_connect_timeout=5.0
    )


def encode_upsert(node_type: pb.NodeType, node_id: str, vector: ArrayLike, model_version: str, ts: float | None = None) -> bytes:
    return Delta(
        op=Delta.OP_UPSERT,
        node_type=node_type,
        id=node_id,
        model_version=model_version,
        vector=np.asarray(vector, np.float32).tolist(),
        ts=time.time() if ts is None else ts,
    ).SerializeToString()


def encode_delete(node_type: pb.NodeType, node_id: str, model_version: str = "", ts: float | None = None) -> bytes:
    return Delta(
        op=Delta.OP_DELETE, node_type=node_type, id=node_id, model_version=model_version, ts=time.time() if ts is None else ts
    ).SerializeToString()


def encode_activate(model_version: str) -> bytes:
    return Delta(op=Delta.OP_ACTIVATE_MODEL, model_version=model_version, ts=time.time()).SerializeToString()


async def publish(client: AsyncRedis, stream: str, payload: bytes, maxlen: int | None = 1_000_000) -> str:
    """Appends one delta; the stream is trimmed approximately so it cannot grow without bound."""
    entry = await client.xadd(stream, {FIELD: payload}, maxlen=maxlen, approximate=True)
    return entry.decode() if isinstance(entry, bytes) else str(entry)


async def stream_tail(client: AsyncRedis, stream: str) -> str:
    """The id of the newest entry ("0-0" for an empty stream): where to resume after a rebuild from Neo4j."""
    last = await client.xrevrange(stream, count=1)
    if not last:
        return "0-0"
    entry = last[0][0]
    return entry.decode() if isinstance(entry, bytes) else str(entry)


class DeltaConsumer:
    """Reads the stream from ``position`` and hands each decoded delta to ``apply`` (on the event loop)."""

    def __init__(
        self,
        client: AsyncRedis,
        stream: str,
        position: str,
        apply: Callable[[pb.EmbeddingDelta], Awaitable[None] | None],
        *,
        block_ms: int = 200,
        batch: int = 1000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.position = position
        self.apply = apply
        self.block_ms = block_ms
        self.batch = batch
        self.applied = 0
        self.malformed = 0
        self.last_applied_at = 0.0
        self.last_delta_ts = 0.0  # ts carried by the last applied delta (freshness)
        self.caught_up_at = 0.0  # when a read last reached the tail of the stream (lag)
        self.stopping = False

    async def run(self) -> None:
        backoff = 0.1
        while not self.stopping:
            try:
                reply: Any = await self.client.xread({self.stream: self.position}, count=self.batch, block=self.block_ms)
                read_at = time.time()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep serving what we have, retry with backoff
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # redis-py may turn a cancel into its own error
                    raise asyncio.CancelledError() from exc
                log.warning("delta stream read failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            read = 0
            for _stream, entries in reply or ():
                read += len(entries)
                for entry_id, fields in entries:
                    await self._apply_one(entry_id, fields)
            if read < self.batch:
                self.caught_up_at = read_at

    async def _apply_one(self, entry_id: bytes | str, fields: dict[bytes, bytes]) -> None:
        payload = fields.get(FIELD)
        try:
            msg = pb.EmbeddingDelta.FromString(payload) if payload is not None else None
        except Exception:  # noqa: BLE001 - a corrupt entry must not stop the stream
            msg = None
        if msg is None:
            self.malformed += 1
            log.warning("skipping malformed delta %r", entry_id)
        else:
            result = self.apply(msg)
            if asyncio.iscoroutine(result):
                await result
            self.applied += 1
            self.last_applied_at = time.time()
            self.last_delta_ts = msg.ts
        self.position = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
