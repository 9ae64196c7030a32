"""Typed, frozen settings of the graph layer.

Read from the environment once, in a program's ``main()``, and passed down; library code never reads
``os.environ``. Every variable is listed in the README's table.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from graphdb.dataset_paths import find_dataset


class Neo4jSettings(BaseSettings):
    """Where the graph lives. Any ``bolt://`` or ``neo4j://`` (routing, for clusters) URI works."""

    model_config = SettingsConfigDict(env_prefix="NEO4J_", frozen=True, extra="ignore")

    uri: str = "bolt://127.0.0.1:7687"
    user: str = "neo4j"
    password: SecretStr = SecretStr("")
    database: str = "neo4j"
    max_pool_size: int = Field(default=32, ge=1)


class LocalStackSettings(BaseSettings):
    """The local development stack: our embedded Neo4j launcher and a loopback redis-server."""

    model_config = SettingsConfigDict(env_prefix="IG_STACK_", frozen=True, extra="ignore")

    var_dir: Path = Path("var")
    neo4j_version: str = "5.26.30"
    neo4j_port: int = Field(default=7687, ge=0, le=65535)
    redis_port: int = Field(default=6379, ge=0, le=65535)
    # Neo4j's HTTP connector on loopback, serving Neo4j Browser at /browser/; 0 keeps it off (the default: one
    # port fewer to collide on a shared machine, and the Browser jar is fetched only when wanted).
    neo4j_http_port: int = Field(default=0, ge=0, le=65535)
    # The newest Browser on Maven Central; Neo4j 5.26's own later browsers are not published there.
    neo4j_browser_version: str = "5.24.0"
    # Capped for a 2-core / 24 GB machine; Neo4j's defaults would take half the RAM for page cache.
    neo4j_heap_mb: int = Field(default=3072, ge=256)
    neo4j_pagecache_mb: int = Field(default=2048, ge=64)
    neo4j_tx_memory_mb: int = Field(default=2048, ge=64)
    java_home: Path | None = None
    start_timeout_s: float = Field(default=120.0, gt=0)


EMBEDDING_DIM = 1024
"""The one width setting (``IG_EMBEDDING_DIM``): the graph's vector indexes, the served model, the FAISS index.
Chosen by measurement (docs/benchmarks.md, "Served width")."""


# The pseudonym key's default: for local development only (a server refuses it beyond loopback, server.app).
DEV_PSEUDONYM_KEY = "dev-only-pseudonym-key"


class GraphSettings(BaseSettings):
    """How behaviour becomes graph: pseudonymisation, weights, limits of accepted input."""

    model_config = SettingsConfigDict(env_prefix="IG_", frozen=True, extra="ignore")

    # Keyed hash for external user ids. The default is for local development only; set it in production.
    pseudonym_key: SecretStr = SecretStr(DEV_PSEUDONYM_KEY)
    half_life_days: float = Field(default=30.0, gt=0)
    embedding_dim: int = Field(default=EMBEDDING_DIM, ge=2, le=4096)
    dedup_retention_hours: float = Field(default=168.0, gt=0)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    max_text_chars: int = Field(default=4000, ge=16)
    max_id_chars: int = Field(default=256, ge=8)
    batch_size: int = Field(default=5000, ge=1)

    @property
    def half_life_s(self) -> float:
        return self.half_life_days * 86400.0


class DataSettings(BaseSettings):
    """Where the research datasets live (read-only)."""

    model_config = SettingsConfigDict(env_prefix="IG_", frozen=True, extra="ignore")

    # Searched first; then ../shared/datasets next to the checkout, then the repository's data/ (graphdb.dataset_paths).
    datasets_dir: Path | None = None

    def dataset_dir(self, name: str) -> Path:
        return find_dataset(name, self.datasets_dir)
