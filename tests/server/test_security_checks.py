"""Issue 20's security checks: the development pseudonym key is refused beyond loopback, tokens are compared in
constant time (every token, through hmac.compare_digest), and refused calls are counted in the server's metrics
by method and reason, never with the token."""

from __future__ import annotations

import hmac
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from graphdb import localstack
from graphdb.errors import FailedPrecondition
from graphdb.settings import DEV_PSEUDONYM_KEY, GraphSettings
from proto.interest.v1 import interest_pb2 as pb
from server import auth
from server.app import check_pseudonym_key
from server.auth import TokenCheck
from tests.server.conftest import DIM, base_settings, load_items, start_harness

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "interest.v1.InterestService"
PUBLIC = ["0.0.0.0", "::", "10.0.0.5", "server.example.com"]


# -- the development pseudonym key ------------------------------------------------------------------------------
def test_the_default_pseudonym_key_is_the_development_key() -> None:
    assert GraphSettings().pseudonym_key.get_secret_value() == DEV_PSEUDONYM_KEY == "dev-only-pseudonym-key"


@pytest.mark.parametrize("host", PUBLIC)
def test_dev_pseudonym_key_is_refused_beyond_loopback_whatever_else_is_set(host) -> None:
    dev = GraphSettings(embedding_dim=DIM)
    for settings in (
        base_settings(host=host, auth_tokens="t"),
        base_settings(host=host, allow_insecure_public=True),
        base_settings(host=host, auth_tokens="t", allow_insecure_public=True),
    ):
        with pytest.raises(FailedPrecondition) as err:
            check_pseudonym_key(settings, dev)
        assert host in str(err.value) and "IG_PSEUDONYM_KEY" in str(err.value)
        assert DEV_PSEUDONYM_KEY not in str(err.value)  # the message names the setting, not the key
        check_pseudonym_key(settings, GraphSettings(pseudonym_key="a-real-secret", embedding_dim=DIM))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_dev_pseudonym_key_is_fine_on_loopback(host) -> None:
    check_pseudonym_key(base_settings(host=host), GraphSettings(embedding_dim=DIM))


def test_create_server_refuses_the_dev_key_on_a_public_bind() -> None:
    with pytest.raises(FailedPrecondition) as err:
        start_harness(base_settings(host="0.0.0.0", auth_tokens="t"), GraphSettings(embedding_dim=DIM), setup=load_items)
    assert "development pseudonym key" in str(err.value)


def test_python_m_server_exits_with_a_clear_error_on_the_dev_key_beyond_loopback() -> None:
    port = localstack.free_port()
    env = dict(
        os.environ,
        IG_SERVER_HOST="0.0.0.0",
        IG_SERVER_PORT=str(port),
        IG_SERVER_AUTH_TOKENS="t",
        IG_SERVER_SNAPSHOT_DIR="",
        IG_SERVER_REDIS_URL="",
        NEO4J_URI=f"bolt://127.0.0.1:{port}",
    )
    env.pop("IG_PSEUDONYM_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "refusing to listen on 0.0.0.0" in out and "development pseudonym key" in out and "IG_PSEUDONYM_KEY" in out
    assert "not reachable" not in out and "ServiceUnavailable" not in out  # refused before reaching for Neo4j
    assert not localstack.port_open(port)


# -- constant-time token comparison -----------------------------------------------------------------------------
def test_every_token_is_compared_with_compare_digest_valid_or_not(monkeypatch) -> None:
    """No early exit and no ``==``: each check runs hmac.compare_digest (the real one, counted) once per token,
    whether the token given is the first, the last or none of them."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counted(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counted)
    check = TokenCheck(["tok-a", "tok-b", "tok-c"])
    for given, ok in (("tok-a", True), ("tok-c", True), ("tok-x", False), ("tok-a-longer", False), ("", False)):
        calls.clear()
        assert check.valid([("authorization", f"Bearer {given}")]) is ok
        assert sorted(b for _, b in calls) == [b"tok-a", b"tok-b", b"tok-c"], given
        assert all(a == given.encode() for a, _ in calls)


def test_failure_reasons() -> None:
    check = TokenCheck(["tok-a"])
    assert check.failure(None) == "missing"
    assert check.failure([("x-api-key", "tok-a")]) == "missing"
    assert check.failure([("authorization", "tok-a")]) == "malformed"
    assert check.failure([("authorization", "Basic dG9rLWE=")]) == "malformed"
    assert check.failure([("authorization", "Bearer tok-b")]) == "invalid"
    assert check.failure([("authorization", "Bearer ")]) == "invalid"
    assert check.failure([("authorization", "Bearer tok-a")]) is None
    assert set(auth.REASONS) == {"missing", "malformed", "invalid"}


# -- auth failures in the metrics -------------------------------------------------------------------------------
def _scrape(port: int) -> tuple[str, dict[tuple[str, tuple], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return text, samples


def _refused(fn, request, metadata) -> None:
    with pytest.raises(grpc.RpcError) as err:
        fn(request, metadata=metadata, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_auth_failures_are_counted_by_method_and_reason_without_the_token(server_graph_settings) -> None:
    settings = base_settings(auth_tokens="right-token-0001", metrics_port=0)
    harness, stop = start_harness(settings, server_graph_settings, setup=load_items)
    port = harness.engine.metrics.start_http("127.0.0.1", 0)
    wrong = "wrong-token-7f3a9c"
    try:
        stub = harness.stub()
        similar, user = pb.SimilarItemsRequest(item_id="item-1", k=3), pb.RecommendForUserRequest(user_id="alice", k=3)
        _refused(stub.SimilarItems, similar, None)
        _refused(stub.SimilarItems, similar, [("authorization", f"Bearer {wrong}")])
        _refused(stub.SimilarItems, similar, [("authorization", f"Bearer {wrong}")])
        _refused(stub.RecommendForUser, user, [("authorization", wrong)])
        assert stub.SimilarItems(similar, metadata=[("authorization", "Bearer right-token-0001")], timeout=10).items
        reflect = reflection_pb2_grpc.ServerReflectionStub(harness.channel())
        with pytest.raises(grpc.RpcError) as err:
            list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        text, samples = _scrape(port)
        failures = {
            (dict(lab)["grpc_service"], dict(lab)["grpc_method"], dict(lab)["reason"]): v
            for (name, lab), v in samples.items()
            if name == "ig_auth_failures_total"
        }
        assert failures == {
            (SERVICE, "SimilarItems", "missing"): 1,
            (SERVICE, "SimilarItems", "invalid"): 2,
            (SERVICE, "RecommendForUser", "malformed"): 1,
            ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", "missing"): 1,
        }
        assert wrong not in text and "right-token-0001" not in text  # neither token reaches the metrics
    finally:
        harness.engine.metrics.stop_http()
        stop()
