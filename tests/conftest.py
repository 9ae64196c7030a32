"""Session fixtures: a real Neo4j (our embedded launcher) and a real redis-server on free loopback ports.

They start once per test session in a temporary directory and stop at the end; ``graph`` wipes the graph
before each test that uses it. Tests of pure functions use none of this and need no services.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from graphdb import localstack
from graphdb.driver import connect
from graphdb.schema import migrate, wipe
from graphdb.settings import DataSettings, GraphSettings, LocalStackSettings, Neo4jSettings

SLICES = Path(__file__).resolve().parent / "data"  # small slices of gowalla and amazon-hin (tests/data/README.md)


@dataclass(frozen=True)
class Stack:
    settings: LocalStackSettings

    @property
    def neo4j_uri(self) -> str:
        return f"bolt://127.0.0.1:{self.settings.neo4j_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.settings.redis_port}/0"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    var = tmp_path_factory.mktemp("stack")
    settings = LocalStackSettings(
        var_dir=var,
        neo4j_port=localstack.free_port(),
        redis_port=localstack.free_port(),
        neo4j_heap_mb=1536,
        neo4j_pagecache_mb=512,
        neo4j_tx_memory_mb=1024,
    )
    try:
        localstack.up(settings)
        yield Stack(settings)
    finally:
        localstack.down(settings)


@pytest.fixture(scope="session")
def neo4j_settings(stack: Stack) -> Neo4jSettings:
    return Neo4jSettings(uri=stack.neo4j_uri)


@pytest.fixture(scope="session")
def graph_settings() -> GraphSettings:
    return GraphSettings(pseudonym_key="test-pseudonym-key", embedding_dim=16)


@pytest.fixture(scope="session")
def redis_url(stack: Stack) -> str:
    return stack.redis_url


@pytest.fixture(scope="session")
def neo4j_driver(neo4j_settings: Neo4jSettings, graph_settings: GraphSettings):
    driver = connect(neo4j_settings)
    migrate(driver, graph_settings)
    yield driver
    driver.close()


@pytest.fixture
def graph(neo4j_driver):
    """The driver, on an empty graph (schema kept)."""
    wipe(neo4j_driver)
    return neo4j_driver


@pytest.fixture(scope="session")
def office_root() -> Path:
    """amazon-office, found as the service finds it: IG_DATASETS_DIR, ../shared/datasets, then the bundled data/."""
    return DataSettings().dataset_dir("amazon-office")


@pytest.fixture(scope="session")
def slices() -> Path:
    return SLICES
