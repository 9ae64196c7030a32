"""grpc's interop-style check of a server's port (issue 20): every method of the API through the generated stubs
(grpcio's client) -- the unary InterestService calls, IngestEvents (a client stream), health Check and Watch (a
server stream) and reflection (a bidirectional stream) -- once plainly and once with ``grpc.Compression.Gzip``
(requests sent gzip-compressed, ``grpc-encoding: gzip``). Every answer, or status code and details, must be the
same both ways; answers that are all errors would prove little, so the OK ones are counted too.

    python -m bench.interop --target HOST:PORT [--item ITEM] [--user USER] [--dim N] [--token T] [--tls-ca FILE]

Writes nothing but fresh events (their ids are new each pass, so both passes are accepted alike). Prints
``RESULT {json}`` last: the number of exchanges, how many answered OK, the codes met, and ``equal``.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bench._common import emit_result
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc

Exchange = Callable[[grpc.Channel, "grpc.Compression | None", Any], Any]
TIMEOUT_S = 10.0


def exchanges(item: str, user: str, dim: int) -> list[tuple[str, Exchange]]:
    """(name, exchange): each sends its request(s) on a channel with the given compression and returns the answer."""

    def unary(method: str, request: Any) -> Exchange:
        return lambda ch, compression, md: getattr(pb_grpc.InterestServiceStub(ch), method)(
            request, timeout=TIMEOUT_S, compression=compression, metadata=md
        )

    def ingest(ch: grpc.Channel, compression: grpc.Compression | None, md: Any) -> Any:
        pass_id = uuid.uuid4().hex  # fresh ids: both passes' events are new, so both are answered alike
        events = [
            pb.Event(event_id=f"interop-{pass_id}-0", user_id=user, type=pb.EVENT_TYPE_VIEW, item_id=item, ts=1.7e9),
            pb.Event(event_id=f"interop-{pass_id}-1", user_id=user, type=pb.EVENT_TYPE_VIEW, ts=1.7e9),  # no item: rejected
        ]
        stream = iter([pb.IngestEventsRequest(events=events[:1]), pb.IngestEventsRequest(events=events[1:])])
        return pb_grpc.InterestServiceStub(ch).IngestEvents(stream, timeout=TIMEOUT_S, compression=compression, metadata=md)

    def health_check(ch: grpc.Channel, compression: grpc.Compression | None, md: Any) -> Any:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S, compression=compression)

    def health_watch(ch: grpc.Channel, compression: grpc.Compression | None, md: Any) -> Any:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S, compression=compression)
        first = next(watch)  # the current status; the stream then stays open for changes
        watch.cancel()
        return first

    def reflect(ch: grpc.Channel, compression: grpc.Compression | None, md: Any) -> Any:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        asked = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="interest.v1.InterestService"),
        ]
        answers = list(stub.ServerReflectionInfo(iter(asked), timeout=TIMEOUT_S, compression=compression))
        services = sorted(s.name for s in answers[0].list_services_response.service)
        return services, [bytes(f) for f in answers[1].file_descriptor_response.file_descriptor_proto]

    session = [pb.SessionEvent(item_id=item, type=pb.EVENT_TYPE_VIEW, ts=1.7e9)]
    return [
        ("SimilarItems", unary("SimilarItems", pb.SimilarItemsRequest(item_id=item, k=5))),
        ("SimilarItems unknown item", unary("SimilarItems", pb.SimilarItemsRequest(item_id="interop-no-such-item", k=5))),
        ("SimilarItems k=0", unary("SimilarItems", pb.SimilarItemsRequest(item_id=item, k=0))),
        ("NearestItems", unary("NearestItems", pb.NearestItemsRequest(vector=[0.5] * dim, k=5))),
        ("RecommendForUser", unary("RecommendForUser", pb.RecommendForUserRequest(user_id=user, k=5))),
        ("GetEmbedding", unary("GetEmbedding", pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_ITEM, id=item))),
        ("ForgetUser", unary("ForgetUser", pb.ForgetUserRequest(user_id="interop-nobody"))),
        (
            "BatchRecommend",
            unary(
                "BatchRecommend",
                pb.BatchRecommendRequest(
                    entries=[
                        pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id=item, k=3)),
                        pb.BatchEntry(user=pb.RecommendForUserRequest(user_id=user, k=3)),
                    ]
                ),
            ),
        ),
        ("RecommendForSession", unary("RecommendForSession", pb.RecommendForSessionRequest(events=session, k=5))),
        ("SimilarUsers", unary("SimilarUsers", pb.SimilarUsersRequest(user_id=user, k=3))),
        ("IngestEvents (client stream)", ingest),
        ("health Check", health_check),
        ("health Watch (server stream)", health_watch),
        ("reflection (bidirectional stream)", reflect),
    ]


def run_pass(
    channel: grpc.Channel, compression: grpc.Compression | None, items: list[tuple[str, Exchange]], metadata: Any = None
) -> list[tuple]:
    """(name, code, answer or details) of every exchange."""
    out = []
    for name, exchange in items:
        try:
            out.append((name, "OK", exchange(channel, compression, metadata)))
        except grpc.RpcError as err:
            out.append((name, err.code().name, err.details()))
    return out


def check(channel: grpc.Channel, item: str, user: str, dim: int, metadata: Any = None) -> dict[str, Any]:
    """Both passes over ``channel``; the report says what differed, if anything."""
    items = exchanges(item, user, dim)
    plain = run_pass(channel, None, items, metadata)
    gzip = run_pass(channel, grpc.Compression.Gzip, items, metadata)
    differ = [p[0] for p, g in zip(plain, gzip) if p != g]
    return {
        "exchanges": len(items),
        "ok": sum(code == "OK" for _, code, _ in plain),
        "codes": {name: code for name, code, _ in plain},
        "differ": differ,
        "equal": not differ,
        "plain": plain,
        "gzip": gzip,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of a running server")
    parser.add_argument("--item", default="item-7", help="an item the served model has a vector for")
    parser.add_argument("--user", default="interop-user")
    parser.add_argument("--dim", type=int, default=64, help="the served vectors' dimension")
    parser.add_argument("--token", help="bearer token, when the server checks them")
    parser.add_argument("--tls-ca", help="CA certificate (PEM) when the server serves TLS")
    args = parser.parse_args()
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            channel = grpc.secure_channel(args.target, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(args.target)
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    with channel:
        report = check(channel, args.item, args.user, args.dim, metadata)
    for name, code, _ in report["plain"]:
        print(f"{name}: {code}{'' if name not in report['differ'] else '  DIFFERS with gzip'}")
    emit_result({"bench": "interop", **{k: v for k, v in report.items() if k not in ("plain", "gzip")}})
    if not report["equal"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
