"""The local stack launcher: the session's own Neo4j and Redis are up; starting them again is harmless.
A stack started with an HTTP port serves Neo4j Browser on loopback."""

import json
import urllib.request

import pytest
import redis

from graphdb import localstack
from graphdb.driver import connect
from graphdb.errors import FailedPrecondition
from graphdb.settings import LocalStackSettings, Neo4jSettings


def test_up_again_keeps_the_running_services(stack, neo4j_driver):
    before = localstack.status(stack.settings)
    assert before["neo4j"]["running"] and before["redis"]["running"]
    services = localstack.up(stack.settings)
    assert {name: s.pid() for name, s in services.items()} == {n: st["pid"] for n, st in before.items()}
    assert neo4j_driver.execute_query("RETURN 1 AS one").records[0]["one"] == 1
    assert redis.Redis.from_url(stack.redis_url).ping()


def test_neo4j_is_the_capped_community_engine_on_loopback(stack, neo4j_driver):
    rec = neo4j_driver.execute_query("CALL dbms.components() YIELD versions, edition RETURN versions[0] AS v, edition").records[0]
    assert rec["edition"] == "community" and rec["v"] == stack.settings.neo4j_version
    conf = {
        r["name"]: r["value"]
        for r in neo4j_driver.execute_query(
            "SHOW SETTINGS YIELD name, value WHERE name IN ['server.memory.pagecache.size', "
            "'server.bolt.listen_address', 'server.http.enabled'] RETURN name, value"
        ).records
    }
    assert conf["server.http.enabled"] == "false"
    assert conf["server.bolt.listen_address"].startswith("127.0.0.1:")
    assert conf["server.memory.pagecache.size"] in ("512.00MiB", "536870912", "512m", "512MiB")


@pytest.fixture(scope="module")
def browser_stack(tmp_path_factory: pytest.TempPathFactory):
    """A Neo4j of its own with the HTTP connector on (the session's stack keeps it off, the default)."""
    settings = LocalStackSettings(
        var_dir=tmp_path_factory.mktemp("browser-stack"),
        neo4j_port=localstack.free_port(),
        redis_port=localstack.free_port(),
        neo4j_http_port=localstack.free_port(),
        neo4j_heap_mb=1024,
        neo4j_pagecache_mb=128,
        neo4j_tx_memory_mb=256,
    )
    try:
        localstack.start_neo4j(settings)
        yield settings
    finally:
        localstack.down(settings)


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers.get_content_type(), response.read().decode()


def test_http_port_serves_neo4j_browser_on_loopback(browser_stack):
    status, content_type, page = _get(localstack.browser_url(browser_stack))
    assert (status, content_type) == (200, "text/html")
    assert "<title>Neo4j Browser</title>" in page
    # The discovery document sends the Browser to this stack's Bolt port, not the default 7687.
    status, _, discovery = _get(f"http://127.0.0.1:{browser_stack.neo4j_http_port}/")
    assert json.loads(discovery)["bolt_direct"] == f"bolt://127.0.0.1:{browser_stack.neo4j_port}"
    with connect(Neo4jSettings(uri=f"bolt://127.0.0.1:{browser_stack.neo4j_port}")) as driver:
        address = driver.execute_query(
            "SHOW SETTINGS YIELD name, value WHERE name = 'server.http.listen_address' RETURN value"
        ).records[0]["value"]
    assert address == f"127.0.0.1:{browser_stack.neo4j_http_port}"


def test_asking_a_running_stack_without_http_for_the_browser_says_to_restart(stack):
    with_http = stack.settings.model_copy(update={"neo4j_http_port": localstack.free_port()})
    with pytest.raises(FailedPrecondition, match="restart the stack"):
        localstack.start_neo4j(with_http)
