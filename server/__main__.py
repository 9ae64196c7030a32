"""``python -m server``: run the gRPC server with settings from the environment (IG_SERVER_*, IG_*, NEO4J_*)."""

from __future__ import annotations

import asyncio
import logging

import faiss
from threadpoolctl import threadpool_limits

from graphdb.settings import GraphSettings, Neo4jSettings
from server.app import serve
from server.settings import ServerSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One query at a time per search call: OpenMP fan-out only adds latency to single-vector searches, and
    # numpy's OpenBLAS threads fighting faiss's OpenMP threads make a 20k x 64 product 50x slower (measured).
    faiss.omp_set_num_threads(1)
    threadpool_limits(1)
    asyncio.run(serve(ServerSettings(), GraphSettings(), Neo4jSettings()))


if __name__ == "__main__":
    main()
