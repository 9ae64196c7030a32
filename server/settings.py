"""Typed, frozen settings of the gRPC server (env prefix ``IG_SERVER_``), read once in ``main()``."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IG_SERVER_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    # Comma-separated bearer tokens; auth is enforced only when at least one is configured.
    auth_tokens: SecretStr = SecretStr("")
    # TLS is on when both are set (PEM files).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # A non-loopback host without auth tokens is refused unless this is set (e.g. a trusted private network
    # with authentication done by a proxy in front).
    allow_insecure_public: bool = False

    # Limits.
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_k: int = Field(default=1000, ge=1)
    max_stream_events: int = Field(default=100_000, ge=1)
    max_filter_ids: int = Field(default=10_000, ge=0)
    max_batch: int = Field(default=32, ge=1, description="entries of one BatchRecommend call")
    # Ranking rules (server.rules): boosts per request, their multipliers' bounds, and the candidates re-ranked:
    # first max(rules_candidates, 4 k), doubled while caps leave the answer short, up to rules_max_candidates.
    max_boosts: int = Field(default=16, ge=0)
    boost_min: float = Field(default=0.1, gt=0)
    boost_max: float = Field(default=10.0, gt=0)
    rules_candidates: int = Field(default=200, ge=1)
    rules_max_candidates: int = Field(default=2000, ge=1)
    max_session_events: int = Field(default=200, ge=1, description="events of one RecommendForSession request")
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    # grpc's server (IG_SERVER_FRONT=grpc, or TLS): threads per process answering queries (SimilarItems,
    # NearestItems, health checks). Few is best: each holds the GIL but for its FAISS search, and 8 instead of 4
    # cost ~25 % of the throughput in thread switches (bench.serving). The native front end answers queries on
    # its io_threads.
    rpc_threads: int = Field(default=4, ge=1)
    # Threads per process for the calls that may wait: on Neo4j (RecommendForUser, GetEmbedding, ForgetUser) or
    # on a client's stream (IngestEvents, health Watch, reflection). They never take the query threads.
    wait_threads: int = Field(default=16, ge=2)
    # Of those, how many streaming calls may hold at once; more are refused (RESOURCE_EXHAUSTED), so slow or
    # idle streams leave threads to the calls waiting on Neo4j.
    stream_threads: int = Field(default=8, ge=1)
    # Who owns the public port: "native" (the Rust front end on tonic, server.front: HTTP/2, gRPC framing and
    # TLS outside Python, ~2x the calls per core), "grpc" (grpc's Python server alone) or "auto" (native when
    # built).
    front: Literal["auto", "native", "grpc"] = "auto"
    # The native front end: at most this many queries run their Python at once, each on the HTTP/2 thread that read
    # it; its event loop has one thread more, so I/O (health checks, forwarded calls) goes on while they are held.
    io_threads: int = Field(default=2, ge=1)
    grace_period_s: float = Field(default=10.0, ge=0)
    # issue 20: HTTP/2 limits of the native front end, per client connection (docs/api.md, "HTTP/2 limits").
    # Streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS; IG_SERVER_MAX_CONCURRENT_RPCS caps the process).
    h2_max_concurrent_streams: int = Field(default=256, ge=1, le=2**31 - 1)
    # Request header block, decoded (SETTINGS_MAX_HEADER_LIST_SIZE): larger requests are refused.
    h2_max_header_list_bytes: int = Field(default=16 * 1024, ge=1024, le=2**31 - 1)
    # PING an idle connection this often (0 = never) and close it when no answer comes within the timeout.
    h2_keepalive_interval_s: float = Field(default=60.0, ge=0)
    h2_keepalive_timeout_s: float = Field(default=20.0, gt=0)
    # Rapid reset (CVE-2023-44487): streams a client opened and reset before they were answered, and streams
    # the server had to reset for a client's protocol errors, allowed at once; past either, GOAWAY.
    h2_max_pending_accept_reset_streams: int = Field(default=20, ge=1)
    h2_max_local_error_reset_streams: int = Field(default=1024, ge=1)
    # Serving processes sharing the port (SO_REUSEPORT: the kernel spreads client connections over them), since
    # one Python process answers RPCs on one core. 0 = one per CPU core. Each is a full replica following the
    # delta stream; the first writes the snapshots, process i serves metrics on metrics_port + i.
    processes: int = Field(default=1, ge=0)

    # Index.
    # IVF lists; 0 picks about 4 * sqrt(items).
    ivf_nlist: int = Field(default=0, ge=0)
    # IVF lists hold the first ivf_dim components of each vector (0 = all); the best max(k, ivf_refine)
    # candidates are then re-ranked exactly at the full width. The served model's components come in spectral
    # order. On gowalla's served 1024-d vectors (41k items) these defaults, with PQ codes, gave Recall@20 0.1916
    # against exact search's 0.1924 on 4,000 test users, where a full-width IVF at nprobe 16 gave 0.1833
    # (docs/benchmarks.md, "Served width and the index"). At 1M items the lists are picked by PQ codes refined
    # exactly (server.ann.coarse_quantizer): probing 112 of them gave recall@10 0.779 against 0.767 for 64 exact
    # lists, in 404 against 515 us a call. Re-ranking 200 rather than 300 cut the engine from ~345 to ~285 us a
    # call at 1M x 1024 and kept gowalla's served row above GF-CF (Recall@20 0.1879 against 0.1888 at 300, GF-CF
    # 0.1868); 150 took gowalla's item-to-item recall@20 against exact from 0.945 to 0.893 ("Serving at the
    # served width").
    ivf_nprobe: int = Field(default=112, ge=1)
    ivf_dim: int = Field(default=256, ge=0)
    ivf_refine: int = Field(default=200, ge=1)
    # What the IVF lists hold: "pq4" (4-bit product-quantizer codes, one sub-quantizer per 4 components, scanned
    # with SIMD: 32 bytes an item at 256 components) or "flat" (the floats: 1 KB). The re-rank at the full width
    # makes up for the codes' error: bench.serving measures both.
    ivf_codes: Literal["pq4", "flat"] = "pq4"
    # Below this many items the base index is exact (flat); IVF pays off only on larger sets.
    ann_min_items: int = Field(default=20_000, ge=0)
    # Filters matching at most this many items are answered by exact search over just those items.
    exact_filter_max: int = Field(default=20_000, ge=0)
    compact_delta_max: int = Field(default=20_000, ge=1)
    compact_interval_s: float = Field(default=60.0, gt=0)

    # Snapshots and the delta stream.
    snapshot_dir: Path | None = Path("var/index")
    # False: load snapshots but never write them (the extra processes of a multi-process server).
    snapshot_writer: bool = True
    snapshot_interval_s: float = Field(default=300.0, gt=0)
    # How soon after a ForgetUser the snapshot on disk is rewritten without the user.
    forget_snapshot_s: float = Field(default=10.0, gt=0)
    redis_url: str | None = "redis://127.0.0.1:6379/0"
    # As the workers' (workers.redis_connect): a ``sentinel://`` URL needs the primary's name; ``redis_cluster``
    # makes ``redis_url`` any node of a Redis Cluster.
    redis_sentinel_master: str = ""
    redis_cluster: bool = False
    delta_stream: str = "ig:embeddings"
    # After stored events, a signal here wakes the workers' recompute scheduler at once (list, one entry).
    changed_key: str = "ig:changed"
    delta_block_ms: int = Field(default=200, ge=1)
    delta_batch: int = Field(default=1000, ge=1)

    # Negative feedback (server.feedback, docs/api.md): a hidden item's close neighbours are pushed down a
    # shopper's answer by re-ranking k + feedback_pool candidates by their cosine with the vectors of the
    # feedback_max_hidden most recently hidden items: above feedback_threshold, a candidate loses up to
    # feedback_strength of its score (all of it at 1.0). The hidden items themselves are always excluded.
    feedback_pool: int = Field(default=100, ge=0, le=1000)
    feedback_max_hidden: int = Field(default=20, ge=0, le=200)
    feedback_strength: float = Field(default=1.0, ge=0.0, le=2.0)
    feedback_threshold: float = Field(default=0.5, ge=0.0, lt=1.0)

    # Short-term interest (server.short_term, issue 16): the shopper's items within short_term_window_s of their
    # latest interaction (newest first, at most short_term_max_items, at least short_term_min_items, not their
    # whole history) get round(short_term_share * k) of the k slots of RecommendForUser / RecommendForSession.
    short_term_share: float = Field(default=0.3, ge=0.0, le=0.9)
    short_term_window_s: float = Field(default=1800.0, gt=0)
    short_term_min_items: int = Field(default=3, ge=1)
    short_term_max_items: int = Field(default=20, ge=1, le=500)

    # Caches.
    popular_ttl_s: float = Field(default=60.0, ge=0)
    popular_window_days: float = Field(default=7.0, gt=0)
    popular_pool: int = Field(default=2000, ge=1)
    catalog_refresh_s: float = Field(default=60.0, gt=0)
    user_cache_size: int = Field(default=200_000, ge=0)

    # How long a Neo4j call is retried before the RPC answers UNAVAILABLE. The driver's default (30 s) would hold
    # calls, and the threads running them, through a whole outage; clients retry with their own backoff.
    graph_retry_s: float = Field(default=3.0, ge=0)

    # Explanations (explain: true): what is read of the shopper, and when a fact becomes a reason. The shopper's
    # most recent items (and as many purchases) and searches bound the one batched read (graphdb.explain).
    explain_max_own_items: int = Field(default=50, ge=1)
    explain_max_queries: int = Field(default=10, ge=0)
    # "bought together by N shoppers" needs N at least this; "a category you often buy", this many purchases.
    explain_min_shoppers: int = Field(default=2, ge=1)
    explain_min_category_items: int = Field(default=2, ge=1)
    # Neo4j's limit on that read; past it the call answers UNAVAILABLE rather than hold its thread.
    explain_timeout_s: float = Field(default=2.0, gt=0)

    # Prometheus metrics (HTTP /metrics); 0 binds a free port.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)

    @model_validator(mode="after")
    def _threads_left_for_queries(self) -> ServerSettings:
        if self.stream_threads >= self.wait_threads:
            raise ValueError(
                f"IG_SERVER_STREAM_THREADS ({self.stream_threads}) must be below IG_SERVER_WAIT_THREADS "
                f"({self.wait_threads}): streams holding every thread would leave none for the calls "
                "waiting on Neo4j"
            )
        return self

    @model_validator(mode="after")
    def _boost_bounds(self) -> ServerSettings:
        if not self.boost_min <= 1.0 <= self.boost_max:
            raise ValueError(f"IG_SERVER_BOOST_MIN ({self.boost_min}) and IG_SERVER_BOOST_MAX ({self.boost_max}) must enclose 1")
        return self

    @field_validator("snapshot_dir", "redis_url", "tls_cert_file", "tls_key_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v  # IG_SERVER_SNAPSHOT_DIR= (empty) turns snapshots off

    @property
    def tokens(self) -> frozenset[str]:
        raw = self.auth_tokens.get_secret_value()
        return frozenset(t.strip() for t in raw.split(",") if t.strip())

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def loopback_only(self) -> bool:
        """Whether ``host`` is a loopback address (or ``localhost``), reachable from this machine only."""
        host = self.host.strip().strip("[]").lower()
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name or an unparsable address: assume it may be public
