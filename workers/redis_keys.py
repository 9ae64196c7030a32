"""The Redis keys of a deployment, and where Redis Cluster puts them.

Redis Cluster hashes a key to one of 16384 slots by CRC16 of its hash tag (the part between the first ``{`` and
the next ``}``, when non-empty) or else of the whole key. Every command the workers, the scheduler and the servers
send names a single key, so any placement works today; the keys still share the tag ``{ig}`` (the locks here,
the stream and the change signal by setting them so) so that they live on one shard, and an atomic step over
several of them (a publish fenced by the partition lock, in one script) stays legal. The Celery broker is not on
the list: kombu's Redis transport needs several keys per command and does not run on Redis Cluster.
"""

from __future__ import annotations

from workers.settings import WorkerSettings

TAG = "{ig}"
SLOTS = 16384
LOCK = f"{TAG}:recompute:lock"  # the one recompute lock (IG_WORKER_PARTITIONS = 1)
PART_LOCK_PREFIX = f"{TAG}:recompute:part"
EGO_LOCK_PREFIX = f"{TAG}:recompute:ego"
# The K-layer encoders' pending last-layer work (workers.hetero_recompute.PendingSet): the scheduler wakes a round
# while it is not empty, as while marks wait.
HETERO_PENDING = "ig:hetero:pending"
# A K-layer version's intermediate outputs (workers.hetero_recompute.LayerStore; fields: workers.hetero_side.field),
# and the card with which servers embed sessions from them (workers.hetero_side.HeteroSideCard).
HETERO_LAYERS = "ig:hetero:layers:{version}"
HETERO_CARD = "ig:hetero:card:{version}"


def part_lock(index: int, partitions: int) -> str:
    # The count is in the name: workers started with another IG_WORKER_PARTITIONS never pass for the same claim.
    return f"{PART_LOCK_PREFIX}:{partitions}:{index}"


def ego_lock(index: int, partitions: int) -> str:
    """The lock of one partition's ego rounds (`workers.jobs.ego_rounds`): one ego round at a time per partition."""
    return f"{EGO_LOCK_PREFIX}:{partitions}:{index}"


def queued_key(changed_key: str, partition: int | None = None) -> str:
    """The flag that says a recompute (of ``partition``) is queued and not started: the change key's tag."""
    return f"{changed_key}:queued" if partition is None else f"{changed_key}:queued:{partition}"


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), the checksum of Redis Cluster's key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def hash_tag(key: str) -> str:
    """The part of ``key`` that Redis Cluster hashes."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def slot(key: str) -> int:
    return _crc16(hash_tag(key).encode()) % SLOTS


def deployment_keys(ws: WorkerSettings) -> dict[str, str]:
    """Every key the workers, the scheduler and the servers share (the servers read the same stream and signal)."""
    keys = {"delta stream": ws.delta_stream, "change signal": ws.changed_key, "recompute lock": LOCK}
    if ws.partitions == 1:
        keys["queued flag"] = queued_key(ws.changed_key)
        keys["ego lock"] = ego_lock(0, 1)
    for p in range(ws.partitions if ws.partitions > 1 else 0):
        keys[f"partition {p} lock"] = part_lock(p, ws.partitions)
        keys[f"partition {p} queued flag"] = queued_key(ws.changed_key, p)
        keys[f"partition {p} ego lock"] = ego_lock(p, ws.partitions)
    return keys
