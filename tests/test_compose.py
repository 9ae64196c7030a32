"""docker-compose.yml is the production topology; no Docker engine here, so the file itself is checked."""

from pathlib import Path

import yaml

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())


def test_services_and_images():
    s = COMPOSE["services"]
    assert set(s) == {"neo4j", "redis", "worker", "scheduler", "server"}
    assert s["neo4j"]["image"] == "neo4j:5.26-community"
    assert s["redis"]["image"].startswith("redis:")


def test_neo4j_has_apoc_auth_memory_caps_and_volumes():
    env = COMPOSE["services"]["neo4j"]["environment"]
    assert "apoc" in env["NEO4J_PLUGINS"]
    assert env["NEO4J_AUTH"].startswith("neo4j/${NEO4J_PASSWORD")
    assert {"NEO4J_server_memory_heap_max__size", "NEO4J_server_memory_pagecache_size"} <= set(env)
    assert any(v.endswith(":/data") for v in COMPOSE["services"]["neo4j"]["volumes"])


def test_ports():
    s = COMPOSE["services"]
    assert "7687:7687" in s["neo4j"]["ports"] and "6379:6379" in s["redis"]["ports"]
    assert "50051:50051" in s["server"]["ports"] and "9464:9464" in s["server"]["ports"]


def test_health_checks_gate_dependents():
    s = COMPOSE["services"]
    for name in ("neo4j", "redis", "server"):
        assert s[name]["healthcheck"]["test"], name
    for name in ("worker", "scheduler", "server"):
        deps = s[name]["depends_on"]
        assert deps == {"neo4j": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}


def test_worker_reserves_a_gpu_and_runs_solo():
    w = COMPOSE["services"]["worker"]
    devices = w["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--pool=solo" in w["command"]


def test_no_secret_is_written_in_the_file():
    text = (Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text()
    assert "NEO4J_PASSWORD:?" in text and "IG_PSEUDONYM_KEY:?" in text


def test_workers_scheduler_and_server_share_the_broker_and_the_delta_stream():
    env = COMPOSE["x-app-env"]
    assert env["IG_WORKER_BROKER_URL"].startswith("redis://redis:6379/")
    assert env["IG_WORKER_REDIS_URL"] == env["IG_SERVER_REDIS_URL"]  # deltas and change signals: same Redis db
    assert env["IG_WORKER_BROKER_URL"] != env["IG_WORKER_REDIS_URL"]
    for name in ("worker", "scheduler", "server"):
        assert COMPOSE["services"][name]["environment"]["IG_WORKER_BROKER_URL"] == env["IG_WORKER_BROKER_URL"]
    assert COMPOSE["services"]["scheduler"]["command"] == ["python", "-m", "workers.scheduler"]
