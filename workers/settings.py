"""Typed, frozen settings of the workers: where files live, the queues, the recompute, the metrics port.

Read from the environment once in a program's ``main()`` (prefix ``IG_WORKER_``; the model's
``IG_MODEL_`` and ``IG_TRAIN_`` are `ml.settings`)
and passed down; library code never reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from graphdb.marks import SLOTS


class WorkerSettings(BaseSettings):
    """Where the workers read datasets and keep models (never inside git), and how the queues behave."""

    model_config = SettingsConfigDict(env_prefix="IG_WORKER_", frozen=True, extra="ignore")

    model_dir: Path = Path("var/models")  # the live service's versions (train task, roll-out, roll-back)
    offline_model_dir: Path = Path("var/offline-models")  # `interest model train` on dataset files
    text_cache_dir: Path = Path("var/text-cache")
    # Celery: Redis broker and result store; queues "gpu" (embedding, training) and "cpu" (maintenance).
    broker_url: str = "redis://127.0.0.1:6379/1"
    result_backend: str = "redis://127.0.0.1:6379/2"
    # A task unacknowledged this long (its worker died) is delivered again: longer than the longest task.
    visibility_timeout_s: float = Field(default=3600.0, gt=0)
    # Incremental recompute: the scheduler wakes on an ingestion signal or after this interval.
    recompute_interval_s: float = Field(default=0.5, gt=0)
    # After a signal, wait this long for more changes to arrive in the same recompute.
    debounce_s: float = Field(default=0.05, ge=0)
    recompute_batch: int = Field(default=20000, ge=1, description="marks taken by one recompute")
    # A round's size (workers.round_size): as many marks as the worker's recent rounds took in this many seconds, the
    # newest first, so under a backlog an event waits for short rounds, not behind every older mark (issue 18's
    # overload: rounds of 20,000 marks took 25 s). 0 = every round takes IG_WORKER_RECOMPUTE_BATCH oldest marks.
    round_target_s: float = Field(default=0.5, ge=0)
    # ... and at least this share of a round's marks are the oldest: the backlog drains under a sustained overload too.
    round_oldest_share: float = Field(default=0.1, ge=0, le=1)
    # ... and while rounds find a backlog, each takes twice the last one's time, up to this many seconds: a round's
    # fixed cost makes rounds held at the target drain a backlog slowly (below IG_WORKER_ROUND_TARGET_S: no growth).
    round_max_s: float = Field(default=2.0, ge=0)
    # Users per ego round (SimilarUsers' vectors, workers.recompute.recompute_ego): a user round queued meanwhile
    # waits for at most one, so small; a round's fixed cost (reads, one commit) argues against too small.
    ego_batch: int = Field(default=200, ge=1)
    # Intra-op threads (torch and BLAS) of the incremental rounds, user and ego: one worker process per core scales
    # out, while workers at one thread per core each fight over the cores (2 workers on 2 cores: 2.30x one worker's
    # CPU per event, 0.85x single-threaded; docs/benchmarks.md, issue 18). 0 = the libraries' default.
    recompute_threads: int = Field(default=1, ge=0)
    # One recompute at a time per partition (Redis lock); a lock whose holder died expires after this.
    lock_timeout_s: float = Field(default=60.0, gt=0)
    # A K-layer encoder's rounds leave the last layer's out-set to a pending set (workers.hetero_recompute), worked
    # in chunks of about this many seconds between rounds: an event arriving meanwhile waits for one chunk at most
    # (0.25 s: user freshness p50 0.56-0.60 s at 200 events/s on amazon-hin, 0.88-1.11 s with 0.4 s; docs/benchmarks.md).
    hetero_chunk_s: float = Field(default=0.25, gt=0)
    # ... and more chunks, even with a round queued, while the oldest pending entry has waited longer than this: the
    # items' lag stays bounded when the rounds leave too little room (the users then wait for the chunks instead).
    hetero_max_lag_s: float = Field(default=10.0, ge=0)
    # Partitions of the marks (workers.partitions): up to this many workers recompute at once. 1 = one global
    # lock. Every worker and the scheduler must share it. See docs/benchmarks.md (partitioned recompute) for the
    # default: one worker gains nothing from more, and pays a round's fixed cost per partition.
    partitions: int = Field(default=1, ge=1, le=SLOTS)
    # Scheduled retraining (Celery beat; 0 = none): a new version rolls out only through the quality gate
    # (workers.gate), which needs this many shoppers with items first met since the active version's data.
    retrain_period_s: float = Field(default=0.0, ge=0)
    gate_min_users: int = Field(default=20, ge=1)
    # Redis (same instance the servers read): the embedding delta stream and the ingestion signal list.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Sentinel (fail-over): with ``sentinel://s1:26379;sentinel://s2:26379/db`` URLs (this one and the broker's),
    # the primary's name the Sentinels monitor. Cluster: ``redis_url`` is any node of a Redis Cluster (the keys
    # then need the ``{ig}`` hash tag; the broker stays on a non-cluster Redis). workers.redis_connect.
    redis_sentinel_master: str = ""
    redis_cluster: bool = False
    delta_stream: str = "ig:embeddings"
    changed_key: str = "ig:changed"
    # Prometheus metrics of a worker process (0 = any free port, logged; -1 = off).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9465, ge=-1, le=65535)
