"""Prometheus metrics of one server: RPCs, index state, model version, delta-stream freshness, ingestion.

Every server has its own ``CollectorRegistry`` (never the process-global one), so several servers in one process
(tests, benchmarks) keep separate figures. ``observe`` counts and times every unary-response RPC (health checks
and unauthenticated calls included, unknown methods not; ``server.calls`` applies it); the state of the index,
the model version and the stream position are read when Prometheus scrapes, so they cost nothing between
scrapes. The HTTP endpoint (``/metrics``) runs in its own thread, started by ``start_http``.

Names follow the usual gRPC conventions (``grpc_server_handled_total{grpc_service, grpc_method, grpc_code}``,
``grpc_server_handling_seconds``) so standard dashboards work; the rest is prefixed ``ig_``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

log = logging.getLogger(__name__)

# Index searches take well under a millisecond, ingestion batches up to seconds.
# Freshness (a change written -> its vector served) runs from a fraction of a second to minutes under backlog.
FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _split(method: str) -> tuple[str, str]:
    """``/interest.v1.InterestService/SimilarItems`` -> (``interest.v1.InterestService``, ``SimilarItems``)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code_name(code: Any) -> str | None:
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for status in grpc.StatusCode:  # a context may report the raw integer
        if status.value[0] == code:
            return str(status.name)
    return str(code)


class ServerMetrics:
    """The metrics of one server and its engine (and, once ``follow`` is called, its delta consumer)."""

    def __init__(self, engine: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.lifecycle: Any = None
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        # Registered before ``handled``, so a scrape folds the front end's own counts in before reading it.
        self._native = _NativeCounts(self)
        self.registry.register(self._native)
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed, by method and status code",
            ("grpc_service", "grpc_method", "grpc_code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "RPC handling time, by method",
            ("grpc_service", "grpc_method"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ingested = Counter(
            "ig_ingest_events", "Events received through IngestEvents, by outcome", ("outcome",), registry=self.registry
        )
        for outcome in ("accepted", "duplicate", "rejected"):
            self.ingested.labels(outcome)  # present (0) before the first ingestion
        # Calls refused by the token check, by method and reason (server.auth.REASONS); the token is never a label.
        self.auth_failures = Counter(
            "ig_auth_failures",
            "Calls refused for authentication, by method and reason",
            ("grpc_service", "grpc_method", "reason"),
            registry=self.registry,
        )
        self.freshness = Histogram(
            "ig_freshness_seconds",
            "From a change's mark (written with the event) to its vector served here",
            buckets=FRESHNESS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        engine.on_ingest.append(self.count_ingest)

    # -- hooks ---------------------------------------------------------------------------------------------
    def follow(self, lifecycle: Any) -> None:
        """Report the delta stream of this lifecycle (its consumer exists once the lifecycle has started)."""
        self.lifecycle = lifecycle

    def count_native(self, method: str, counts: Callable[[], list[tuple[int, int]]]) -> None:
        """Counts ``method``'s calls answered by the native front end without Python (health Check): ``counts``
        gives (status code, calls so far) and is read at scrape time; they count in grpc_server_handled_total."""
        self._native.sources.append((method, counts))

    def count_ingest(self, received: int, result: Any) -> None:
        self.ingested.labels("accepted").inc(result.accepted)
        self.ingested.labels("duplicate").inc(result.duplicates)
        self.ingested.labels("rejected").inc(len(result.rejected))

    def count_auth_failure(self, method: str, reason: str) -> None:
        service, name = _split(method)
        self.auth_failures.labels(service, name, reason).inc()

    def served_change(self, changed_at: float) -> None:
        """A vector answering a change marked at ``changed_at`` (unix s) is now served (delta applied)."""
        if changed_at > 0:
            self.freshness.observe(max(0.0, self.clock() - changed_at))

    def observe(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        service, name = _split(method)
        latency = self.latency.labels(service, name)
        by_code: dict[str, Any] = {}  # the labelled child per status code: no label lookup per call

        def count(code: str) -> None:
            child = by_code.get(code)
            if child is None:
                child = by_code[code] = self.handled.labels(service, name, code)
            child.inc()

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "UNKNOWN"
            try:
                response = behaviour(request, context)
                code = _code_name(context.code()) or "OK"
                return response
            except grpc.RpcError:  # the call ended under the handler: cancelled, unless past its deadline
                code = "CANCELLED"
                raise
            except Exception:  # context.abort raises a bare Exception once the status is set
                code = _code_name(context.code()) or "UNKNOWN"
                raise
            finally:
                # Past the deadline the client gets DEADLINE_EXCEEDED whatever the handler did (its request
                # stream just ends, its answer or abort is refused).
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    code = "DEADLINE_EXCEEDED"
                latency.observe(time.perf_counter() - started)
                count(code)

        return observed

    # -- exposition ----------------------------------------------------------------------------------------
    def start_http(self, host: str, port: int) -> int:
        """Serves ``/metrics`` on ``host:port`` (0 = a free port) in a thread; returns the bound port."""
        if self._http is not None:
            raise RuntimeError("the metrics endpoint is already running")
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._http.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop_http(self) -> None:
        if self._http is None:
            return
        self._http.shutdown()
        self._http.server_close()
        if self._http_thread is not None:
            self._http_thread.join(5.0)
        self._http = self._http_thread = None


class _NativeCounts:
    """Folds the native front end's own call counts into ``grpc_server_handled_total`` at scrape time (it
    exports nothing itself)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.sources: list[tuple[str, Callable[[], list[tuple[int, int]]]]] = []
        self._seen: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()  # scrapes may overlap

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            for method, counts in self.sources:
                service, name = _split(method)
                for code, n in counts():
                    before = self._seen.get((method, code), 0)
                    if n > before:
                        self.metrics.handled.labels(service, name, _CODE_NAMES.get(code, "UNKNOWN")).inc(n - before)
                        self._seen[(method, code)] = n
        return iter(())


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class _StateCollector:
    """Reads the serving state at scrape time (from the HTTP thread: single attribute reads only)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        engine = self.metrics.engine
        now = self.metrics.clock()
        serving = engine.serving
        yield GaugeMetricFamily(
            "ig_ready", "1 when the index is loaded and the server answers queries", value=1.0 if serving is not None else 0.0
        )
        if serving is not None:
            index = serving.index
            yield GaugeMetricFamily("ig_index_items", "Live item vectors in the serving index", value=len(index))
            yield GaugeMetricFamily("ig_index_user_vectors", "User vectors cached in memory", value=len(serving.users))
            yield GaugeMetricFamily("ig_index_delta_rows", "Rows in the exact delta (folded in by compaction)", value=index.delta_rows)
            yield GaugeMetricFamily("ig_index_tombstones", "Dead base-index copies awaiting compaction", value=index.tombstones)
            yield InfoMetricFamily(
                "ig_model", "The model version the server answers with", value={"model_version": index.model_version}
            )
        lifecycle = self.metrics.lifecycle
        consumer = getattr(lifecycle, "consumer", None)
        if lifecycle is not None:
            yield CounterMetricFamily(
                "ig_delta_stale", "Deltas dropped for being of another model version", value=lifecycle.stale_deltas
            )
        if consumer is not None:
            yield CounterMetricFamily("ig_delta_applied", "Deltas read from the stream and applied", value=consumer.applied)
            yield CounterMetricFamily(
                "ig_delta_malformed", "Stream entries that could not be decoded (skipped)", value=consumer.malformed
            )
            if consumer.last_delta_ts > 0:
                yield GaugeMetricFamily(
                    "ig_delta_last_ts_seconds", "ts (unix s) of the last applied delta", value=consumer.last_delta_ts
                )
                yield GaugeMetricFamily(
                    "ig_delta_freshness_lag_seconds",
                    "Now minus the ts of the last applied delta (grows when idle too)",
                    value=max(0.0, now - consumer.last_delta_ts),
                )
            if consumer.caught_up_at > 0:
                yield GaugeMetricFamily(
                    "ig_delta_stream_lag_seconds",
                    "Seconds since the consumer last reached the tail of the stream",
                    value=max(0.0, now - consumer.caught_up_at),
                )
