"""Ingestion against the real Neo4j: aggregates, weights, idempotency, rejections, catalogue."""

import math

import pytest

from graphdb.ingest import ingest_batches, ingest_events, query_id
from graphdb.pseudonym import pseudonymise
from graphdb.schema import wipe

NOW = 1_700_000_000.0
DAY = 86400.0


def _pid(settings, user):
    return pseudonymise(settings.pseudonym_key.get_secret_value(), user)


def _rel(driver, rel, user_pid, target):
    recs = driver.execute_query(
        f"MATCH (:User {{id: $u}})-[e:{rel}]->({{id: $t}}) RETURN properties(e) AS p", u=user_pid, t=target
    ).records
    return recs[0]["p"] if recs else None


def test_counts_and_decayed_weights(graph, graph_settings):
    h = graph_settings.half_life_s
    events = [
        {"event_id": "a", "user_id": "u1", "type": "view", "item_id": "i1", "ts": NOW - h},
        {"event_id": "b", "user_id": "u1", "type": "view", "item_id": "i1", "ts": NOW},
        {"event_id": "c", "user_id": "u1", "type": "purchase", "item_id": "i1", "ts": NOW - DAY},
        {"event_id": "d", "user_id": "u2", "type": "view", "item_id": "i1", "ts": NOW},
    ]
    r = ingest_events(graph, graph_settings, events, now=NOW)
    assert (r.accepted, r.duplicates, r.rejected) == (4, 0, [])
    viewed = _rel(graph, "VIEWED", _pid(graph_settings, "u1"), "i1")
    assert viewed["count"] == 2 and viewed["first_ts"] == NOW - h and viewed["last_ts"] == NOW
    assert viewed["weight"] == pytest.approx(1.5)  # one event now, one a half-life ago
    assert _rel(graph, "PURCHASED", _pid(graph_settings, "u1"), "i1")["count"] == 1
    counts = graph.execute_query("MATCH (u:User) WITH count(u) AS u MATCH (i:Item) RETURN u, count(i) AS i").records[0]
    assert (counts["u"], counts["i"]) == (2, 1)


def test_weights_do_not_depend_on_arrival_order(graph, graph_settings):
    h = graph_settings.half_life_s
    ts = [NOW - 3 * h, NOW, NOW - h, NOW - 0.5 * h]
    for i, t in enumerate(ts):  # one batch per event, out of order
        ingest_events(
            graph, graph_settings, [{"event_id": f"o{i}", "user_id": "u1", "type": "click", "item_id": "i1", "ts": t}], now=NOW
        )
    ingest_events(
        graph,
        graph_settings,
        [  # the same events in one batch, for another user
            {"event_id": f"p{i}", "user_id": "u2", "type": "click", "item_id": "i1", "ts": t} for i, t in enumerate(ts)
        ],
        now=NOW,
    )
    expected = sum(2 ** (-(NOW - t) / h) for t in ts)
    for user in ("u1", "u2"):
        e = _rel(graph, "CLICKED", _pid(graph_settings, user), "i1")
        assert e["count"] == 4 and e["last_ts"] == NOW and e["first_ts"] == NOW - 3 * h
        assert math.isclose(e["weight"], expected, rel_tol=1e-9)


def test_duplicates_in_a_batch_and_on_replay_change_nothing(graph, graph_settings):
    batch = [{"event_id": f"e{i}", "user_id": f"u{i % 2}", "type": "view", "item_id": f"i{i % 3}", "ts": NOW - i} for i in range(10)]
    first = ingest_events(graph, graph_settings, batch + batch[:3], now=NOW)
    assert (first.accepted, first.duplicates) == (10, 3)
    snapshot = graph.execute_query("MATCH ()-[e:VIEWED]->() RETURN sum(e.count) AS c, sum(e.weight) AS w").records[0]
    replay = ingest_events(graph, graph_settings, batch, now=NOW + 5)  # a client retry of the whole batch
    assert (replay.accepted, replay.duplicates) == (0, 10)
    mixed = ingest_events(
        graph, graph_settings, batch[:2] + [{"event_id": "new", "user_id": "u0", "type": "view", "item_id": "i0", "ts": NOW}], now=NOW
    )
    assert (mixed.accepted, mixed.duplicates) == (1, 2)
    after = graph.execute_query("MATCH ()-[e:VIEWED]->() RETURN sum(e.count) AS c, sum(e.weight) AS w").records[0]
    assert snapshot["c"] == 10 and after["c"] == 11


def test_bad_events_are_rejected_and_good_ones_stored(graph, graph_settings):
    batch = [
        {"event_id": "g1", "user_id": "u1", "type": "view", "item_id": "i1", "ts": NOW},
        {"event_id": "b1", "user_id": "u1", "type": "levitate", "item_id": "i1", "ts": NOW},
        {"event_id": "g2", "user_id": "u1", "type": "rate", "item_id": "i2", "rating": 4, "ts": NOW},
        {"event_id": "b2", "user_id": "u1", "type": "rate", "item_id": "i2", "rating": 11, "ts": NOW},
        {"event_id": "b3", "user_id": "u1", "type": "view", "item_id": "i3", "ts": NOW + 10 * DAY},
        {"event_id": "b4", "user_id": "u1", "type": "view", "item_id": "x' }) DETACH DELETE n //", "ts": "soon"},
        {"event_id": "g3", "user_id": "u1", "type": "search", "query": "Red  Shoes", "ts": NOW},
    ]
    r = ingest_events(graph, graph_settings, batch, now=NOW)
    assert r.accepted == 3
    assert [x.index for x in r.rejected] == [1, 3, 4, 5]
    assert "unknown event type" in r.rejected[0].reason and "outside 1..5" in r.rejected[1].reason
    assert "future" in r.rejected[2].reason and r.rejected[3].reason.startswith("ts:")
    items = {rec["id"] for rec in graph.execute_query("MATCH (i:Item) RETURN i.id AS id").records}
    assert items == {"i1", "i2"}
    assert _rel(graph, "RATED", _pid(graph_settings, "u1"), "i2")["rating"] == 4.0
    q = graph.execute_query("MATCH (:User)-[:SEARCHED]->(q:Query) RETURN q.id AS id, q.text AS text").records
    assert [(x["id"], x["text"]) for x in q] == [(query_id("red shoes"), "red shoes")]


def test_cypher_looking_ids_are_stored_as_plain_data(graph, graph_settings):
    evil = "x'}) MATCH (n) DETACH DELETE n //"
    r = ingest_events(
        graph,
        graph_settings,
        [
            {"event_id": "s1", "user_id": "u1", "type": "view", "item_id": "safe", "ts": NOW},
            {"event_id": "s2", "user_id": evil, "type": "view", "item_id": evil, "ts": NOW},
        ],
        now=NOW,
    )
    assert r.accepted == 2
    ids = {rec["id"] for rec in graph.execute_query("MATCH (i:Item) RETURN i.id AS id").records}
    assert ids == {"safe", evil}


def test_item_metadata_builds_brand_and_category_hierarchy(graph, graph_settings):
    meta = {"title": "Blue pen", "brand": "Bic", "categories": [["Office", "Writing", "Pens"]]}
    ingest_events(
        graph,
        graph_settings,
        [{"event_id": "m1", "user_id": "u1", "type": "view", "item_id": "pen", "ts": NOW - 1, "item": meta}],
        now=NOW,
    )
    path = graph.execute_query(
        "MATCH (i:Item {id: 'pen'})-[:IN_CATEGORY]->(c:Category)-[:SUBCATEGORY_OF*]->(root:Category) "
        "WHERE NOT (root)-[:SUBCATEGORY_OF]->() "
        "MATCH (i)-[:HAS_BRAND]->(b:Brand) RETURN i.title AS t, c.name AS leaf, root.name AS root, b.name AS brand"
    ).records
    assert [(p["t"], p["leaf"], p["root"], p["brand"]) for p in path] == [("Blue pen", "Pens", "Office", "Bic")]
    # A newer event re-brands the item: the old brand link goes, the graph keeps one brand.
    ingest_events(
        graph,
        graph_settings,
        [{"event_id": "m2", "user_id": "u1", "type": "view", "item_id": "pen", "ts": NOW, "item": {"brand": "Pilot"}}],
        now=NOW,
    )
    brands = graph.execute_query("MATCH (:Item {id: 'pen'})-[:HAS_BRAND]->(b) RETURN b.id AS b").records
    assert [b["b"] for b in brands] == ["Pilot"]


def _interactions(driver):
    recs = driver.execute_query(
        "MATCH (u:User)-[e]->(t) WHERE type(e) IN ['VIEWED', 'CLICKED', 'RATED', 'SEARCHED'] "
        "RETURN u.id AS u, type(e) AS rel, t.id AS t, properties(e) AS p ORDER BY u, rel, t"
    ).records
    return [(r["u"], r["rel"], r["t"], r["p"]) for r in recs]


def test_pipelined_batches_equal_one_call_per_batch(graph, graph_settings):
    h = graph_settings.half_life_s

    def e(i, user, typ="view", item="i1", **kw):
        return {"event_id": f"p{i}", "user_id": user, "type": typ, "item_id": item, "ts": NOW - (i % 7) * h / 3, **kw}

    batches = [
        [e(0, "u1"), e(1, "u1"), e(2, "u2", "click", "i2"), e(3, "u1", "rate", "i2", rating=4), e(0, "u1")],
        # replays of the previous batch (prepared while that batch is still being written), new events, a bad one
        [e(1, "u1"), e(2, "u2", "click", "i2"), e(4, "u2"), e(5, "u3", "levitate"), e(6, "u1", "rate", "i2", rating=2)],
        [e(7, "u3", "search", None, query="Blue  Pens"), e(3, "u1", "rate", "i2", rating=4)],
        [e(4, "u2"), e(1, "u1")],  # nothing new
        [e(8, "u1", "view", "i2"), e(9, "u2", "click", "i2")],
    ]
    one_by_one = [ingest_events(graph, graph_settings, b, now=NOW) for b in batches]
    expected = _interactions(graph)
    wipe(graph)
    pipelined = list(ingest_batches(graph, graph_settings, iter(batches), now=NOW))
    assert pipelined == one_by_one
    assert [(r.accepted, r.duplicates, [x.index for x in r.rejected]) for r in pipelined] == [
        (4, 1, []),
        (2, 2, [3]),
        (1, 1, []),
        (0, 2, []),
        (2, 0, []),
    ]
    got = _interactions(graph)
    assert [g[:3] for g in got] == [x[:3] for x in expected]
    for (_, _, _, p), (_, _, _, q) in zip(got, expected):
        assert p.keys() == q.keys()
        for key in p:
            assert p[key] == pytest.approx(q[key], rel=1e-12)


def test_pipelined_batches_stop_at_the_first_failing_batch(graph, graph_settings, monkeypatch):
    import graphdb.ingest as ingest

    written = []
    real_write = ingest._write

    def write(driver, settings, batch, database):
        if batch.events and batch.events[0].event_id == "f1":
            raise ingest.Unavailable("Neo4j went away")
        written.append(batch.events[0].event_id)
        return real_write(driver, settings, batch, database)

    monkeypatch.setattr(ingest, "_write", write)
    batches = [[{"event_id": f"f{i}", "user_id": "u1", "type": "view", "item_id": "i1", "ts": NOW}] for i in range(4)]
    results = []
    with pytest.raises(ingest.Unavailable):
        for r in ingest_batches(graph, graph_settings, iter(batches), now=NOW):
            results.append(r)
    assert written == ["f0"] and [r.accepted for r in results] == [1]
