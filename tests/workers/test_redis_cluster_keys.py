"""The deployment's Redis keys under Redis Cluster: a real redis-server in cluster mode (one node owning every slot,
which still refuses a command whose keys hash to different slots), reached with redis-py's cluster client.

With the stream and the change signal set with the ``{ig}`` hash tag (docs/operations.md, Redis Cluster), every key
of the deployment hashes to the one slot Redis computes for ``ig``, and the workers' steps on them (a partition's
lock, publishing vectors, the scheduler's signal and flags) run there."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster

from graphdb import localstack
from tests.redis_nodes import start, stop, until
from workers import partitions, publish, redis_keys
from workers.settings import WorkerSettings

CLUSTER_SETTINGS = WorkerSettings(delta_stream="{ig}:embeddings", changed_key="{ig}:changed", partitions=3)


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory):
    """A one-node Redis Cluster on a free loopback port: it owns slots 0-16383."""
    # the cluster bus on a free port of its own (its default, port + 10000, may not exist)
    proc, port = start(
        tmp_path_factory.mktemp("redis-cluster"), "--cluster-enabled", "yes", "--cluster-port", str(localstack.free_port())
    )
    try:
        plain = redis.Redis(port=port)
        plain.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, redis_keys.SLOTS - 1)
        until(lambda: plain.cluster("info")["cluster_state"] == "ok", "the cluster's state ok")
        plain.close()
        yield port
    finally:
        stop(proc)


def test_the_slot_function_is_redis_clusters(cluster_node) -> None:
    node = redis.Redis(port=cluster_node)
    for key in ["foo", "{ig}:changed", "a{ig}b", "{}{ig}", "{ig", "ig}", "{user1000}.following", "ig:embeddings"]:
        assert redis_keys.slot(key) == node.cluster("keyslot", key), key
    node.close()


def test_every_key_of_a_tagged_deployment_lands_in_igs_slot(cluster_node) -> None:
    keys = redis_keys.deployment_keys(CLUSTER_SETTINGS)
    assert len(keys) == 3 + 3 * 3  # stream, signal, the lock, and per partition a lock, a queued flag and an ego lock
    node = redis.Redis(port=cluster_node)
    assert {name: node.cluster("keyslot", key) for name, key in keys.items()} == dict.fromkeys(keys, redis_keys.slot("ig"))
    node.close()
    # untagged (the single-instance defaults) they scatter: fine for single-key commands, not for a fenced publish
    assert len({redis_keys.slot(k) for k in redis_keys.deployment_keys(WorkerSettings(partitions=3)).values()}) > 1


def test_the_workers_steps_run_on_the_cluster(cluster_node) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_node)
    ws = CLUSTER_SETTINGS
    try:
        with partitions.claim(client, 1, ws.partitions, timeout_s=10) as held:
            assert held is not None and client.exists(partitions.lock_name(1, ws.partitions))
            with partitions.claim(client, 1, ws.partitions, timeout_s=10) as again:
                assert again is None  # one holder per partition, on the cluster too
            held.keep()
            assert publish.publish(client, ws.delta_stream, [b"a", b"b"]) == 2
        assert not client.exists(partitions.lock_name(1, ws.partitions))  # given back
        assert [f[publish.FIELD.encode()] for _, f in client.xrange(ws.delta_stream)] == [b"a", b"b"]
        assert client.set(redis_keys.queued_key(ws.changed_key, 1), b"1", nx=True, ex=5)
        client.lpush(ws.changed_key, b"1")
        assert client.blpop([ws.changed_key], timeout=1) == (ws.changed_key.encode(), b"1")
        # one step over several of the tagged keys is legal on the cluster; over an untagged one it is refused
        assert client.delete(ws.changed_key, redis_keys.queued_key(ws.changed_key, 1)) == 1
        node = redis.Redis(port=cluster_node)
        with pytest.raises(redis.exceptions.ResponseError, match="hash to the same slot"):
            node.mget(ws.delta_stream, "ig:embeddings")
        node.close()
    finally:
        client.close()
