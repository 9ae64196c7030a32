"""The local stack launcher: the session's own Neo4j and Redis are up; starting them again is harmless."""

import redis

from graphdb import localstack


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
    conf = {r["name"]: r["value"] for r in neo4j_driver.execute_query(
        "SHOW SETTINGS YIELD name, value WHERE name IN ['server.memory.pagecache.size', "
        "'server.bolt.listen_address', 'server.http.enabled'] RETURN name, value").records}
    assert conf["server.http.enabled"] == "false"
    assert conf["server.bolt.listen_address"].startswith("127.0.0.1:")
    assert conf["server.memory.pagecache.size"] in ("512.00MiB", "536870912", "512m", "512MiB")
