"""A worker's snapshot request (an OP_SNAPSHOT delta) makes every server following the stream write its index
snapshot, which a new server then starts from."""

from __future__ import annotations

import time

import pytest

from proto.interest.v1 import interest_pb2 as pb
from server.snapshot import load_snapshot
from tests.server.conftest import base_settings, seed_graph_items, start_harness
from workers.publish import publish, snapshot_request

STREAM = "ig:test-snapshot-request"
N_ITEMS = 40


def _current(directory) -> str | None:
    f = directory / "CURRENT"
    return f.read_text().strip() if f.exists() else None


def test_snapshot_request_makes_each_replica_write_its_index(neo4j_driver, graph_settings, redis_url, tmp_path):
    import redis

    seed_graph_items(neo4j_driver, graph_settings, redis_url, STREAM, N_ITEMS)
    dirs = [tmp_path / "a", tmp_path / "b"]
    started = [
        start_harness(
            base_settings(redis_url=redis_url, delta_stream=STREAM, delta_block_ms=50, snapshot_dir=d, snapshot_interval_s=3600.0),
            graph_settings,
            neo4j_driver,
            redis_url=redis_url,
            start_lifecycle=True,
        )
        for d in dirs
    ]
    try:
        before = [_current(d) for d in dirs]
        publish(redis.Redis.from_url(redis_url), STREAM, [snapshot_request()])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_current(d) in (None, b) for d, b in zip(dirs, before)):
            time.sleep(0.05)
        for d, b in zip(dirs, before):
            assert _current(d) not in (None, b), f"no new snapshot in {d}"
            snap = load_snapshot(d, started[0][0].engine.params, None)
            assert snap is not None and len(snap.index) == N_ITEMS and snap.index.model_version == "m1"
    finally:
        for _, stop in started:
            stop()


@pytest.mark.parametrize("op", [pb.EmbeddingDelta.OP_SNAPSHOT])
def test_snapshot_request_carries_only_its_op(op):
    msg = pb.EmbeddingDelta.FromString(snapshot_request())
    assert msg.op == op and not msg.id and not msg.vector and msg.ts > 0
