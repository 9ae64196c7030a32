"""Catalogue reads for serving, on a tiny graph written through the real ingestion path."""

from __future__ import annotations

import time

from graphdb.catalog import item_facets, iter_item_facets, popular_items, purchased_items, user_exists
from graphdb.ingest import ingest_events
from graphdb.pseudonym import pseudonymise


def _ev(n, user, type_, item_id, ts, **kw):
    return {"event_id": f"e{n}", "user_id": user, "type": type_, "item_id": item_id, "ts": ts, **kw}


def _seed(graph, graph_settings, now):
    phones = {"title": "Phone", "brand": "Acme", "categories": [["Electronics", "Phones"]]}
    head = {"title": "Headphones", "brand": "Sonic", "categories": [["Electronics", "Audio", "Headphones"]]}
    shirt = {"title": "Shirt", "brand": "Acme", "categories": [["Fashion", "Shirts"]]}
    events = [
        _ev(1, "alice", "purchase", "phone", now - 100, item=phones),
        _ev(2, "alice", "view", "head", now - 90, item=head),
        _ev(3, "bob", "view", "head", now - 80),
        _ev(4, "bob", "view", "shirt", now - 70, item=shirt),
        _ev(5, "carol", "add_to_cart", "head", now - 60),
        _ev(6, "dave", "view", "old", now - 30 * 86400),
    ]
    result = ingest_events(graph, graph_settings, events, now=now)
    assert result.accepted == 6, result.rejected


def test_facets_include_ancestor_categories_and_brands(graph, graph_settings) -> None:
    _seed(graph, graph_settings, time.time())
    facets = {f.id: f for f in iter_item_facets(graph, batch_size=2)}  # pages of 2
    assert set(facets) == {"phone", "head", "shirt", "old"}
    assert facets["head"].category_ids == ("Electronics", "Electronics > Audio", "Electronics > Audio > Headphones")
    assert facets["head"].direct_category_ids == ("Electronics > Audio > Headphones",)  # the leaf alone, for the caps
    assert facets["phone"].brand_ids == ("Acme",) and facets["old"].category_ids == facets["old"].direct_category_ids == ()
    assert [f.id for f in item_facets(graph, ["shirt", "nope"])] == ["shirt"]


def test_popular_items_rank_weighted_recent_behaviour(graph, graph_settings) -> None:
    now = time.time()
    _seed(graph, graph_settings, now)
    ranked = popular_items(graph, since=now - 86400, limit=10)
    assert [i for i, _ in ranked][:2] == ["head", "phone"]  # 2 views + 1 cart beat 1 purchase
    assert "old" not in [i for i, _ in ranked]
    assert popular_items(graph, since=now + 10, limit=2)  # nothing recent: falls back to all time


def test_purchases_and_existence_by_pseudonym(graph, graph_settings) -> None:
    _seed(graph, graph_settings, time.time())
    key = graph_settings.pseudonym_key.get_secret_value()
    assert purchased_items(graph, pseudonymise(key, "alice")) == ["phone"]
    assert purchased_items(graph, pseudonymise(key, "bob")) == []
    assert user_exists(graph, pseudonymise(key, "bob")) and not user_exists(graph, pseudonymise(key, "zed"))
    assert not user_exists(graph, "alice")  # external ids never reach the graph


def test_latest_model_version(graph, graph_settings) -> None:
    from graphdb.catalog import latest_model_version
    from graphdb.embeddings import write_embeddings

    _seed(graph, graph_settings, time.time())
    assert latest_model_version(graph) is None
    write_embeddings(graph, "Item", [("phone", [1.0] * 16)], "m1", now=100.0)
    write_embeddings(graph, "Item", [("head", [1.0] * 16)], "m2", now=200.0)
    assert latest_model_version(graph) == "m2"
