"""The gRPC server: ``create_server`` wires services, interceptors and limits (tests bind port 0); ``serve`` runs it
with its backing services until SIGTERM/SIGINT, then shuts down gracefully.

By default the native front end (``server.front``, Rust) owns the port, with TLS when configured (reloaded on
SIGHUP): it answers the unary InterestService calls with the same wrapped behaviours and forwards the rest to
grpc's server on a loopback port. On grpc's server alone (``IG_SERVER_FRONT=grpc``), RPCs run on worker threads
(grpc's synchronous server; queries and calls that may wait on separate pools, ``server.pools``). The lifecycle
(delta stream, compaction, snapshots) runs on an asyncio event loop in the main thread. Measured on two cores,
``SimilarItems`` costs ~30 % less server CPU per call on grpc's synchronous server than on ``grpc.aio``: the
asyncio server hands every call between grpc's poller thread and the event loop, 8-10 voluntary and 8 involuntary
context switches per call against 5 and 1.5, and FAISS (which releases the GIL) overlaps with other calls' Python
work (bench.serving).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Callable, Iterable

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

from graphdb.driver import connect
from graphdb.errors import FailedPrecondition
from graphdb.settings import DEV_PSEUDONYM_KEY, GraphSettings, Neo4jSettings
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server import front
from server.calls import CallInterceptor
from server.delta import connect_redis
from server.engine import Engine
from server.lifecycle import Lifecycle
from server.metrics import ServerMetrics
from server.pools import RpcPools
from server.service import InterestServicer
from server.settings import ServerSettings

log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InterestService"].full_name


def check_exposure(settings: ServerSettings) -> None:
    """Refuses to listen beyond loopback without bearer tokens, unless explicitly allowed."""
    if settings.tokens or settings.loopback_only or settings.allow_insecure_public:
        return
    raise FailedPrecondition(
        f"refusing to listen on {settings.host}:{settings.port} without authentication: anyone who can reach it "
        "could read recommendations, ingest events and forget users. Set IG_SERVER_AUTH_TOKENS, listen on "
        "127.0.0.1, or set IG_SERVER_ALLOW_INSECURE_PUBLIC=true if something in front authenticates callers"
    )


def check_pseudonym_key(settings: ServerSettings, graph: GraphSettings) -> None:
    """Refuses to listen beyond loopback with the development pseudonym key: its hashes are public knowledge, so
    the graph's user ids would be reversible by anyone with a list of candidate ids. No setting allows it."""
    if settings.loopback_only or graph.pseudonym_key.get_secret_value() != DEV_PSEUDONYM_KEY:
        return
    raise FailedPrecondition(
        f"refusing to listen on {settings.host}:{settings.port} with the development pseudonym key: user ids "
        "hashed with a published key can be reversed. Set IG_PSEUDONYM_KEY to a secret, or listen on 127.0.0.1"
    )


def use_native_front(settings: ServerSettings) -> bool:
    if settings.front == "grpc":
        return False
    return settings.front == "native" or front.available()


def tls_pems(settings: ServerSettings) -> tuple[bytes, bytes] | None:
    """The configured certificate chain and key (PEM), read now: at start and on each SIGHUP."""
    if not settings.tls:
        return None
    assert settings.tls_key_file is not None and settings.tls_cert_file is not None  # what tls means
    return settings.tls_cert_file.read_bytes(), settings.tls_key_file.read_bytes()


def reload_tls(server: Any, settings: ServerSettings) -> None:
    """SIGHUP: the native front end presents the certificate now in the configured files from the next
    handshake on; grpc's server cannot swap its credentials, so there it takes a restart."""
    if not settings.tls:
        return
    if not isinstance(server, front.FrontedServer):
        log.warning("SIGHUP: grpc's server keeps its TLS certificate until restarted (IG_SERVER_FRONT=native reloads it)")
        return
    try:
        pems = tls_pems(settings)
        assert pems is not None
        server.reload_tls(*pems)
    except (OSError, ValueError) as exc:
        log.error("SIGHUP: TLS certificate not reloaded, the current one stays: %s", exc)
        return
    log.info("SIGHUP: TLS certificate reloaded from %s", settings.tls_cert_file)


class _Registered:
    """Collects the generic handlers a generated ``add_*Servicer_to_server`` registers."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        pass


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]  # grpc is untyped (Any)
    def __init__(self, method: str) -> None:
        self.method, self.invocation_metadata = method, ()


def unary_handlers(servicer: InterestServicer) -> list[tuple[str, grpc.RpcMethodHandler]]:
    """(full name, handler) of the InterestService methods with one request and one response."""
    registered = _Registered()
    pb_grpc.add_InterestServiceServicer_to_server(servicer, registered)
    out = []
    for method in pb.DESCRIPTOR.services_by_name["InterestService"].methods:
        if method.client_streaming or method.server_streaming:
            continue
        name = f"/{SERVICE_NAME}/{method.name}"
        handler = next(h for h in (g.service(_Details(name)) for g in registered.generic) if h is not None)
        out.append((name, handler))
    return out


def create_server(settings: ServerSettings, engine: Engine, graph: GraphSettings) -> tuple[Any, int]:
    """A configured, not yet started server (``grpc.Server``, or ``server.front.FrontedServer`` when the native
    front end owns the port: the same start and stop) and the port it is bound to. Call it on the event loop the
    lifecycle runs on: RPCs hand their asynchronous work (callbacks, Redis) to that loop.

    Its metrics (own registry) are ``engine.metrics``; ``engine.metrics.start_http(host, port)`` exposes them.
    """
    check_exposure(settings)
    check_pseudonym_key(settings, graph)
    native = use_native_front(settings)
    engine.loop = asyncio.get_running_loop()
    engine.metrics = ServerMetrics(engine)
    waiting = frozenset(f"/{SERVICE_NAME}/{name}" for name in InterestServicer.WAITING)
    service = pb.DESCRIPTOR.services_by_name["InterestService"]
    waiting_if = {
        f"/{SERVICE_NAME}/{name}": service.methods_by_name[name].input_type.fields_by_name[flag].number
        for name, flag in InterestServicer.WAITING_IF.items()
    }
    interceptor = CallInterceptor(engine.metrics, settings.tokens, settings.stream_threads, waiting)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Several processes share the port only when configured to; otherwise a second server on the same
        # port must fail to bind rather than silently take half the connections. Behind the native front end,
        # grpc's server listens on a private loopback port.
        ("grpc.so_reuseport", 1 if settings.processes != 1 and not native else 0),
    ]
    server = grpc.server(
        RpcPools(settings.rpc_threads, settings.wait_threads),
        interceptors=[interceptor],
        options=options,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    servicer = InterestServicer(engine, settings, graph)
    pb_grpc.add_InterestServiceServicer_to_server(servicer, server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    # Where health statuses go: grpc's servicer (Watch, and Check behind grpc's front) and, once it exists, the
    # native front end on tonic, which answers Check itself, without Python (no stall during a model switch).
    health_sinks: list[Callable[[str, int], None]] = [health_servicer.set]

    def set_health(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            for sink in health_sinks:
                sink(name, status)

    async def on_ready(serving: bool) -> None:
        set_health(serving)

    engine.on_ready.append(on_ready)
    set_health(engine.ready)  # NOT_SERVING until the index is loaded

    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )

    if native:
        backend_port = server.add_insecure_port("127.0.0.1:0")
        if backend_port == 0:
            raise OSError("could not bind a loopback port for grpc's server")
        methods = [
            (name, interceptor.wrapped(name, handler), name in waiting, waiting_if.get(name, 0))
            for name, handler in unary_handlers(servicer)
        ]
        fronted = front.native_front(
            settings.host,
            settings.port,
            settings.processes != 1,
            backend_port,
            methods,
            wait_threads=settings.wait_threads,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            max_message_bytes=settings.max_message_bytes,
            io_threads=settings.io_threads,
            tls=tls_pems(settings),
            http2=front.Http2Limits(
                settings.h2_max_concurrent_streams,
                settings.h2_max_header_list_bytes,
                settings.h2_keepalive_interval_s,
                settings.h2_keepalive_timeout_s,
                settings.h2_max_pending_accept_reset_streams,
                settings.h2_max_local_error_reset_streams,
            ),
        )
        health_sinks.append(fronted.set_health)
        set_health(engine.ready)
        engine.metrics.count_native("/grpc.health.v1.Health/Check", lambda: fronted.health_checks)
        return front.FrontedServer(server, fronted), fronted.port

    address = f"{settings.host}:{settings.port}"
    if settings.tls:
        assert settings.tls_key_file is not None and settings.tls_cert_file is not None  # what tls means
        creds = grpc.ssl_server_credentials([(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port


async def serve(settings: ServerSettings, graph: GraphSettings, neo4j_settings: Neo4jSettings) -> None:
    check_exposure(settings)  # before connecting anywhere: a misconfiguration fails at once
    check_pseudonym_key(settings, graph)
    driver = connect(neo4j_settings, max_retry_s=settings.graph_retry_s)
    redis = (
        connect_redis(
            settings.redis_url, settings.delta_block_ms, sentinel_master=settings.redis_sentinel_master, cluster=settings.redis_cluster
        )
        if settings.redis_url
        else None
    )
    engine = Engine(settings, graph, driver, neo4j_settings.database)
    lifecycle = Lifecycle(engine, redis)
    server, port = create_server(settings, engine, graph)
    engine.metrics.follow(lifecycle)
    try:
        engine.metrics.start_http(settings.metrics_host, settings.metrics_port)
    except OSError as exc:  # serving matters more than its figures
        log.error("metrics endpoint %s:%d not started: %s", settings.metrics_host, settings.metrics_port, exc)
    server.start()
    if isinstance(server, front.FrontedServer):
        log.info(
            "listening on %s:%d (native front end, %s), %d I/O threads answering queries, %d for calls that wait",
            settings.host,
            port,
            "TLS" if settings.tls else "plaintext",
            settings.io_threads,
            settings.wait_threads,
        )
    else:
        log.info(
            "listening on %s:%d (grpc's server, %s), %d query threads, %d for calls that wait",
            settings.host,
            port,
            "TLS" if settings.tls else "plaintext",
            settings.rpc_threads,
            settings.wait_threads,
        )
    loading = asyncio.create_task(lifecycle.start())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_tls, server, settings)
    await stop.wait()

    log.info("shutting down: draining RPCs for up to %.0fs", settings.grace_period_s)
    await engine.notify_ready(False)
    # Draining RPCs may still need the loop (ForgetUser publishes on it): wait in a thread.
    await asyncio.to_thread(lambda: server.stop(settings.grace_period_s).wait())
    loading.cancel()
    await asyncio.gather(loading, return_exceptions=True)
    await lifecycle.stop(snapshot=True)
    await asyncio.to_thread(engine.metrics.stop_http)
    if redis is not None:
        await redis.aclose()
    driver.close()
    log.info("stopped")


def run_process(settings: ServerSettings) -> None:
    """One serving process until SIGTERM/SIGINT (``python -m server``, or each child of a multi-process one)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # One query at a time per search call: OpenMP fan-out only adds latency to single-vector searches, and
    # numpy's OpenBLAS threads fighting faiss's OpenMP threads make a 20k x 64 product 50x slower (measured).
    faiss.omp_set_num_threads(1)
    threadpool_limits(1)
    asyncio.run(serve(settings, GraphSettings(), Neo4jSettings()))
