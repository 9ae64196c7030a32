"""Redis Sentinel, for real: a primary, its replica and a Sentinel watching them, on free loopback ports. The
workers' and the server's clients are built from ``sentinel://`` URLs and the master name
(`workers.redis_connect`); after a fail-over the same client objects reach the new primary, and what was written
before it is still there. The Celery broker (kombu) takes the same URL and name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from graphdb.errors import InvalidInput
from server import delta
from tests.redis_nodes import start, stop, until
from workers import partitions, publish, redis_connect
from workers.celery_app import make_app
from workers.settings import WorkerSettings

MASTER = "ig-primary"


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory):
    """(sentinel port, primary port, replica port)."""
    root: Path = tmp_path_factory.mktemp("redis-sentinel")
    primary, p_port = start(root / "primary")
    replica, r_port = start(root / "replica", "--replicaof", "127.0.0.1", str(p_port))
    config = (
        f"sentinel monitor {MASTER} 127.0.0.1 {p_port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 2000\n"
        f"sentinel failover-timeout {MASTER} 10000\n"
    )
    sent, s_port = start(root / "sentinel", config=config)
    try:
        r = redis.Redis(port=r_port)
        until(lambda: r.info("replication").get("master_link_status") == "up", "the replica in sync")
        s = redis.Redis(port=s_port)
        # the Sentinel has found the replica (through the primary): only then can it fail over
        until(lambda: len(s.sentinel_slaves(MASTER)) == 1, "the Sentinel seeing the replica")
        r.close()
        s.close()
        yield s_port, p_port, r_port
    finally:
        stop(sent, replica, primary)


def _primary_port(s_port: int) -> int:
    s = redis.Redis(port=s_port)
    try:
        return int(s.sentinel_get_master_addr_by_name(MASTER)[1])
    finally:
        s.close()


def test_a_sentinel_url_is_parsed_as_kombu_writes_it() -> None:
    parsed = redis_connect.parse_sentinel("sentinel://:pw@s1:26380;sentinel://s2/3")
    assert parsed.hosts == (("s1", 26380), ("s2", redis_connect.SENTINEL_PORT)) and parsed.db == 3 and parsed.password == "pw"
    for bad, why in [
        ("sentinel://", "names no Sentinel|expected"),
        ("sentinel://s1/x", "database must be a number"),
        ("sentinel://s1;redis://s2", "expected sentinel://"),
        ("sentinel://s1:99999", "(?i)port out of range"),
    ]:
        with pytest.raises(InvalidInput, match=why):
            redis_connect.parse_sentinel(bad)
    with pytest.raises(InvalidInput, match="no master name"):
        redis_connect.connect("sentinel://s1:26379/0")
    with pytest.raises(InvalidInput, match="both Sentinel and Cluster"):
        redis_connect.connect("sentinel://s1:26379/0", sentinel_master=MASTER, cluster=True)


def test_the_workers_and_servers_clients_follow_a_failover(sentinel) -> None:
    s_port, p_port, r_port = sentinel
    url = f"sentinel://127.0.0.1:{s_port}/0"
    worker = redis_connect.connect(url, sentinel_master=MASTER, socket_timeout=5, socket_connect_timeout=2)
    ws = WorkerSettings(redis_url=url, redis_sentinel_master=MASTER, partitions=2)
    stream = "ig:test-sentinel"

    async def server_side(payload: bytes) -> str:
        client = delta.connect_redis(url, sentinel_master=MASTER)
        try:
            await delta.publish(client, stream, payload)
            return await delta.stream_tail(client, stream)
        finally:
            await client.aclose()

    first_primary = _primary_port(s_port)
    with partitions.claim(worker, 1, ws.partitions, timeout_s=10) as held:
        assert held is not None
        held.keep()
        assert publish.publish(worker, stream, [b"before"]) == 1
    before_tail = asyncio.run(server_side(b"server-before"))
    direct = redis.Redis(port=first_primary)
    assert direct.xlen(stream) == 2  # both clients wrote on the primary the Sentinel named
    direct.close()

    s = redis.Redis(port=s_port)
    assert s.execute_command("SENTINEL", "FAILOVER", MASTER)
    s.close()
    new_primary = until(lambda: (port := _primary_port(s_port)) != first_primary and port, "the Sentinel naming a new primary")
    assert new_primary == (r_port if first_primary == p_port else p_port)
    promoted = redis.Redis(port=new_primary)
    until(lambda: promoted.info("replication")["role"] == "master", "the replica promoted")
    # Redis replicates asynchronously: until the Sentinel has turned the old primary into a replica, a client still
    # connected to it is acknowledged and then loses the write (docs/operations.md, "Redis Sentinel")
    demoted = redis.Redis(port=first_primary)
    until(lambda: demoted.info("replication")["role"] == "slave", "the old primary turned into a replica")
    demoted.close()

    # the same client objects: a command on a connection to the old primary fails once (read-only now), and the
    # next one asks the Sentinel again and reaches the new primary
    until(lambda: publish.publish(worker, stream, [b"after"]) == 1, "a worker's publish on the new primary")
    after_tail = until(lambda: asyncio.run(server_side(b"server-after")), "the server's client on the new primary")
    assert after_tail > before_tail
    entries = [fields[publish.FIELD.encode()] for _, fields in promoted.xrange(stream)]
    assert entries[:2] == [b"before", b"server-before"]  # replicated before the switch: nothing lost
    assert entries[-2:] == [b"after", b"server-after"]
    promoted.close()
    worker.close()


def test_celerys_broker_runs_over_the_sentinel(sentinel) -> None:
    s_port, _, _ = sentinel
    url = f"sentinel://127.0.0.1:{s_port}/1"
    app = make_app(WorkerSettings(broker_url=url, result_backend=f"sentinel://127.0.0.1:{s_port}/2", redis_sentinel_master=MASTER))
    assert app.conf.broker_transport_options["master_name"] == MASTER
    assert app.conf.result_backend_transport_options["master_name"] == MASTER
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue("ig-sentinel-probe")
        queue.put({"probe": 1})
        message = queue.get(timeout=10)
        assert message.payload == {"probe": 1}
        message.ack()
        queue.close()
    # a result stored through the Sentinel backend reads back (the result store of every task)
    app.backend.store_result("probe-task", {"ok": True}, "SUCCESS")
    assert app.backend.get_task_meta("probe-task")["result"] == {"ok": True}
