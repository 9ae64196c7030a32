"""The local stack without Docker: our embedded Neo4j launcher and a loopback ``redis-server``.

``up()`` starts what is not running yet and waits until Neo4j answers Bolt and Redis answers PING;
``down()`` stops both with SIGTERM (Neo4j shuts down cleanly) and waits. The test suite uses the same
functions with its own directory and free ports. Production uses docker-compose.yml instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from graphdb.errors import FailedPrecondition, Unavailable
from graphdb.settings import LocalStackSettings

LAUNCHER_DIR = Path(__file__).resolve().parent / "neo4j_launcher"
# The classpath names jars in ~/.m2, so it belongs to the machine, next to that cache, not to one checkout.
CLASSPATH_CACHE_DIR = Path.home() / ".cache" / "interest-graph"


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        """The pid of the running process, or None if it is not running."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        # A zombie child still "exists" for kill(0); treat it as gone.
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            if state == "Z":
                return None
        except (FileNotFoundError, IndexError):
            return None
        return pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _services(settings: LocalStackSettings) -> tuple[Service, Service]:
    run = settings.var_dir / "run"
    logs = settings.var_dir / "log"
    return (
        Service("neo4j", settings.neo4j_port, run / "neo4j.pid", logs / "neo4j.log"),
        Service("redis", settings.redis_port, run / "redis.pid", logs / "redis.log"),
    )


def neo4j_classpath(settings: LocalStackSettings) -> str:
    """Classpath of the Neo4j jars, resolved by Maven once (jars cached in ~/.m2) and remembered per machine,
    so every stack (the project's, the tests', a benchmark's) shares it whatever its ``var_dir``."""
    browser = settings.neo4j_browser_version if settings.neo4j_http_port else None
    suffix = f"-browser-{browser}" if browser else ""
    cache = CLASSPATH_CACHE_DIR / f"neo4j-classpath-{settings.neo4j_version}{suffix}.txt"
    if cache.exists() and cache.stat().st_size > 0:
        return cache.read_text().strip()
    if shutil.which("mvn") is None:
        raise FailedPrecondition("Maven (mvn) is needed once to fetch the Neo4j jars; install it (apt-get install maven)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(LAUNCHER_DIR / "pom.xml"),
        f"-Dneo4j.version={settings.neo4j_version}",
        # activates the pom's browser profile
        *([f"-Dneo4j.browser.version={browser}"] if browser else []),
        "dependency:build-classpath",
        f"-Dmdep.outputFile={cache.resolve()}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not cache.exists():
        cache.unlink(missing_ok=True)
        what = f"Neo4j {settings.neo4j_version}" + (f" with Neo4j Browser {browser}" if browser else "")
        raise Unavailable(f"Maven could not resolve {what}: {proc.stdout[-800:]}{proc.stderr[-800:]}")
    return cache.read_text().strip()


def _java(settings: LocalStackSettings) -> str:
    if settings.java_home is not None:
        return str(settings.java_home / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise FailedPrecondition("Java 17+ is needed for the local Neo4j (apt-get install openjdk-17-jre-headless)")
    return java


def _spawn(service: Service, cmd: list[str]) -> subprocess.Popen[bytes]:
    service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    service.log_file.parent.mkdir(parents=True, exist_ok=True)
    log = open(service.log_file, "ab")
    # Own session: the service outlives the command that started it and ignores its Ctrl-C.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    service.pid_file.write_text(str(proc.pid))
    return proc


def _wait(service: Service, proc: subprocess.Popen[bytes] | None, ready: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = service.log_file.read_text(errors="replace")[-2000:] if service.log_file.exists() else ""
            raise Unavailable(f"{service.name} exited with code {proc.returncode} during start-up:\n{tail}")
        if ready():
            return
        time.sleep(0.2)
    raise Unavailable(f"{service.name} did not answer on 127.0.0.1:{service.port} within {timeout_s:.0f} s (log: {service.log_file})")


def _redis_ready(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def start_neo4j(settings: LocalStackSettings) -> Service:
    service = _services(settings)[0]
    http = settings.neo4j_http_port
    if service.pid() is not None and port_open(service.port):
        if http and not port_open(http):
            raise FailedPrecondition(
                f"Neo4j runs without HTTP on port {http}; restart the stack (`interest stack down`, then up) to serve Neo4j Browser"
            )
        return service
    if port_open(service.port):
        raise FailedPrecondition(f"port {service.port} is taken by another process; set IG_STACK_NEO4J_PORT")
    if http and port_open(http):
        raise FailedPrecondition(f"port {http} is taken by another process; set IG_STACK_NEO4J_HTTP_PORT")
    home = (settings.var_dir / "neo4j" / "data").resolve()
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        _java(settings),
        f"-Xms{settings.neo4j_heap_mb}m",
        f"-Xmx{settings.neo4j_heap_mb}m",
        "-XX:+UseG1GC",
        "-XX:+ExitOnOutOfMemoryError",
        "-cp",
        neo4j_classpath(settings),
        str(LAUNCHER_DIR / "Launcher.java"),
        "--home",
        str(home),
        "--port",
        str(service.port),
        "--pagecache-mb",
        str(settings.neo4j_pagecache_mb),
        "--tx-memory-mb",
        str(settings.neo4j_tx_memory_mb),
        "--http-port",
        str(http),
    ]
    proc = _spawn(service, cmd)
    _wait(service, proc, lambda: _neo4j_ready(service, http), settings.start_timeout_s)
    return service


def browser_url(settings: LocalStackSettings) -> str | None:
    """Where the local stack serves Neo4j Browser, or None when its HTTP connector is off."""
    return f"http://127.0.0.1:{settings.neo4j_http_port}/browser/" if settings.neo4j_http_port else None


def _neo4j_ready(service: Service, http_port: int) -> bool:
    # The launcher prints READY once the default database answers queries (and the web server is started).
    if not service.log_file.exists():
        return False
    with open(service.log_file, "rb") as f:
        f.seek(max(0, service.log_file.stat().st_size - 4096))
        tail = f.read().decode(errors="replace")
    ready = f"READY {service.port} http {http_port}" if http_port else f"READY {service.port}"
    return ready in tail and port_open(service.port) and (not http_port or port_open(http_port))


def start_redis(settings: LocalStackSettings) -> Service:
    service = _services(settings)[1]
    if service.pid() is not None and _redis_ready(service.port):
        return service
    if port_open(service.port):
        raise FailedPrecondition(f"port {service.port} is taken by another process; set IG_STACK_REDIS_PORT")
    server = shutil.which("redis-server")
    if server is None:
        raise FailedPrecondition("redis-server is needed for the local stack (apt-get install redis-server)")
    data = (settings.var_dir / "redis").resolve()
    data.mkdir(parents=True, exist_ok=True)
    cmd = [
        server,
        "--bind",
        "127.0.0.1",
        "--port",
        str(service.port),
        "--dir",
        str(data),
        # The broker and the delta stream must survive a restart: append-only file, fsync every second.
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]
    proc = _spawn(service, cmd)
    _wait(service, proc, lambda: _redis_ready(service.port), settings.start_timeout_s)
    return service


def up(settings: LocalStackSettings) -> dict[str, Service]:
    """Start Neo4j and Redis unless they run already; returns them once both answer."""
    redis_service = start_redis(settings)
    neo4j_service = start_neo4j(settings)
    return {"neo4j": neo4j_service, "redis": redis_service}


def stop_service(service: Service, timeout_s: float = 60.0) -> bool:
    """SIGTERM and wait; SIGKILL only if it does not exit in time. Returns whether it was running."""
    pid = service.pid()
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while service.pid() is not None and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if service.pid() is not None:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
    service.pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def down(settings: LocalStackSettings) -> dict[str, bool]:
    neo4j_service, redis_service = _services(settings)
    return {"neo4j": stop_service(neo4j_service), "redis": stop_service(redis_service)}


def status(settings: LocalStackSettings) -> dict[str, dict[str, Any]]:
    out = {}
    for service in _services(settings):
        pid = service.pid()
        out[service.name] = {"running": pid is not None and port_open(service.port), "pid": pid, "port": service.port}
    return out
