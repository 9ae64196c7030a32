"""The server side of ``bench.serving``: a real gRPC server process loading an index snapshot.

Run by the benchmark as ``python -m bench._serving_server SNAPSHOT_DIR REDIS_URL STREAM N_CATEGORIES NPROBE
[PORT PROCESSES]``, or as one of the peers measured in the same run: ``... echo`` (a bare echo server) and
``... floor SNAPSHOT_DIR NPROBE PORT PROCESSES`` (the least a Python gRPC server can do per call). With
PROCESSES > 1 the benchmark starts that many on one PORT (SO_REUSEPORT, as ``IG_SERVER_PROCESSES`` does). Each
prints ``PORT <n>`` once it serves and stops on SIGTERM. No Neo4j: the index comes from the snapshot, updates
from the Redis delta stream, and the synthetic facets (item j is in category ``c{j % N}``, its direct one, and brand
``b{j % 7}``) are rebuilt here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from graphdb.catalog import ItemFacets
from graphdb.model_state import UserSideCard
from graphdb.settings import GraphSettings
from server.app import create_server
from server.delta import connect_redis
from server.engine import Engine
from server.lifecycle import Lifecycle
from server.settings import ServerSettings


def bench_card(version: str, dim: int) -> UserSideCard:
    """The user side sessions are embedded with (no Neo4j here to hold the version's card): a filter of positive
    signs, as spectral filters have, the served neighbour cap and half-life, recency weights on."""
    return UserSideCard(version, np.ones(dim, np.float32), 500, GraphSettings().half_life_days, 30.0, 2.0)


async def main(
    snapshot_dir: Path, redis_url: str, stream: str, n_categories: int, nprobe: int, port: int = 0, processes: int = 1
) -> None:
    faiss.omp_set_num_threads(1)
    threadpool_limits(1)  # as python -m server does: no BLAS/OpenMP thread fights
    settings = ServerSettings(
        port=port,
        processes=processes,
        snapshot_writer=False,
        snapshot_dir=snapshot_dir,
        redis_url=redis_url,
        delta_stream=stream,
        snapshot_interval_s=1e9,
        compact_interval_s=1e9,
        delta_block_ms=1000,
        ivf_nprobe=nprobe,
        max_concurrent_rpcs=1000,
    )
    engine = Engine(settings, GraphSettings(), None)  # the width: IG_EMBEDDING_DIM, set by bench.serving
    redis = connect_redis(redis_url, settings.delta_block_ms)
    lifecycle = Lifecycle(engine, redis)
    await lifecycle.start()
    if engine.serving is not None:
        engine.add_card(bench_card(engine.serving.index.model_version, engine.dim))
    ids = engine.labels.ids()
    if n_categories:
        engine.facets.update(
            ItemFacets(item_id, (f"c{j % n_categories}",), (f"b{j % 7}",), (f"c{j % n_categories}",))
            for item_id, j in ((i, int(i[1:])) for i in ids if i.startswith("i"))
        )
    server, port = create_server(settings, engine, engine.graph)
    await serve_until_sigterm(server, port, grace_s=1.0)
    await lifecycle.stop(snapshot=False)
    await redis.aclose()


async def serve_until_sigterm(server, port: int, grace_s: float = 0.0) -> None:
    """Starts ``server`` (grpc's synchronous server, as ours), tells the benchmark its port (``PORT n`` on
    stdout), serves until SIGTERM."""
    server.start()
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await asyncio.to_thread(lambda: server.stop(grace_s).wait())


def thread_server(processes: int = 1):
    """grpc's synchronous server with as many RPC threads as ours (``IG_SERVER_RPC_THREADS``)."""
    from concurrent import futures

    import grpc

    workers = futures.ThreadPoolExecutor(max_workers=ServerSettings().rpc_threads)
    return grpc.server(workers, options=[("grpc.so_reuseport", 1 if processes > 1 else 0)])


async def echo() -> None:
    """A bare gRPC echo (bytes in, bytes out) on the same stack: the ceiling any servicer can reach here."""
    import grpc

    def handle(request: bytes, _context) -> bytes:
        return request

    server = thread_server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(handle)}),)
    )
    await serve_until_sigterm(server, server.add_insecure_port("127.0.0.1:0"))


async def floor(snapshot_dir: Path, nprobe: int, port: int, processes: int) -> None:
    """The least a Python gRPC server can do per ``SimilarItems`` call: the item's vector, one search of the
    index (FAISS, plus the full-width re-rank when the IVF holds leading components), the ids of the hits. No
    validation, filters, interceptors or metrics: what is left is the Python gRPC stack plus the search, the
    floor under any servicer written with it on this machine."""
    import grpc

    from proto.interest.v1 import interest_pb2 as pb
    from server.index import IndexParams
    from server.snapshot import load_snapshot

    faiss.omp_set_num_threads(1)
    threadpool_limits(1)
    index = load_snapshot(snapshot_dir, IndexParams(nprobe=nprobe)).index
    ids = index.labels.ids()

    def handle(request: pb.SimilarItemsRequest, _context) -> pb.SimilarItemsResponse:
        label = index.labels.get(request.item_id)
        labels, scores = index.search(index.vector(label)[0][None, :], request.k + 1)[0]
        response = pb.SimilarItemsResponse(model_version=index.model_version)
        add = response.items.add
        for lab, score in zip(labels.tolist(), scores.tolist()):
            if lab != label:
                add(item_id=ids[lab], score=score)
        del response.items[request.k :]
        return response

    server = thread_server(processes)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "interest.v1.InterestService",
                {
                    "SimilarItems": grpc.unary_unary_rpc_method_handler(
                        handle,
                        request_deserializer=pb.SimilarItemsRequest.FromString,
                        response_serializer=pb.SimilarItemsResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    await serve_until_sigterm(server, server.add_insecure_port(f"127.0.0.1:{port}"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    if sys.argv[1] == "echo":
        asyncio.run(echo())
        sys.exit(0)
    if sys.argv[1] == "floor":
        asyncio.run(floor(Path(sys.argv[2]), *(int(a) for a in sys.argv[3:6])))
        sys.exit(0)
    asyncio.run(
        main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), *(int(a) for a in sys.argv[6:8]))
    )
