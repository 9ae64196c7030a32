"""The operators' dashboard, drawn from a real run: freshness over time under load (docs/freshness-dashboard.png).

    python -m bench.dashboard [--rate 20] [--duration-s 75] [--dataset gowalla] [--limit 100000] --out PNG

Runs what ``bench.freshness`` runs (Neo4j, Redis, a Celery worker, the scheduler and the gRPC server; the dataset
loaded, the served model trained and rolled out; a client streaming events through ``IngestEvents``) and scrapes
the server's and the worker's ``/metrics`` every second meanwhile: the series the Grafana dashboard plots
(``ig_freshness_seconds``, ``ig_ingest_events_total``, ``ig_worker_marks_waiting``,
``ig_worker_oldest_mark_age_seconds``), with the client's own measure (acknowledgement -> vector on the stream)
as dots for comparison. Quantiles are read from the histogram buckets as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import typer
from prometheus_client.parser import text_string_to_metric_families

from bench._common import emit_result
from bench._stack import log, pipeline, start_scheduler
from bench._stream_watch import StreamWatch
from bench.freshness import send, stream_inputs
from graphdb.pseudonym import pseudonymise
from workers import process

WINDOW_S = 10  # quantiles and rates over the last 10 scrapes, as a dashboard's rate interval would
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def _server_metrics_port(log_file: Path, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.findall(rb"metrics on http://[^:]+:(\d+)/metrics", log_file.read_bytes())
        if found:
            return int(found[-1])
        time.sleep(0.1)
    raise SystemExit(f"no metrics port in {log_file}")


class Scraper(threading.Thread):
    """Scrapes both endpoints every second: [(unix time, server samples, worker samples)]."""

    def __init__(self, server_port: int, worker_port: int) -> None:
        super().__init__(daemon=True)
        self.ports = (server_port, worker_port)
        self.series: list[tuple[float, Samples, Samples]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(max(0.0, 1.0 - time.time() % 1.0)):
            try:
                self.series.append((time.time(), _scrape(self.ports[0]), _scrape(self.ports[1])))
            except OSError as exc:  # a slow scrape on a busy machine: a gap in the plot, not the end of it
                log(f"scrape failed: {exc}")


def _buckets(s: Samples) -> list[tuple[float, float]]:
    return sorted((float(dict(lab)["le"]), v) for (name, lab), v in s.items() if name == "ig_freshness_seconds_bucket")


def histogram_quantile(q: float, newer: Samples, older: Samples) -> float | None:
    """Prometheus' estimate from the bucket increases between two scrapes (linear within a bucket)."""
    old = dict(_buckets(older))
    inc = [(le, v - old.get(le, 0.0)) for le, v in _buckets(newer)]
    total = inc[-1][1] if inc else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in inc:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = le, count
    return lower


def plot(
    series: list[tuple[float, Samples, Samples]], dots: list[tuple[float, float]], t0: float, out: Path, title: str
) -> dict[str, float | None]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accepted = ("ig_ingest_events_total", (("outcome", "accepted"),))
    t, p50, p99, rate, waiting, oldest = [], [], [], [], [], []
    for i in range(WINDOW_S, len(series)):
        (now, srv, wrk), (then, old, _) = series[i], series[i - WINDOW_S]
        t.append(now - t0)
        p50.append(histogram_quantile(0.5, srv, old))
        p99.append(histogram_quantile(0.99, srv, old))
        rate.append((srv.get(accepted, 0.0) - old.get(accepted, 0.0)) / (now - then))
        waiting.append(wrk.get(("ig_worker_marks_waiting", ())))
        oldest.append(wrk.get(("ig_worker_oldest_mark_age_seconds", ())))
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True, dpi=90)
    ax1.scatter(
        [a - t0 for a, _ in dots], [d for _, d in dots], s=4, color="0.7", label="per event, client: ack -> vector on the stream"
    )
    ax1.plot(t, [float("nan") if v is None else v for v in p50], label="p50 served (ig_freshness_seconds, 10 s)")
    ax1.plot(t, [float("nan") if v is None else v for v in p99], label="p99 served (ig_freshness_seconds, 10 s)")
    ax1.set_ylabel("freshness (s)")
    highest = max([v for v in p99 if v is not None] + [d for _, d in dots] + [0.1])
    ax1.set_ylim(0, highest * 1.1)
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title(title, fontsize=10)
    ax2.plot(t, rate, color="tab:green")
    ax2.set_ylabel("events accepted / s")
    ax3.plot(t, waiting, color="tab:purple", label="marks waiting")
    ax3.set_ylabel("marks waiting")
    ax3b = ax3.twinx()
    ax3b.plot(t, oldest, color="tab:red", label="oldest mark's age (s)")
    ax3b.set_ylabel("oldest mark's age (s)")
    ax3.set_xlabel("seconds into the run")
    lines = ax3.get_legend_handles_labels()[0] + ax3b.get_legend_handles_labels()[0]
    ax3.legend(lines, [str(line.get_label()) for line in lines], loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    first, last = series[0][1], series[-1][1]
    return {"p50_s": histogram_quantile(0.5, last, first), "p99_s": histogram_quantile(0.99, last, first)}


def main(
    out: Path = typer.Option(..., help="the PNG to write"),
    rate: float = typer.Option(20.0, help="events per second"),
    duration_s: float = typer.Option(75.0, help="how long the stream runs"),
    dataset: str = typer.Option("gowalla"),
    limit: int = typer.Option(100_000, help="load only this many events"),
    var: Path = typer.Option(None, help="keep data and logs here (default: a temporary directory)"),
) -> None:
    with (
        contextlib.nullcontext(str(var)) if var else tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp,
        pipeline(Path(tmp), dataset=dataset, limit=limit, server=True) as p,
    ):
        key = p.graph.pseudonym_key.get_secret_value()
        needed = int(rate * duration_s) + 1
        items, external = stream_inputs(p, dataset, key, needed)
        scheduler = start_scheduler(p)
        watch = StreamWatch(p.redis_url, p.env.get("IG_WORKER_DELTA_STREAM", "ig:embeddings"))
        scraper = Scraper(_server_metrics_port(p.var / "server.log"), process.metrics_port(p.var / "worker.log"))
        watch.start()
        scraper.start()
        try:
            t0 = time.time()
            time.sleep(WINDOW_S + 2)  # a quiet baseline before the load (the plot's first window)
            log(f"streaming {rate:g} events/s for {duration_s:g}s, scraping /metrics every second")
            acks = asyncio.run(send(p.server_port, external[:needed], items, rate, duration_s, seed=2))
            pseudo = {u: pseudonymise(key, u) for u, _ in acks}
            deadline = time.time() + 60
            while time.time() < deadline and not all(pseudo[u] in watch.seen for u, _ in acks):
                time.sleep(0.2)
            time.sleep(WINDOW_S + 2)  # the tail: backlog drained, quantiles of the last window
        finally:
            scraper.stop.set()
            watch.stop.set()
            scraper.join(5)
            process.stop(scheduler)
        dots = [(at, watch.seen[pseudo[u]] - at) for u, at in acks if pseudo[u] in watch.seen]
        title = (
            f"bench.dashboard: {dataset} ({limit:,} events loaded), {len(acks) / duration_s:.0f} events/s "
            f"through IngestEvents for {duration_s:g} s; 2-core CPU, {time.strftime('%Y-%m-%d')}"
        )
        quantiles = plot(scraper.series, dots, t0, out, title)
        result = {
            "bench": "dashboard",
            "dataset": dataset,
            "events": len(acks),
            "rate": round(len(acks) / duration_s, 1),
            "scrapes": len(scraper.series),
            "served_freshness_p50_s": quantiles["p50_s"],
            "served_freshness_p99_s": quantiles["p99_s"],
            "missing": len(acks) - len(dots),
            "png": str(out),
            "png_bytes": out.stat().st_size,
        }
    emit_result(result, None)


if __name__ == "__main__":
    typer.run(main)
