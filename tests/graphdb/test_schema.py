import pytest

from graphdb.errors import FailedPrecondition
from graphdb.schema import SCHEMA_VERSION, migrate
from graphdb.settings import GraphSettings


def _schema(driver):
    cons = {r["name"] for r in driver.execute_query("SHOW CONSTRAINTS YIELD name").records}
    idx = {(r["name"], r["type"]) for r in driver.execute_query("SHOW INDEXES YIELD name, type").records}
    return cons, idx


def test_migration_is_idempotent(neo4j_driver, graph_settings):
    before = _schema(neo4j_driver)
    assert migrate(neo4j_driver, graph_settings) == SCHEMA_VERSION
    assert migrate(neo4j_driver, graph_settings) == SCHEMA_VERSION
    cons, idx = _schema(neo4j_driver)
    assert (cons, idx) == before
    assert {"user_id", "item_id", "category_id", "brand_id", "query_id", "seen_id"} <= cons
    assert {("item_embedding", "VECTOR"), ("user_embedding", "VECTOR")} <= idx


def test_vector_dimension_mismatch_is_refused(neo4j_driver, graph_settings):
    other = GraphSettings(embedding_dim=graph_settings.embedding_dim + 1)
    with pytest.raises(FailedPrecondition, match="dimension"):
        migrate(neo4j_driver, other)
