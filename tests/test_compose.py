"""docker-compose.yml is the production topology; no Docker engine here, so the file itself is checked, against
the Dockerfile, the monitoring files in deploy/ and the settings classes that read its variables."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from graphdb.dataset_paths import search_path
from graphdb.settings import DataSettings
from tests.test_readme import CLASSES, env_names
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
APP = ("migrate", "worker", "scheduler", "beat", "server")  # the services built from the Dockerfile
MONITORING = ("prometheus", "grafana", "flower")
ENVOY = yaml.safe_load((ROOT / "deploy/envoy/envoy.yaml").read_text())


def test_services_and_images():
    s = COMPOSE["services"]
    assert set(s) == {"neo4j", "redis", "envoy", *APP, *MONITORING}
    assert s["neo4j"]["image"] == "neo4j:5.26-community"
    assert s["redis"]["image"].startswith("redis:")
    for name in APP:
        assert s[name]["build"] == "." and "image" not in s[name], name


def test_monitoring_images_are_pinned_to_exact_versions():
    for name in (*MONITORING, "envoy"):
        image = COMPOSE["services"][name]["image"]
        assert re.fullmatch(r"[a-z/]+:v?\d+\.\d+\.\d+", image), image  # no `latest`, no moving minor tag


def test_neo4j_has_apoc_auth_memory_caps_and_volumes():
    env = COMPOSE["services"]["neo4j"]["environment"]
    assert "apoc" in env["NEO4J_PLUGINS"]
    assert env["NEO4J_AUTH"].startswith("neo4j/${NEO4J_PASSWORD")
    assert {"NEO4J_server_memory_heap_max__size", "NEO4J_server_memory_pagecache_size"} <= set(env)
    assert any(v.endswith(":/data") for v in COMPOSE["services"]["neo4j"]["volumes"])


def test_ports():
    s = COMPOSE["services"]
    assert "7687:7687" in s["neo4j"]["ports"] and "6379:6379" in s["redis"]["ports"]
    # the replicas publish nothing (they would collide on the host); clients come in through envoy
    assert "ports" not in s["server"] and set(s["server"]["expose"]) == {"50051", "9464"}
    assert "50051:50051" in s["envoy"]["ports"]
    assert [p for p in s["envoy"]["ports"] if p.endswith(":9901")] == ["127.0.0.1:9901:9901"]  # admin: loopback only


def test_health_checks_gate_dependents():
    s = COMPOSE["services"]
    for name in ("neo4j", "redis", "server", "prometheus"):
        assert s[name]["healthcheck"]["test"], name
    for name in ("worker", "scheduler", "beat", "server"):
        deps = s[name]["depends_on"]
        assert deps == {
            "neo4j": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name


def test_migrate_is_a_one_shot_schema_migration_the_others_wait_for():
    m = COMPOSE["services"]["migrate"]
    assert m["command"] == ["interest", "graph", "migrate"]
    assert m["depends_on"] == {"neo4j": {"condition": "service_healthy"}}
    assert m["restart"] == "no"  # exits 0 once done; a restart policy would run it forever
    assert m["environment"]["NEO4J_URI"] == "bolt://neo4j:7687"
    # the command exists in the CLI the image installs (`interest` = cli.main:app)
    from cli.main import app

    result = CliRunner().invoke(app, ["graph", "migrate", "--help"])
    assert result.exit_code == 0 and "constraints and indexes" in result.output


def test_datasets_are_mounted_read_only_where_the_worker_settings_read_them(monkeypatch):
    w = COMPOSE["services"]["worker"]
    mounts = [v for v in w["volumes"] if v.endswith(":ro")]
    assert len(mounts) == 1
    target = mounts[0].split(":")[-2]
    env = w["environment"]
    assert env["IG_DATASETS_DIR"] == target
    monkeypatch.setenv("IG_DATASETS_DIR", env["IG_DATASETS_DIR"])
    assert DataSettings().datasets_dir == Path(target)
    assert search_path(DataSettings().datasets_dir)[0] == Path(target)  # the first place a backfill looks


def test_worker_metrics_listen_on_the_network_and_prometheus_scrapes_them(monkeypatch):
    s = COMPOSE["services"]
    w, srv = s["worker"]["environment"], s["server"]["environment"]
    assert w["IG_WORKER_METRICS_HOST"] == "0.0.0.0" and srv["IG_SERVER_METRICS_HOST"] == "0.0.0.0"
    monkeypatch.setenv("IG_WORKER_METRICS_HOST", w["IG_WORKER_METRICS_HOST"])
    monkeypatch.setenv("IG_WORKER_METRICS_PORT", w["IG_WORKER_METRICS_PORT"])
    ws = WorkerSettings()
    assert (ws.metrics_host, ws.metrics_port) == ("0.0.0.0", 9465)
    assert not any(p.split(":")[-1] == "9465" for p in s["worker"].get("ports", []))  # network only
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    # every replica: the service's DNS name resolves to one A record per replica
    targets = {
        job["job_name"]: [(n, sd["type"], str(sd["port"])) for sd in job["dns_sd_configs"] for n in sd["names"]]
        for job in prom["scrape_configs"]
    }
    assert targets == {
        "interest-server": [("server", "A", srv["IG_SERVER_METRICS_PORT"])],
        "interest-worker": [("worker", "A", w["IG_WORKER_METRICS_PORT"])],
    }


def _app_env(name: str) -> dict:
    return COMPOSE["services"][name]["environment"]


def test_every_variable_set_for_the_app_is_read_by_a_settings_class():
    read = {n for cls in CLASSES for n in env_names(cls)}
    for name in APP:
        unread = set(_app_env(name)) - read
        assert not unread, f"{name}: {sorted(unread)} are read by nothing"
    assert "REDIS_URL" not in (ROOT / "docker-compose.yml").read_text().replace("_REDIS_URL", "")


def test_every_process_runs_as_a_fixed_non_root_user():
    assert re.search(r"useradd .*--uid 10001\b", DOCKERFILE) and re.search(r"groupadd .*--gid 10001\b", DOCKERFILE)
    assert DOCKERFILE.rstrip().splitlines()[-1] == "USER 10001:10001"
    for name, svc in COMPOSE["services"].items():
        uid = str(svc.get("user", "")).split(":")[0]
        assert uid and uid not in ("0", "root"), f"{name} has no fixed non-root user"
    for name in APP:
        assert COMPOSE["services"][name]["user"] == "10001:10001", name
    # the folders the app's volumes mount are made in the image and owned by that user
    owned = re.search(r"chown -R app:app (.+)", DOCKERFILE).group(1).split()
    for name in APP:
        for volume in COMPOSE["services"][name].get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith(("$", ".", "/")):  # a named volume: takes the image folder's owner
                assert any(target == o or target.startswith(o + "/") for o in owned), (name, target)


def test_torch_comes_from_pypi_and_the_decision_is_documented():
    # No other index: the CPU-only wheels live on download.pytorch.org, which is not a package registry here.
    assert not re.search(r"--(extra-)?index-url|--find-links|-f https?://", DOCKERFILE)
    assert "download.pytorch.org" in DOCKERFILE and "PyPI" in DOCKERFILE
    ops = (ROOT / "docs/operations.md").read_text()
    assert "download.pytorch.org" in ops


def test_prometheus_grafana_and_flower_are_wired_to_their_files_and_the_queues():
    s = COMPOSE["services"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in s["prometheus"]["volumes"] if v.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"].is_file() and mounts["/etc/prometheus/alerts.yml"].is_file()
    prom = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    rule_files = {Path("/etc/prometheus") / f for f in prom["rule_files"]}
    assert rule_files == {Path("/etc/prometheus/alerts.yml")}  # relative to the config, as mounted

    g = {v.split(":")[1]: ROOT / v.split(":")[0] for v in s["grafana"]["volumes"] if v.startswith("./")}
    provisioning = g["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards/interest-graph.yml").read_text())["providers"]
    dashboards = g[provider["options"]["path"]]
    dash = json.loads((dashboards / "interest-graph.json").read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"] if p["type"] != "row"}
    assert uids == {source["uid"]}
    assert "GRAFANA_ADMIN_PASSWORD:?" in (ROOT / "docker-compose.yml").read_text()

    flower = s["flower"]
    assert f"--broker={COMPOSE['x-app-env']['IG_WORKER_BROKER_URL']}" in flower["command"]
    assert "FLOWER_BASIC_AUTH:?" in flower["environment"]["FLOWER_BASIC_AUTH"]  # task arguments stay private
    for name in MONITORING:
        assert all(p.startswith("127.0.0.1:") for p in s[name]["ports"]), name


@pytest.mark.parametrize("name", APP)
def test_app_services_share_the_secrets_and_urls(name):
    env = _app_env(name)
    assert env["NEO4J_PASSWORD"].startswith("${NEO4J_PASSWORD:?") and env["IG_PSEUDONYM_KEY"].startswith("${")


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


def test_beat_schedules_the_gated_retrain(monkeypatch):
    beat = COMPOSE["services"]["beat"]
    assert beat["command"] == ["interest", "worker", "beat"]
    assert beat["environment"]["IG_WORKER_BROKER_URL"] == COMPOSE["x-app-env"]["IG_WORKER_BROKER_URL"]
    period = beat["environment"]["IG_WORKER_RETRAIN_PERIOD_S"]
    assert period.startswith("${IG_WORKER_RETRAIN_PERIOD_S:-")  # a default, so beat always has work
    from workers.celery_app import make_app

    monkeypatch.setenv("IG_WORKER_RETRAIN_PERIOD_S", period.split(":-")[1].rstrip("}"))
    schedule = make_app(WorkerSettings()).conf.beat_schedule
    assert schedule["retrain"]["task"] == "interest.retrain" and schedule["retrain"]["schedule"] == 86400.0


SECRETS = {
    "NEO4J_PASSWORD": "pw",
    "IG_PSEUDONYM_KEY": "key",
    "IG_SERVER_AUTH_TOKENS": "token",
    "GRAFANA_ADMIN_PASSWORD": "admin-pw",
    "FLOWER_BASIC_AUTH": "ops:pw",
}


@pytest.fixture(scope="module")
def composecheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/composecheck built: compose-go, the loader of `docker compose` (Go modules from the Go proxy)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain: compose-go's check (deploy/composecheck) runs where Go is installed")
    exe = tmp_path_factory.mktemp("composecheck") / "composecheck"
    built = subprocess.run(
        [go, "build", "-o", str(exe), "."],
        cwd=ROOT / "deploy" / "composecheck",
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return exe


def _load(exe: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [str(exe), str(ROOT / "docker-compose.yml")], env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def test_compose_go_loads_the_file_as_docker_compose_would(composecheck):
    loaded = _load(composecheck, SECRETS)
    assert loaded.returncode == 0, loaded.stderr  # the compose-spec schema, interpolation, merge keys
    services = json.loads(loaded.stdout)["services"]
    assert set(services) == set(COMPOSE["services"])
    worker = services["worker"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["NEO4J_PASSWORD"] == "pw" and worker["user"] == "10001:10001"
    (datasets,) = [v for v in worker["volumes"] if v["target"] == "/data/datasets"]
    assert datasets["read_only"] is True and datasets["type"] == "bind"
    assert worker["deploy"]["replicas"] == 2 and services["server"]["deploy"]["replicas"] == 3  # interpolated as numbers


def test_compose_go_refuses_to_start_without_each_secret(composecheck):
    for missing in SECRETS:
        loaded = _load(composecheck, {k: v for k, v in SECRETS.items() if k != missing})
        assert loaded.returncode != 0 and missing in loaded.stderr, missing


def test_workers_and_servers_are_scaled_and_agree_on_the_partitions(monkeypatch):
    s = COMPOSE["services"]
    assert s["worker"]["deploy"]["replicas"] == "${IG_WORKER_REPLICAS:-2}"
    assert s["server"]["deploy"]["replicas"] == "${IG_SERVER_REPLICAS:-3}"
    # each replica writes its own index snapshots: no volume shared by the replicas at the snapshot folder
    assert not [v for v in s["server"].get("volumes", []) if v.split(":")[1] == "/app/var/index"]
    for name in ("scheduler", "beat"):  # one each: a second would queue every recompute twice
        assert "replicas" not in s[name].get("deploy", {}), name
    # every worker and the scheduler read the same partition count, from the shared environment
    partitions = COMPOSE["x-app-env"]["IG_WORKER_PARTITIONS"]
    for name in ("worker", "scheduler"):
        assert s[name]["environment"]["IG_WORKER_PARTITIONS"] == partitions, name
    monkeypatch.setenv("IG_WORKER_PARTITIONS", partitions.split(":-")[1].rstrip("}"))
    assert WorkerSettings().partitions == 2


def _envoy_cluster(name: str) -> dict:
    (cluster,) = [c for c in ENVOY["static_resources"]["clusters"] if c["name"] == name]
    return cluster


def test_envoy_balances_grpc_calls_over_every_server_replica_with_http2_upstream():
    s = COMPOSE["services"]
    envoy = s["envoy"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in envoy["volumes"] if v.startswith("./")}
    assert mounts["/etc/envoy/envoy.yaml"] == ROOT / "deploy/envoy/envoy.yaml"
    assert envoy["command"] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    assert envoy["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert envoy["healthcheck"]["test"]

    (listener,) = ENVOY["static_resources"]["listeners"]
    published = [p for p in envoy["ports"] if p.endswith(":50051")]
    assert published == [f"50051:{listener['address']['socket_address']['port_value']}"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    assert hcm["name"] == "envoy.filters.network.http_connection_manager"
    config = hcm["typed_config"]
    assert config["codec_type"] == "HTTP2"
    assert [f["name"] for f in config["http_filters"]][-1] == "envoy.filters.http.router"  # the router comes last
    routes = [r for vh in config["route_config"]["virtual_hosts"] for r in vh["routes"]]
    assert [r["match"] for r in routes] == [{"prefix": "/"}]  # every service: InterestService, health, reflection
    route = routes[0]["route"]
    assert route["timeout"] == "0s"  # the client's deadline governs; a long IngestEvents stream is not cut

    cluster = _envoy_cluster(route["cluster"])
    assert cluster["type"] == "STRICT_DNS"  # re-resolves `server` as replicas come and go
    assert cluster["lb_policy"] in ("LEAST_REQUEST", "ROUND_ROBIN")
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]  # gRPC needs HTTP/2 to the replicas
    (health,) = cluster["health_checks"]
    assert "grpc_health_check" in health  # the servers' grpc.health.v1 (open without a token: server/auth.py)
    endpoints = [
        e["endpoint"]["address"]["socket_address"] for la in cluster["load_assignment"]["endpoints"] for e in la["lb_endpoints"]
    ]
    server_env = s["server"]["environment"]
    assert endpoints == [{"address": "server", "port_value": int(server_env["IG_SERVER_PORT"])}]
    assert server_env["IG_SERVER_HOST"] == "0.0.0.0"  # reachable from envoy on the compose network
    from server.auth import OPEN_PREFIXES

    assert "/grpc.health.v1.Health/" in OPEN_PREFIXES
