"""Every Cypher query of docs/analysts.md (the single source of truth: they are parsed from it) runs against a
small hand-built graph, written through graphdb's own ingestion, catalogue and embedding functions, and must
return exactly the rows that graph implies. Also: ``interest graph query`` with parameters."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import neo4j
import numpy as np
import pytest
from typer.testing import CliRunner

from graphdb.changes import clear_marks, read_marks
from graphdb.cli import _parse_params, graph_app
from graphdb.embeddings import write_embeddings
from graphdb.ingest import ingest_events, query_id
from graphdb.items import ItemRecord, link_also_viewed, upsert_items
from graphdb.marks import new_token
from graphdb.pseudonym import pseudonymise
from graphdb.schema import ITEM_INTERACTIONS, REL_FOR_EVENT, wipe

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"
NOW = 1_750_000_000.0
D = 86400.0
DIM = 16  # tests/conftest.py graph_settings

ITEMS = [
    ItemRecord("i-head1", title="Headphones One", brand="Sonic", categories=(("Electronics", "Audio", "Headphones"),)),
    ItemRecord("i-head2", title="Headphones Two", brand="Sonic", categories=(("Electronics", "Audio", "Headphones"),)),
    ItemRecord("i-speaker", title="Speaker", brand="Boom", categories=(("Electronics", "Audio"),)),
    ItemRecord("i-cam", title="Camera", brand="Snap", categories=(("Electronics", "Cameras"),)),
    ItemRecord("i-novel", title="A Novel", brand="PagePress", categories=(("Books", "Fiction"),)),
    ItemRecord("i-cold", title="Unread Novel", brand="PagePress", categories=(("Books", "Fiction"),)),
]
LEAF = {it.id: " > ".join(it.categories[0]) for it in ITEMS}
ALSO_VIEWED = [("i-head1", "i-head2"), ("i-head1", "i-cold"), ("i-cam", "i-head1")]

# (user, type, item or search text, ts, extra)
EVENTS = [
    ("alice", "purchase", "i-head1", NOW - 1 * D, {}),
    ("alice", "view", "i-head1", NOW - 1 * D - 300, {}),
    ("alice", "purchase", "i-speaker", NOW - 2 * D, {}),
    ("alice", "view", "i-cam", NOW - 3 * D, {}),
    ("alice", "search", "Wireless  Headphones", NOW - 1 * D - 600, {}),
    ("alice", "search", "camera", NOW - 3 * D - 100, {}),
    ("bob", "purchase", "i-head1", NOW - 5 * D, {}),
    ("bob", "purchase", "i-speaker", NOW - 5 * D + 60, {}),
    ("bob", "view", "i-head2", NOW - 4 * D, {}),
    ("bob", "search", "wireless headphones", NOW - 5 * D - 600, {}),
    ("bob", "add_to_cart", "i-head1", NOW - 5 * D - 120, {}),
    ("carol", "purchase", "i-head1", NOW - 10 * D, {}),
    ("carol", "purchase", "i-novel", NOW - 10 * D, {}),
    ("carol", "view", "i-novel", NOW - 11 * D, {}),
    ("carol", "view", "i-novel", NOW - 12 * D, {}),
    ("carol", "rate", "i-novel", NOW - 9 * D, {"rating": 5}),
    ("carol", "search", "novels", NOW - 10 * D - 600, {}),
    ("dave", "view", "i-cam", NOW - 40 * D, {}),
    ("dave", "click", "i-cam", NOW - 40 * D + 10, {}),
    ("dave", "rate", "i-cam", NOW - 39 * D, {"rating": 3}),
    # negative feedback: a returned purchase, a return without a purchase, a hidden item
    ("frank", "purchase", "i-novel", NOW - 6 * D, {}),
    ("frank", "return", "i-novel", NOW - 5 * D, {}),
    ("frank", "return", "i-speaker", NOW - 4 * D, {}),
    ("frank", "not_interested", "i-head2", NOW - 3 * D, {}),
    ("frank", "not_interested", "i-head2", NOW - 3 * D + 60, {}),
]
# Ingested after every earlier mark was cleared (as if the workers had caught up): the only pending changes.
LATE = [("erin", "rate", "i-novel", NOW - 60, {"rating": 4, "review": "Good read"})]
ALL = EVENTS + LATE


def unit(*pairs: tuple[int, float]) -> list[float]:
    v = [0.0] * DIM
    for axis, x in pairs:
        v[axis] = x
    return v


ITEM_VECTORS = {  # model m1, except i-novel (m0: an older model's vector)
    "i-head1": unit((0, 1.0)),
    "i-head2": unit((0, 1.0), (1, 0.2)),
    "i-speaker": unit((0, 1.0), (1, 0.6)),
    "i-cam": unit((2, 1.0)),
    "i-cold": unit((3, 1.0), (2, 0.5)),
}
NOVEL_M0 = unit((3, 1.0))
ALICE_VECTOR = unit((0, 1.0), (2, 0.1))
# Written before the "Vectors by model version" window; dave's is of the older model, so alice's nearest
# users are bob then carol although dave's vector equals hers.
USER_VECTORS = {"bob": unit((0, 1.0), (2, 0.3)), "carol": unit((3, 1.0), (0, 0.5))}
DAVE_M0 = ALICE_VECTOR


def _mapping(n: int, ev) -> dict:
    user, type_, target, ts, extra = ev
    out = {"event_id": f"ev-{n}", "user_id": user, "type": type_, "ts": ts, **extra}
    out["query" if type_ == "search" else "item_id"] = target
    return out


@pytest.fixture(scope="module")
def analyst_graph(neo4j_driver, graph_settings):
    driver = neo4j_driver
    wipe(driver)
    with driver.session() as session:
        session.execute_write(
            lambda tx: (
                upsert_items(tx, ITEMS, token=new_token(), now=NOW - 50 * D),
                link_also_viewed(tx, ALSO_VIEWED, token=new_token(), now=NOW - 50 * D),
            )
        )
    result = ingest_events(driver, graph_settings, [_mapping(n, ev) for n, ev in enumerate(EVENTS)], now=NOW - 30)
    assert (result.accepted, result.rejected) == (len(EVENTS), [])
    assert write_embeddings(driver, "Item", ITEM_VECTORS.items(), "m1", now=NOW - 3600) == len(ITEM_VECTORS)
    assert write_embeddings(driver, "Item", [("i-novel", NOVEL_M0)], "m0", now=NOW - 7200) == 1
    key = graph_settings.pseudonym_key.get_secret_value()
    assert write_embeddings(driver, "User", [(pseudonymise(key, "alice"), ALICE_VECTOR)], "m1", now=NOW - 1800) == 1
    others = [(pseudonymise(key, user), vector) for user, vector in USER_VECTORS.items()]
    assert write_embeddings(driver, "User", others, "m1", now=NOW - 7200) == len(others)
    assert write_embeddings(driver, "User", [(pseudonymise(key, "dave"), DAVE_M0)], "m0", now=NOW - 7200) == 1
    while marks := read_marks(driver):
        clear_marks(driver, marks)
    late = ingest_events(driver, graph_settings, [_mapping(100, LATE[0])], now=NOW)
    assert late.accepted == 1
    return driver


def doc_queries() -> dict[str, str]:
    """heading -> the one cypher block under it, in docs/analysts.md."""
    text = DOC.read_text()
    out: dict[str, str] = {}
    for section in re.split(r"^### ", text, flags=re.M)[1:]:
        heading, _, body = section.partition("\n")
        blocks = re.findall(r"^```cypher\n(.*?)^```", body, flags=re.M | re.S)
        assert len(blocks) == 1, f"{heading!r} should have exactly one cypher block"
        out[heading.strip()] = blocks[0]
    assert len(re.findall(r"^```cypher", text, flags=re.M)) == len(out), "a cypher block outside a ### section"
    return out


# -- what the hand-built graph implies, computed from the event list ----------------------------------------


def _decay(ts: float, now: float, half_life_s: float) -> float:
    return 2.0 ** (-(now - ts) / half_life_s)


def relationships() -> dict[tuple[str, str, str], list[float]]:
    """(user, relationship type, target id) -> event times, as ingestion aggregates them."""
    rels: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for user, type_, target, ts, _ in ALL:
        target_id = query_id(target) if type_ == "search" else target
        rels[(user, REL_FOR_EVENT[type_], target_id)].append(ts)
    return rels


def expected_top_categories(user: str, hl: float, k: int) -> list[tuple[str, float]]:
    score: dict[str, float] = defaultdict(float)
    for (u, rel, target), times in relationships().items():
        if u == user and rel in ITEM_INTERACTIONS:
            score[LEAF[target]] += sum(_decay(t, NOW, hl) for t in times)
    return sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def expected_trending(under: str, since: float, hl: float, k: int) -> list[tuple[str, float]]:
    score: dict[str, float] = defaultdict(float)
    for (_, rel, target), times in relationships().items():
        if rel in ITEM_INTERACTIONS and LEAF[target].startswith(under) and max(times) >= since:
            score[target] += sum(_decay(t, NOW, hl) for t in times)
    return sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def cos_score(a: list[float], b: list[float]) -> float:
    """What vector.similarity.cosine gives: (1 + cos) / 2."""
    dot = sum(x * y for x, y in zip(a, b))
    return (1.0 + dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))) / 2.0


def rows_as(rows: list[dict], *keys: str) -> list[tuple]:
    return [tuple(r[k] for k in keys) for r in rows]


def same(got, want) -> None:
    assert got == want


def approx_rows(got: list[tuple], want: list[tuple], tol: float = 1e-6) -> None:
    assert [g[:-1] for g in got] == [w[:-1] for w in want], got
    assert [g[-1] for g in got] == pytest.approx([w[-1] for w in want], abs=tol, rel=tol)


# -- one case per heading: parameters, and a check of the rows -------------------------------------------------


def cases(p, hl: float) -> dict[str, tuple[dict, object]]:
    """``p`` pseudonymises; ``hl`` is the half-life in seconds."""

    def c(params, check):
        return params, check

    return {
        "A user's top categories": c(
            {"user": p("alice"), "now": NOW, "half_life_s": hl, "k": 2},
            lambda rows: approx_rows(rows_as(rows, "category", "interest"), expected_top_categories("alice", hl, 2)),
        ),
        "A user's recent activity": c(
            {"user": p("alice"), "since": NOW - 2.5 * D},
            lambda rows: same(
                rows_as(rows, "behaviour", "target", "label", "events", "last_ts"),
                [
                    ("PURCHASED", "i-head1", "Headphones One", 1, NOW - 1 * D),
                    ("VIEWED", "i-head1", "Headphones One", 1, NOW - 1 * D - 300),
                    ("SEARCHED", query_id("wireless headphones"), "wireless headphones", 1, NOW - 1 * D - 600),
                    ("PURCHASED", "i-speaker", "Speaker", 1, NOW - 2 * D),
                ],
            ),
        ),
        "A shopper's negative feedback": c(
            {"user": p("frank")},
            lambda rows: same(
                rows_as(rows, "feedback", "item", "title", "events", "last_ts", "purchase_voided"),
                [
                    ("NOT_INTERESTED", "i-head2", "Headphones Two", 2, NOW - 3 * D + 60, False),
                    ("RETURNED", "i-speaker", "Speaker", 1, NOW - 4 * D, False),
                    ("RETURNED", "i-novel", "A Novel", 1, NOW - 5 * D, True),
                ],
            ),
        ),
        "Items bought together": c(
            {"item": "i-head1", "k": 5},
            lambda rows: same(rows_as(rows, "item", "title", "buyers"), [("i-speaker", "Speaker", 2), ("i-novel", "A Novel", 1)]),
        ),
        "Users with similar interests": c(
            {"user": p("alice"), "k": 5},
            lambda rows: same(rows_as(rows, "user", "shared_items"), [(p("bob"), 2)] + sorted([(p("carol"), 1), (p("dave"), 1)])),
        ),
        "Trending items in a category": c(
            {"category": "Electronics", "since": NOW - 7 * D, "now": NOW, "half_life_s": hl, "k": 3},
            lambda rows: (
                approx_rows(rows_as(rows, "item", "trend"), expected_trending("Electronics", NOW - 7 * D, hl, 3)),
                same([r["item"] for r in rows], ["i-head1", "i-speaker", "i-cam"]),
            ),
        ),
        "Conversion funnel of an item": c(
            {"item": "i-head1"}, lambda rows: same(rows_as(rows, "viewers", "carted", "buyers"), [(1, 1, 3)])
        ),
        "Ratings of an item": c({"item": "i-novel"}, lambda rows: same(rows_as(rows, "ratings", "average"), [(2, 4.5)])),
        "Top brands": c(
            {"types": ["PURCHASED"], "k": 3},
            # frank's returned purchase is still a PURCHASED event
            lambda rows: same(rows_as(rows, "brand", "events"), [("Sonic", 3), ("Boom", 2), ("PagePress", 2)]),
        ),
        "Category hierarchy": c(
            {"root": "Electronics"},
            lambda rows: same(
                rows_as(rows, "category", "depth", "items"),
                [
                    ("Electronics", 0, 0),
                    ("Electronics > Audio", 1, 1),
                    ("Electronics > Audio > Headphones", 2, 2),
                    ("Electronics > Cameras", 1, 1),
                ],
            ),
        ),
        "Top searches": c(
            {"since": NOW - 7 * D, "k": 5},
            lambda rows: same(rows_as(rows, "query", "searches", "users"), [("wireless headphones", 2, 2), ("camera", 1, 1)]),
        ),
        "Items found after a search": c(
            {"text": "wireless headphones", "within_s": D, "k": 5},
            lambda rows: same(rows_as(rows, "item", "searchers"), [("i-head1", 2), ("i-speaker", 1)]),
        ),
        "Also viewed": c(
            {"item": "i-head1", "k": 10},
            lambda rows: same(rows_as(rows, "item", "title"), [("i-cold", "Unread Novel"), ("i-head2", "Headphones Two")]),
        ),
        "Cold items": c(
            {"k": 10}, lambda rows: same(rows_as(rows, "item", "title", "has_vector"), [("i-cold", "Unread Novel", True)])
        ),
        "Nearest items to an item (vector index)": c(
            {"item": "i-head1", "candidates": 5, "k": 2},
            lambda rows: approx_rows(
                rows_as(rows, "item", "score"),
                [
                    ("i-head2", cos_score(ITEM_VECTORS["i-head1"], ITEM_VECTORS["i-head2"])),
                    ("i-speaker", cos_score(ITEM_VECTORS["i-head1"], ITEM_VECTORS["i-speaker"])),
                ],
                tol=1e-5,
            ),
        ),
        "Nearest items to a vector": c(
            # closest of all is i-novel, but its vector is of model m0
            {"vector": unit((3, 1.0), (2, 0.1)), "candidates": 10, "model_version": "m1", "k": 2},
            lambda rows: approx_rows(
                rows_as(rows, "item", "score"),
                [
                    ("i-cold", cos_score(unit((3, 1.0), (2, 0.1)), ITEM_VECTORS["i-cold"])),
                    ("i-cam", cos_score(unit((3, 1.0), (2, 0.1)), ITEM_VECTORS["i-cam"])),
                ],
                tol=1e-5,
            ),
        ),
        "A user's nearest items": c(
            # alice bought i-head1 and i-speaker, the two closest to her vector
            {"user": p("alice"), "candidates": 10, "k": 2},
            lambda rows: approx_rows(
                rows_as(rows, "item", "score"),
                [
                    ("i-head2", cos_score(ALICE_VECTOR, ITEM_VECTORS["i-head2"])),
                    ("i-cam", cos_score(ALICE_VECTOR, ITEM_VECTORS["i-cam"])),
                ],
                tol=1e-5,
            ),
        ),
        "Users with similar vectors": c(
            {"user": p("alice"), "candidates": 10, "k": 5},
            lambda rows: approx_rows(
                rows_as(rows, "user", "score"),
                [
                    (p("bob"), cos_score(ALICE_VECTOR, USER_VECTORS["bob"])),
                    (p("carol"), cos_score(ALICE_VECTOR, USER_VECTORS["carol"])),
                ],
                tol=1e-5,
            ),
        ),
        "Vectors by model version": c(
            {"since": NOW - 5000},
            lambda rows: same(rows_as(rows, "label", "model_version", "vectors"), [("Item", "m1", 5), ("User", "m1", 1)]),
        ),
        "Users pending recompute": c(
            {"now": NOW + 120, "k": 10}, lambda rows: same(rows_as(rows, "user", "since", "waiting_s"), [(p("erin"), NOW, 120.0)])
        ),
        "Pending changes by label": c(
            {"now": NOW + 120}, lambda rows: same(rows_as(rows, "label", "pending", "oldest"), [("Item", 1, NOW), ("User", 1, NOW)])
        ),
        # alice and bob bought both i-head1 and i-speaker
        "Explanation: bought together with one of your items": c(
            {"user": p("alice"), "x": "i-head1", "item": "i-speaker"}, lambda rows: same(rows_as(rows, "shoppers"), [(2,)])
        ),
        # alice bought i-head1 (Electronics > Audio > Headphones) and i-speaker (Electronics > Audio)
        "Explanation: a category you often buy": c(
            {"user": p("alice"), "item": "i-head2", "category": "Electronics > Audio"},
            lambda rows: same(rows_as(rows, "bought"), [(2,)]),
        ),
        "Explanation: your recent search": c(
            {"user": p("alice"), "item": "i-head2", "query": "wireless headphones"},
            lambda rows: same(rows_as(rows, "matches"), [(1,)]),
        ),
        "Explanation: bought together with the asked item": c(
            {"asked": "i-head1", "item": "i-novel"}, lambda rows: same(rows_as(rows, "shoppers"), [(1,)])
        ),
        "Explanation: in the same category as the asked item": c(
            {"asked": "i-head1", "item": "i-speaker", "category": "Electronics > Audio"},
            lambda rows: same(rows_as(rows, "shared"), [(1,)]),
        ),
    }


@pytest.fixture(scope="module")
def expectations(graph_settings):
    key = graph_settings.pseudonym_key.get_secret_value()
    return cases(lambda user: pseudonymise(key, user), graph_settings.half_life_s)


def test_every_documented_query_has_a_case(expectations) -> None:
    queries = doc_queries()
    assert len(queries) >= 12
    assert sorted(queries) == sorted(expectations)


@pytest.mark.parametrize("heading", sorted(doc_queries()))
def test_documented_query(heading, analyst_graph, expectations) -> None:
    query = doc_queries()[heading]
    params, check = expectations[heading]
    assert set(re.findall(r"\$([A-Za-z_]\w*)", query)) == set(params), "the case passes every parameter, no more"
    records = analyst_graph.execute_query(query, params, routing_=neo4j.RoutingControl.READ).records
    check([r.data() for r in records])


def test_parse_params() -> None:
    params = _parse_params(["k=10", "w=0.5", 'types=["PURCHASED"]', 'item="12345"', "name=Sonic Sound", "e="], ["user=alice"], "key")
    assert params == {
        "k": 10,
        "w": 0.5,
        "types": ["PURCHASED"],
        "item": "12345",
        "name": "Sonic Sound",
        "e": "",
        "user": pseudonymise("key", "alice"),
    }
    with pytest.raises(Exception, match="name=value"):
        _parse_params(["no-equals-sign"], [], "key")


def test_cli_query_takes_parameters(analyst_graph, neo4j_settings, graph_settings, monkeypatch) -> None:
    """What the guide tells analysts to type: a documented query, a user by external id, typed parameters."""
    monkeypatch.setenv("NEO4J_URI", neo4j_settings.uri)
    monkeypatch.setenv("IG_PSEUDONYM_KEY", graph_settings.pseudonym_key.get_secret_value())
    hl = graph_settings.half_life_s
    result = CliRunner().invoke(
        graph_app,
        [
            "query",
            doc_queries()["A user's top categories"],
            "--user-param",
            "user=alice",
            "--param",
            f"now={NOW}",
            "--param",
            f"half_life_s={hl}",
            "-p",
            "k=2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    approx_rows(rows_as(rows, "category", "interest"), expected_top_categories("alice", hl, 2))
    # and a Cypher error is reported, not a traceback
    bad = CliRunner().invoke(graph_app, ["query", "MATCH (n RETURN n"])
    assert bad.exit_code == 1 and "Cypher error" in bad.output


# -- the documented vector-index queries against brute force, on many random vectors --------------------------

RANDOM_VERSION = "m-random"


@pytest.fixture
def random_vectors(analyst_graph):
    """Random vectors for 150 extra items and 40 extra users, of a model version of their own, so the
    documented queries (which keep to the seed's version) rank only these; removed afterwards, so the
    hand-built graph the other cases read is left as it was."""
    rng = np.random.default_rng(19)
    # float32, as Neo4j stores them, so brute force ranks the very numbers the index holds
    items = {f"r-item-{n:03d}": v.tolist() for n, v in enumerate(rng.normal(size=(150, DIM)).astype(np.float32))}
    users = {f"r-user-{n:03d}": v.tolist() for n, v in enumerate(rng.normal(size=(40, DIM)).astype(np.float32))}
    analyst_graph.execute_query("UNWIND $ids AS id CREATE (:Item {id: id})", ids=list(items))
    analyst_graph.execute_query("UNWIND $ids AS id CREATE (:User {id: id})", ids=list(users))
    try:
        assert write_embeddings(analyst_graph, "Item", items.items(), RANDOM_VERSION, now=NOW - 20 * D) == len(items)
        assert write_embeddings(analyst_graph, "User", users.items(), RANDOM_VERSION, now=NOW - 20 * D) == len(users)
        yield items, users
    finally:
        analyst_graph.execute_query("MATCH (n:Item|User) WHERE n.id STARTS WITH 'r-' DETACH DELETE n")


def brute_force(query: list[float], vectors: dict[str, list[float]], k: int, leave_out: str = "") -> list[tuple]:
    """The exact top k by cosine, as (id, (1 + cos) / 2), ties by id, as the documented queries order them."""
    scored = sorted((-cos_score(query, v), id_) for id_, v in vectors.items() if id_ != leave_out)
    return [(id_, -neg) for neg, id_ in scored[:k]]


def test_vector_index_queries_agree_with_brute_force(analyst_graph, random_vectors) -> None:
    """The documented index queries, asked for 50 candidates of the 156 items (or 44 users) in the index,
    return the exact cosine top 5: the index's approximation never loses a true neighbour here."""
    items, users = random_vectors
    queries = doc_queries()

    def run(heading: str, key: str, **params) -> list[tuple]:
        records = analyst_graph.execute_query(queries[heading], params, routing_=neo4j.RoutingControl.READ).records
        return rows_as([r.data() for r in records], key, "score")

    for seed in sorted(items)[::15]:
        approx_rows(
            run("Nearest items to an item (vector index)", "item", item=seed, candidates=50, k=5),
            brute_force(items[seed], items, 5, leave_out=seed),
            tol=1e-5,
        )
    for user in sorted(users)[::4]:
        approx_rows(
            run("Users with similar vectors", "user", user=user, candidates=20, k=5),
            brute_force(users[user], users, 5, leave_out=user),
            tol=1e-5,
        )
        approx_rows(run("A user's nearest items", "item", user=user, candidates=50, k=5), brute_force(users[user], items, 5), tol=1e-5)
    probe = np.random.default_rng(7).normal(size=DIM).tolist()
    approx_rows(
        run("Nearest items to a vector", "item", vector=probe, candidates=50, model_version=RANDOM_VERSION, k=5),
        brute_force(probe, items, 5),
        tol=1e-5,
    )
