"""Publishing vectors to the servers: ``interest.v1.EmbeddingDelta`` entries on a Redis stream.

Servers read the stream with plain XREAD from their snapshot position (``server.delta``), so every replica
sees every delta. Entries carry the node's vector, its model version and the time it was computed; user ids
are pseudonyms. The stream is trimmed approximately so it cannot grow without bound.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Sequence

import numpy as np
import redis

from proto.interest.v1 import interest_pb2 as pb

FIELD = "d"
Delta = pb.EmbeddingDelta
NODE_TYPES = {"User": pb.NODE_TYPE_USER, "Item": pb.NODE_TYPE_ITEM}


def upserts(
    label: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    version: str,
    ts: float,
    changed_at: Mapping[str, float] | None = None,
    in_scales: Mapping[str, float] | None = None,
) -> Iterable[bytes]:
    """``changed_at``: id -> when its change mark was set (servers observe mark -> served as freshness);
    ``in_scales``: item id -> its ``in_scale`` (servers embed sessions with it, `workers.user_side`)."""
    node_type = NODE_TYPES[label]
    changed = changed_at or {}
    scales = in_scales or {}
    for node_id, vec in zip(ids, vectors):
        yield Delta(
            op=Delta.OP_UPSERT,
            node_type=node_type,
            id=node_id,
            model_version=version,
            vector=np.asarray(vec, np.float32).tolist(),
            ts=ts,
            changed_at=changed.get(node_id) or 0.0,
            in_scale=scales.get(node_id) or 0.0,
        ).SerializeToString()


def activation(version: str) -> bytes:
    return Delta(op=Delta.OP_ACTIVATE_MODEL, model_version=version, ts=time.time()).SerializeToString()


def snapshot_request() -> bytes:
    """Asks every server following the stream to write its index snapshot now."""
    return Delta(op=Delta.OP_SNAPSHOT, ts=time.time()).SerializeToString()


def publish(client: redis.Redis, stream: str, payloads: Iterable[bytes], *, maxlen: int = 1_000_000, chunk: int = 1000) -> int:
    """Append the payloads in pipelined chunks; returns how many were appended."""
    n = 0
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.xadd(stream, {FIELD: payload}, maxlen=maxlen, approximate=True)
        n += 1
        if n % chunk == 0:
            pipe.execute()
    pipe.execute()
    return n
