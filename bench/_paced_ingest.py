"""One paced IngestEvents sender for the freshness benches (bench.freshness, its load runs, the dashboard): a
request per 50 ms tick at each rate of a schedule in turn, fractional rates accumulated, and at most a server's
streaming threads' worth of requests in flight, so a slow server delays the stream instead of refusing it."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import grpc

from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc

TICK_S = 0.05
IN_FLIGHT = 8  # a server process runs at most 8 streaming calls (IG_SERVER_STREAM_THREADS); more are refused
Ack = tuple[str, float, float]  # external user id, request sent, acknowledged


async def paced_ingest(port: int, make: Callable[[int], list[pb.Event]], schedule: list[tuple[float, float]]) -> list[Ack]:
    """Sends ``make(k)`` events each tick at each (duration_s, rate) of ``schedule``; an (user, sent, ack) per event."""
    acks: list[Ack] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InterestServiceStub(channel)
        pending: set[asyncio.Task] = set()
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one(batch: list[pb.Event]) -> None:
            async with slots:
                sent = time.time()
                reply = await stub.IngestEvents(iter([pb.IngestEventsRequest(events=batch)]), timeout=60)
            at = time.time()
            if reply.accepted != len(batch):
                raise RuntimeError(f"events not accepted: {reply}")
            acks.extend((e.user_id, sent, at) for e in batch)

        start, tick, owed = time.monotonic(), 0, 0.0
        for duration_s, rate in schedule:
            end = time.monotonic() + duration_s
            while time.monotonic() < end:
                owed += rate * TICK_S
                k, owed = int(owed), owed - int(owed)
                if k:
                    task = asyncio.create_task(one(make(k)))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                tick += 1
                await asyncio.sleep(max(0.0, start + tick * TICK_S - time.monotonic()))
        await asyncio.gather(*pending)
    return acks
