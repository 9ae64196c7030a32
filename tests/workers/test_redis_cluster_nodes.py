"""A three-node Redis Cluster, for real (three redis-servers on loopback, slots split by ``redis-cli --cluster
create``): the workers' and the server's clients, built with ``redis_cluster`` on (`workers.redis_connect`) from
the URL of a node that does not own the deployment's slot, follow the ``MOVED`` redirect to the node that does,
where a plain client is refused."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from graphdb import localstack
from server import delta
from tests.redis_nodes import start, stop, until
from workers import partitions, publish, redis_connect, redis_keys
from workers.settings import WorkerSettings

NODES = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> list[int]:
    root: Path = tmp_path_factory.mktemp("redis-cluster-3")
    started = [
        start(root / f"node{i}", "--cluster-enabled", "yes", "--cluster-port", str(localstack.free_port()), "--appendonly", "no")
        for i in range(NODES)
    ]
    ports = [port for _, port in started]
    try:
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli comes with redis-server (`make system`)"
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for p in ports:
            node = redis.Redis(port=p)
            until(
                lambda: node.cluster("info")["cluster_state"] == "ok" and int(node.cluster("info")["cluster_known_nodes"]) == NODES,
                "ok",
            )
            node.close()
        yield ports
    finally:
        stop(*(proc for proc, _ in started))


def _owner_and_other(ports: list[int]) -> tuple[int, int]:
    """(the node owning ``{ig}``'s slot, another node)."""
    slot = redis_keys.slot("ig")
    node = redis.Redis(port=ports[0])
    ranges = node.execute_command("CLUSTER", "SLOTS")  # [[first, last, [host, port, id], ...], ...]
    node.close()
    owner = next(int(r[2][1]) for r in ranges if r[0] <= slot <= r[1])
    return owner, next(p for p in ports if p != owner)


def test_the_slots_are_split_over_three_nodes(cluster: list[int]) -> None:
    node = redis.Redis(port=cluster[0])
    owners = {int(entry[2][1]) for entry in node.execute_command("CLUSTER", "SLOTS")}
    node.close()
    assert owners == set(cluster)


def test_the_workers_and_servers_clients_follow_redirects(cluster: list[int]) -> None:
    owner, other = _owner_and_other(cluster)
    url = f"redis://127.0.0.1:{other}/0"
    ws = WorkerSettings(redis_url=url, redis_cluster=True, delta_stream="{ig}:embeddings", changed_key="{ig}:changed", partitions=2)
    plain = redis.Redis(port=other)
    with pytest.raises(redis.exceptions.MovedError):
        plain.xlen(ws.delta_stream)  # the node asked does not hold the slot: a client that cannot follow fails
    plain.close()

    worker = redis_connect.connect(ws.redis_url, cluster=ws.redis_cluster, socket_timeout=5)
    with partitions.claim(worker, 0, ws.partitions, timeout_s=10) as held:
        assert held is not None
        held.keep()
        assert publish.publish(worker, ws.delta_stream, [b"a", b"b"]) == 2
    worker.lpush(ws.changed_key, b"1")
    assert worker.delete(ws.changed_key, redis_keys.queued_key(ws.changed_key, 0)) == 1  # one step, two tagged keys

    async def server_side() -> str:
        client = delta.connect_redis(url, cluster=True)
        try:
            await delta.publish(client, ws.delta_stream, b"c")
            return await delta.stream_tail(client, ws.delta_stream)
        finally:
            await client.aclose()

    tail = asyncio.run(server_side())
    on_owner = redis.Redis(port=owner)
    entries = on_owner.xrange(ws.delta_stream)
    assert [fields[publish.FIELD.encode()] for _, fields in entries] == [b"a", b"b", b"c"]  # all on the owning node
    assert entries[-1][0].decode() == tail
    on_owner.close()
    worker.close()
