"""Several serving processes on one port: one Python process answers RPCs on one core, so a machine with more
cores runs one per core behind SO_REUSEPORT (``IG_SERVER_PROCESSES``).

Each process is a full replica: it loads the snapshot, follows the delta stream and answers every RPC. The
kernel spreads client connections over them, so a client needs several connections (as a fleet of storefront
processes has) to use them all. Process 0 writes the snapshots; process i serves metrics on metrics_port + i.
The parent only supervises: it restarts a process that dies and passes SIGTERM/SIGINT on for a graceful stop,
and SIGHUP for a TLS certificate reload.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable

from server.settings import ServerSettings

log = logging.getLogger(__name__)


def process_count(settings: ServerSettings) -> int:
    return settings.processes or os.cpu_count() or 1


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])


def replica_settings(settings: ServerSettings, index: int, port: int) -> ServerSettings:
    metrics_port = settings.metrics_port + index if settings.metrics_port else 0
    return settings.model_copy(
        update={"port": port, "snapshot_writer": settings.snapshot_writer and index == 0, "metrics_port": metrics_port}
    )


def supervise(settings: ServerSettings, run: Callable[[ServerSettings], None]) -> int:
    """Runs ``run(replica settings)`` in ``process_count`` child processes until SIGTERM/SIGINT; exit code."""
    count = process_count(settings)
    port = settings.port or free_port(settings.host)  # every process must bind the same port
    ctx = multiprocessing.get_context("spawn")  # no inherited threads, drivers or event loops
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def start(i: int) -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=run, args=(replica_settings(settings, i, port),), name=f"server-{i}")
        proc.start()
        return proc

    procs = [start(i) for i in range(count)]

    def pass_on(signum: int, _frame: object) -> None:  # SIGHUP: each process reloads its TLS certificate
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGHUP, pass_on)
    log.info("%d serving processes on %s:%d (pids %s)", count, settings.host, port, [p.pid for p in procs])
    while not stop.wait(0.5):
        for i, proc in enumerate(procs):
            if not proc.is_alive() and not stop.is_set():
                log.error("serving process %d (pid %d) exited with %s; starting it again", i, proc.pid, proc.exitcode)
                procs[i] = start(i)
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.join(settings.grace_period_s + 30)
        if proc.is_alive():
            log.error("serving process %s did not stop; killing it", proc.pid)
            proc.kill()
            proc.join()
    return max((abs(p.exitcode or 0) for p in procs), default=0)
