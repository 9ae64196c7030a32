"""SimilarUsers through the stubs against the real server and Neo4j: the nearest users by ego-graph vector
(graphdb.ego's vector index), as pseudonyms, of the serving model only; bad requests; the documented join;
a forgotten user never appears in an answer (last: it changes the graph)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from graphdb.ego import write_ego_vectors
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise
from graphdb.schema import wipe
from proto.interest.v1 import interest_pb2 as pb
from tests.server.conftest import base_settings, load_items, start_harness

N_USERS = 12
EGO_DIM = 8


def _ego(n: int) -> np.ndarray:
    """Two groups of users (even / odd) around two directions, each user a little apart."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((2, EGO_DIM))
    x = centres[np.arange(n) % 2] + 0.4 * rng.standard_normal((n, EGO_DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def similar(neo4j_driver, graph_settings):
    """Users shopper-0..11 with ego vectors of the serving model m1, old-timer with one of m0 only, and
    no-ego with none; the server serves m1."""
    graph = neo4j_driver
    wipe(graph)
    now = time.time()
    users = [f"shopper-{u}" for u in range(N_USERS)] + ["old-timer", "no-ego"]
    events = [{"event_id": f"e-{u}", "user_id": u, "type": "purchase", "item_id": "item-1", "ts": now - 60} for u in users]
    assert ingest_events(graph, graph_settings, events).accepted == len(users)
    key = graph_settings.pseudonym_key.get_secret_value()
    pseudo = {u: pseudonymise(key, u) for u in users}
    vecs = _ego(N_USERS + 1)
    assert write_ego_vectors(graph, [(pseudo[f"shopper-{u}"], vecs[u]) for u in range(N_USERS)], "m1") == N_USERS
    # another version's vector, nearest of all to shopper-0: never in an answer of m1
    assert write_ego_vectors(graph, [(pseudo["old-timer"], vecs[0] + 1e-3)], "m0") == 1
    harness, stop = start_harness(base_settings(max_k=20), graph_settings, graph, setup=load_items)
    harness.pseudo, harness.vecs = pseudo, vecs
    yield harness
    stop()


def _expected(vecs: np.ndarray, user: int, k: int, skip: set[int] = frozenset()) -> list[tuple[int, float]]:
    cos = vecs[:N_USERS] @ vecs[user]
    order = [v for v in np.argsort(-cos, kind="stable") if v != user and v not in skip]
    return [(int(v), float(cos[v])) for v in order[:k]]


def test_similar_users_are_the_nearest_by_ego_vector_as_pseudonyms(similar) -> None:
    stub = similar.stub()
    for user in (0, 5):
        resp = stub.SimilarUsers(pb.SimilarUsersRequest(user_id=f"shopper-{user}", k=4), timeout=10)
        want = _expected(similar.vecs, user, 4)
        assert resp.model_version == "m1"
        assert [u.user_id for u in resp.users] == [similar.pseudo[f"shopper-{v}"] for v, _ in want]
        assert np.allclose([u.score for u in resp.users], [s for _, s in want], atol=1e-4)
        # pseudonyms only: no external id in the answer
        assert not any(u.user_id.startswith("shopper-") for u in resp.users)
    # the whole population: the user itself, the other version's and the vector-less users are never answers
    resp = stub.SimilarUsers(pb.SimilarUsersRequest(user_id="shopper-0", k=20), timeout=10)
    got = {u.user_id for u in resp.users}
    assert got == {similar.pseudo[f"shopper-{v}"] for v in range(1, N_USERS)}
    assert [u.score for u in resp.users] == sorted((u.score for u in resp.users), reverse=True)


@pytest.mark.parametrize(
    "request_, field",
    [
        (pb.SimilarUsersRequest(user_id="shopper-0", k=0), "k must be between 1 and 20"),
        (pb.SimilarUsersRequest(user_id="shopper-0", k=21), "k must be between 1 and 20"),
        (pb.SimilarUsersRequest(user_id="", k=3), "user_id must not be empty"),
        (pb.SimilarUsersRequest(user_id="x" * 1000, k=3), "user_id is longer than"),
    ],
)
def test_bad_requests_are_invalid_argument(similar, request_, field) -> None:
    with pytest.raises(grpc.RpcError) as err:
        similar.stub().SimilarUsers(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()


@pytest.mark.parametrize("user", ["nobody-knows-me", "no-ego", "old-timer"])
def test_users_without_a_vector_of_the_served_model_are_not_found(similar, user) -> None:
    with pytest.raises(grpc.RpcError) as err:
        similar.stub().SimilarUsers(pb.SimilarUsersRequest(user_id=user, k=3), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_documented_join_gives_the_answers_pseudonyms(similar, graph_settings) -> None:
    """docs/api.md's `pseudonym` function, run as written, maps the shop's ids to the answer's user_ids."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = doc[doc.index("## Similar users: answers in pseudonyms") :]
    code = section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]
    scope: dict = {}
    exec(code[: code.index("\nby_pseudonym")], scope)  # the imports and the function
    key = graph_settings.pseudonym_key.get_secret_value()
    by_pseudonym = {scope["pseudonym"](key, f"shopper-{u}"): f"shopper-{u}" for u in range(N_USERS)}
    resp = similar.stub().SimilarUsers(pb.SimilarUsersRequest(user_id="shopper-2", k=3), timeout=10)
    assert [by_pseudonym[u.user_id] for u in resp.users] == [f"shopper-{v}" for v, _ in _expected(similar.vecs, 2, 3)]


def test_a_forgotten_user_never_appears_in_an_answer(similar) -> None:
    stub = similar.stub()
    nearest = _expected(similar.vecs, 0, 1)[0][0]
    gone = similar.pseudo[f"shopper-{nearest}"]
    before = stub.SimilarUsers(pb.SimilarUsersRequest(user_id="shopper-0", k=3), timeout=10)
    assert before.users[0].user_id == gone
    assert stub.ForgetUser(pb.ForgetUserRequest(user_id=f"shopper-{nearest}"), timeout=10).existed
    for user in range(N_USERS):
        if user == nearest:
            continue
        resp = stub.SimilarUsers(pb.SimilarUsersRequest(user_id=f"shopper-{user}", k=20), timeout=10)
        assert gone not in {u.user_id for u in resp.users}
        assert len(resp.users) == N_USERS - 2  # everyone else is still there
    after = stub.SimilarUsers(pb.SimilarUsersRequest(user_id="shopper-0", k=3), timeout=10)
    assert [u.user_id for u in after.users] == [similar.pseudo[f"shopper-{v}"] for v, _ in _expected(similar.vecs, 0, 3, {nearest})]
    with pytest.raises(grpc.RpcError) as err:
        stub.SimilarUsers(pb.SimilarUsersRequest(user_id=f"shopper-{nearest}", k=3), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
