"""The operators' monitoring (deploy/): Prometheus config and alert rules checked and unit-tested by promtool, and
every metric the Grafana dashboard and the alerts query exported by a real server and a real Celery worker, which
are driven through one event -> recompute -> served round so the freshness and backlog metrics carry values."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from graphdb.changes import count_marks
from graphdb.ingest import ingest_events
from proto.interest.v1 import interest_pb2 as pb
from tests.server.conftest import base_settings, start_harness
from workers import process

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "interest-graph.json"
# Series names in PromQL: ours are prefixed (ig_, grpc_server_); `up` is Prometheus's own per target.
METRIC = re.compile(r"\b((?:ig|grpc_server)_[a-z0-9_]+|up)\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: `make system` installs Debian's prometheus package")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_config_and_its_rules() -> None:
    config = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr  # the alerts are really loaded by the config
    rules = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_each_alert_fires_on_its_condition_in_promtool_unit_tests() -> None:
    tested = promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert {"FreshnessP99High", "RecomputeBacklogOld", "ServerErrorRate", "ServerNotServing", "WorkerAbsent"} <= alerts
    covered = {
        t["alertname"]
        for case in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
        for t in case["alert_rule_test"]
    }
    assert covered == alerts  # every alert has a firing (or quiet) case


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check can fail: a rule with an invalid expression is refused."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n- name: x\n  rules:\n  - alert: Broken\n    expr: sum(rate(ig_ready[5m])\n")
    assert promtool("check", "rules", str(bad)).returncode != 0


def dashboard_queries() -> dict[str, list[str]]:
    dash = json.loads(DASHBOARD.read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dash["panels"] if p["type"] != "row"}


def rule_queries() -> dict[str, str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def test_the_dashboard_covers_what_operators_watch() -> None:
    queries = dashboard_queries()
    assert all(queries.values()), "a panel without a query"
    for title, exprs in queries.items():
        assert all(METRIC.search(e) for e in exprs), title
    text = " ".join(e for exprs in queries.values() for e in exprs)
    for metric in (
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",  # RPC rate, errors, latency
        "ig_freshness_seconds_bucket",  # event to vector served
        "ig_worker_marks_waiting",
        "ig_worker_oldest_mark_age_seconds",  # the backlog
        'ig_worker_task_seconds_bucket{task="interest.recompute"}',  # recompute time
        "ig_index_items",
        "ig_model_info",
        "ig_ingest_events_total",
    ):
        assert metric in text, metric
    assert 'outcome="rejected"' in text


def scrape(port: int) -> tuple[set[str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """(every series name the endpoint exposes, samples as {(name, sorted labels): value})."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    names: set[str] = set()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            names.add(s.name)
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return names, samples


def _wait(what: str, check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"not observed within {timeout_s:.0f}s: {what}")


@pytest.fixture
def live(graph, stack, graph_settings, redis_url, tmp_path):
    """A trained, rolled-out model on a small live graph; a real worker (metrics on a free port) and a real
    server following the delta stream (metrics on a free port): (worker env, Celery client, worker metrics port,
    server harness, server metrics port)."""
    events = [
        {
            "event_id": f"seed-{u}-{k}",
            "user_id": f"user-{u}",
            "type": "click",
            "ts": 1_700_000_000.0 + k,
            "item_id": f"item-{(u * 7 + k * 13) % 25}",
        }
        for u in range(40)
        for k in range(4)
    ]
    assert not ingest_events(graph, graph_settings, events).rejected
    env = process.worker_env(
        neo4j_uri=stack.neo4j_uri,
        redis_base=f"redis://127.0.0.1:{stack.settings.redis_port}",
        model_dir=tmp_path / "models",
        text_cache_dir=tmp_path / "text",
        graph=graph_settings,
        extra={"IG_TRAIN_MAX_EPOCHS": "0", "IG_TRAIN_THREADS": "1"},
    )
    app = process.client_app(env)
    worker = process.start_worker(env, tmp_path / "worker.log")
    stop_server = None
    try:
        process.wait_for_worker(app, worker)
        trained = app.send_task("interest.train", kwargs={"epochs": 0}).get(timeout=120)
        app.send_task("interest.rebuild", kwargs={"version": trained["version"]}).get(timeout=120)
        app.send_task("interest.recompute").get(timeout=60)  # the seed's marks: a clean backlog to start from
        settings = base_settings(redis_url=redis_url, delta_block_ms=20, metrics_port=0)
        harness, stop_server = start_harness(settings, graph_settings, graph, redis_url=redis_url, start_lifecycle=True)
        harness.engine.metrics.follow(harness.lifecycle)
        server_port = harness.engine.metrics.start_http("127.0.0.1", 0)
        yield env, app, process.metrics_port(tmp_path / "worker.log"), harness, server_port
    finally:
        if stop_server is not None:
            harness.engine.metrics.stop_http()
            stop_server()
        process.stop(worker)


def test_backlog_and_freshness_metrics_follow_an_event_and_the_dashboard_names_only_exported_metrics(live, graph) -> None:
    _env, app, worker_port, harness, server_port = live
    _, before = scrape(server_port)
    assert before.get(("ig_freshness_seconds_count", ())) == 0.0

    # An event through IngestEvents marks its user; the worker's scrape reports that backlog from Neo4j.
    sent = time.time()
    reply = harness.stub().IngestEvents(
        iter(
            [
                pb.IngestEventsRequest(
                    events=[
                        pb.Event(event_id="watched-1", user_id="user-3", type=pb.EVENT_TYPE_PURCHASE, item_id="item-9", ts=time.time())
                    ]
                )
            ]
        ),
        timeout=30,
    )
    assert reply.accepted == 1
    waiting = count_marks(graph)
    assert waiting >= 1
    _, worker_samples = scrape(worker_port)
    assert worker_samples[("ig_worker_marks_waiting", ())] == waiting
    assert 0 < worker_samples[("ig_worker_oldest_mark_age_seconds", ())] <= time.time() - sent

    # The recompute publishes the user's vector with its mark's time; the server that applies it observes
    # event -> served.
    assert app.send_task("interest.recompute").get(timeout=60)["users"] >= 1

    def served() -> dict | None:
        samples = scrape(server_port)[1]
        return samples if samples.get(("ig_freshness_seconds_count", ()), 0) >= 1 else None

    after = _wait("a served change in ig_freshness_seconds", served)
    assert 0 < after[("ig_freshness_seconds_sum", ())] <= time.time() - sent
    _, worker_samples = scrape(worker_port)
    assert worker_samples[("ig_worker_marks_waiting", ())] == count_marks(graph) == 0
    assert worker_samples[("ig_worker_oldest_mark_age_seconds", ())] == 0

    # Every series the dashboard and the alerts query is exported by the server or the worker.
    exported = scrape(server_port)[0] | scrape(worker_port)[0] | {"up"}
    queried = {m for exprs in dashboard_queries().values() for e in exprs for m in METRIC.findall(e)}
    queried |= {m for e in rule_queries().values() for m in METRIC.findall(e)}
    assert queried - exported == set()
    assert {"ig_worker_task_seconds_bucket", "grpc_server_handled_total", "ig_model_info"} <= queried


def test_the_dashboard_picture_reads_quantiles_from_bucket_increases_as_prometheus_does() -> None:
    from bench.dashboard import histogram_quantile

    def buckets(**counts: float) -> dict:
        return {("ig_freshness_seconds_bucket", (("le", le.replace("_", ".").replace("inf", "+Inf")),)): v for le, v in counts.items()}

    older = buckets(**{"0_5": 10, "1_0": 10, "2_0": 10, "inf": 10})
    newer = buckets(**{"0_5": 60, "1_0": 110, "2_0": 110, "inf": 110})  # since then: 50 under 0.5 s, 50 in 0.5-1
    assert histogram_quantile(0.5, newer, older) == pytest.approx(0.5)
    assert histogram_quantile(0.75, newer, older) == pytest.approx(0.75)  # linear inside the 0.5-1 bucket
    assert histogram_quantile(0.99, newer, newer) is None  # nothing observed in the window
