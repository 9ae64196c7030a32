"""The InterestService servicer: validate the request, call the engine, convert the answer. Nothing else.

Methods run in the gRPC server's worker threads (``server.app``) and may block on Neo4j.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence, TypeVar, cast

import grpc
from google.protobuf.message import Message

from graphdb import explain
from graphdb.errors import InvalidInput, ResourceExhausted, Unavailable
from graphdb.settings import GraphSettings
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server.engine import Answer, Engine, ItemFilter
from server.errors import status_of
from server.rules import Boost, RankingRules
from server.settings import ServerSettings

M = TypeVar("M", bound=Message)

EVENT_TYPES = {
    pb.EVENT_TYPE_VIEW: "view",
    pb.EVENT_TYPE_CLICK: "click",
    pb.EVENT_TYPE_ADD_TO_CART: "add_to_cart",
    pb.EVENT_TYPE_PURCHASE: "purchase",
    pb.EVENT_TYPE_RATE: "rate",
    pb.EVENT_TYPE_REVIEW: "review",
    pb.EVENT_TYPE_SEARCH: "search",
    pb.EVENT_TYPE_NOT_INTERESTED: "not_interested",
    pb.EVENT_TYPE_RETURN: "return",
}
NODE_TYPES = {pb.NODE_TYPE_USER: "User", pb.NODE_TYPE_ITEM: "Item"}
REASON_KINDS = {
    explain.BOUGHT_TOGETHER: pb.REASON_KIND_BOUGHT_TOGETHER,
    explain.CATEGORY_YOU_BUY: pb.REASON_KIND_CATEGORY,
    explain.RECENT_SEARCH: pb.REASON_KIND_SEARCH,
    explain.SAME_CATEGORY: pb.REASON_KIND_SAME_CATEGORY,
}
# A session's events are about items; searches make no part of a shopper's vector, and negative feedback in a
# session (hides, returns) is not supported yet: it is refused rather than counted as interest.
SESSION_EVENT_TYPES = {t: name for t, name in EVENT_TYPES.items() if name not in ("search", "not_interested", "return")}


class Validator:
    def __init__(self, settings: ServerSettings, graph: GraphSettings) -> None:
        self.max_k = settings.max_k
        self.max_filter_ids = settings.max_filter_ids
        self.max_id_chars = graph.max_id_chars
        self.max_boosts = settings.max_boosts
        self.boost_min, self.boost_max = settings.boost_min, settings.boost_max

    def k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise InvalidInput(f"k must be between 1 and {self.max_k}, got {k}")
        return k

    def id(self, value: str, what: str) -> str:
        if not value or not value.strip():
            raise InvalidInput(f"{what} must not be empty")
        if len(value) > self.max_id_chars:
            raise InvalidInput(f"{what} is longer than {self.max_id_chars} characters")
        return value

    def filter(self, f: pb.ItemFilter) -> ItemFilter:
        cats, brands, excl = tuple(f.category_ids), tuple(f.brand_ids), tuple(f.exclude_item_ids)
        if not (cats or brands or excl):
            return _NO_FILTER
        if len(cats) + len(brands) + len(excl) > self.max_filter_ids:
            raise InvalidInput(f"the filter lists more than {self.max_filter_ids} ids")
        for name, ids in (("filter.category_ids", cats), ("filter.brand_ids", brands), ("filter.exclude_item_ids", excl)):
            for i, value in enumerate(ids):
                self.id(value, f"{name}[{i}]")
        return ItemFilter(cats, brands, excl)

    def rules(
        self,
        request: pb.SimilarItemsRequest | pb.RecommendForUserRequest | pb.NearestItemsRequest | pb.RecommendForSessionRequest,
    ) -> RankingRules | None:
        """The request's ranking rules, or None when it sets none (the model's ranking as is)."""
        if not request.HasField("rules"):
            return None
        r = request.rules
        if len(r.boosts) > self.max_boosts:
            raise InvalidInput(f"rules.boosts holds {len(r.boosts)} boosts, at most {self.max_boosts} are allowed")
        boosts = []
        seen: set[tuple[str, str]] = set()
        for i, b in enumerate(r.boosts):
            kind = b.WhichOneof("target")
            if kind is None:
                raise InvalidInput(f"rules.boosts[{i}] names neither a category_id nor a brand_id")
            target = self.id(getattr(b, kind), f"rules.boosts[{i}].{kind}")
            m = b.multiplier
            if not (math.isfinite(m) and self.boost_min <= m <= self.boost_max):
                raise InvalidInput(f"rules.boosts[{i}].multiplier must be between {self.boost_min} and {self.boost_max}, got {m:g}")
            if (kind, target) in seen:
                raise InvalidInput(f"rules.boosts[{i}] repeats {kind} {target!r}")
            seen.add((kind, target))
            boosts.append(Boost("category" if kind == "category_id" else "brand", target, m))
        if not (r.max_per_category or r.max_per_brand or boosts):
            return None
        return RankingRules(r.max_per_category, r.max_per_brand, tuple(boosts))


_NO_FILTER = ItemFilter()


def _answer(response_type: Callable[..., M], answer: Answer, **fields: Any) -> M:
    """A response of ``response_type`` with the answer's scored items (``add`` in place: half the cost of
    building a list of ScoredItem) and model version."""
    response: Any = response_type(model_version=answer.model_version, **fields)
    add = response.items.add
    if answer.reasons is None:
        for item_id, score in answer.items:
            add(item_id=item_id, score=score)
        return cast(M, response)
    for item_id, score in answer.items:
        scored = add(item_id=item_id, score=score)
        for r in answer.reasons.get(item_id, ()):
            scored.reasons.add(
                kind=REASON_KINDS[r.kind], text=r.text, item_id=r.item_id, count=r.count, category_id=r.category_id, query=r.query
            )
    return cast(M, response)


def event_mapping(ev: pb.Event) -> dict[str, Any]:
    """A proto event as the mapping graphdb.ingest validates (it rejects what is wrong, per event)."""
    out: dict[str, Any] = {
        "event_id": ev.event_id,
        "user_id": ev.user_id,
        "type": EVENT_TYPES.get(ev.type, f"unspecified({ev.type})"),
        "ts": ev.ts,
    }
    if ev.item_id:
        out["item_id"] = ev.item_id
    if ev.query:
        out["query"] = ev.query
    if ev.rating:
        out["rating"] = ev.rating
    if ev.review:
        out["review"] = ev.review
    if ev.HasField("item"):
        out["item"] = {
            "title": ev.item.title or None,
            "description": ev.item.description or None,
            "brand": ev.item.brand or None,
            "categories": [list(p.names) for p in ev.item.categories],
        }
    return out


class InterestServicer(pb_grpc.InterestServiceServicer):
    # The methods that may wait on Neo4j: they run on the waiting pool (server.pools), not the query threads.
    WAITING = (
        "RecommendForUser",
        "IngestEvents",
        "GetEmbedding",
        "ForgetUser",
        "BatchRecommend",
        "RecommendForSession",
        "SimilarUsers",
    )
    # Queries that read the graph too when their request sets this bool (explanations): the native front end sends
    # those calls to the waiting threads, so a slow graph read cannot hold up the I/O threads (server/native).
    WAITING_IF = {"SimilarItems": "explain"}

    def __init__(self, engine: Engine, settings: ServerSettings, graph: GraphSettings) -> None:
        self.engine = engine
        self.check = Validator(settings, graph)
        self.max_stream_events = settings.max_stream_events
        self.max_batch = settings.max_batch
        self.max_session_events = settings.max_session_events

    def SimilarItems(self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext) -> pb.SimilarItemsResponse:
        answer = self.engine.similar_items(
            self.check.id(request.item_id, "item_id"),
            self.check.k(request.k),
            self.check.filter(request.filter),
            rules=self.check.rules(request),
            explained=request.explain,
        )
        return _answer(pb.SimilarItemsResponse, answer)

    def RecommendForUser(self, request: pb.RecommendForUserRequest, context: grpc.ServicerContext) -> pb.RecommendForUserResponse:
        answer = self.engine.recommend_for_user(
            self.check.id(request.user_id, "user_id"),
            self.check.k(request.k),
            self.check.filter(request.filter),
            include_seen=request.include_seen,
            rules=self.check.rules(request),
            explained=request.explain,
        )
        return _answer(pb.RecommendForUserResponse, answer, cold_start=answer.cold_start)

    def RecommendForSession(
        self, request: pb.RecommendForSessionRequest, context: grpc.ServicerContext
    ) -> pb.RecommendForSessionResponse:
        k, flt = self.check.k(request.k), self.check.filter(request.filter)
        answer = self.engine.recommend_for_session(
            self.session_events(request.events),
            k,
            flt,
            include_seen=request.include_seen,
            rules=self.check.rules(request),
            explained=request.explain,
        )
        return _answer(pb.RecommendForSessionResponse, answer, cold_start=answer.cold_start)

    def session_events(self, events: Sequence[pb.SessionEvent]) -> list[tuple[str, str, float, float | None]]:
        """A session's events as ``graphdb.session`` takes them (which checks the rest by ingestion's rules)."""
        if len(events) > self.max_session_events:
            raise InvalidInput(f"a session carries at most {self.max_session_events} events, got {len(events)}")
        kinds = SESSION_EVENT_TYPES
        # One comprehension reads the fields (each read of a message's field costs ~0.2 us); the checks run on the tuples.
        out = [(ev.item_id, kinds.get(ev.type), ev.ts, ev.rating or None) for ev in events]
        checked: set[str] = set()  # a session names few items, many times each
        for i, (item, kind, ts, _) in enumerate(out):
            if kind is None or ts == 0 or item not in checked:  # else nothing to check here
                if kind is None:
                    raise InvalidInput(f"events[{i}].type must be an item event type ({', '.join(kinds.values())})")
                if ts == 0:  # proto3's default: the client did not set it (ingestion's rules check the rest)
                    raise InvalidInput(f"events[{i}].ts must be set (unix seconds)")
                checked.add(self.check.id(item, f"events[{i}].item_id"))
        return cast(list[tuple[str, str, float, float | None]], out)  # every kind is a name once checked

    def SimilarUsers(self, request: pb.SimilarUsersRequest, context: grpc.ServicerContext) -> pb.SimilarUsersResponse:
        found, version = self.engine.similar_users(self.check.id(request.user_id, "user_id"), self.check.k(request.k))
        response = pb.SimilarUsersResponse(model_version=version)
        for user in found:
            response.users.add(user_id=user.pseudonym, score=user.score)
        return response

    def NearestItems(self, request: pb.NearestItemsRequest, context: grpc.ServicerContext) -> pb.NearestItemsResponse:
        if not request.vector:
            raise InvalidInput("vector must not be empty")
        if not all(math.isfinite(x) for x in request.vector):
            raise InvalidInput("vector must contain finite numbers only")
        answer = self.engine.nearest_items(
            request.vector, self.check.k(request.k), self.check.filter(request.filter), self.check.rules(request)
        )
        return _answer(pb.NearestItemsResponse, answer)

    def BatchRecommend(self, request: pb.BatchRecommendRequest, context: grpc.ServicerContext) -> pb.BatchRecommendResponse:
        n = len(request.entries)
        if not 1 <= n <= self.max_batch:
            raise InvalidInput(f"a batch holds 1 to {self.max_batch} entries, got {n}")
        if not self.engine.ready:  # what fails every entry fails the call
            raise Unavailable("the index is not loaded yet; retry shortly")
        out = pb.BatchRecommendResponse()
        for i, entry in enumerate(request.entries):
            result = out.results.add()
            kind = entry.WhichOneof("request")
            try:
                if kind == "user":
                    result.user.CopyFrom(self.RecommendForUser(entry.user, context))
                elif kind == "similar":
                    result.similar.CopyFrom(self.SimilarItems(entry.similar, context))
                elif kind == "nearest":
                    result.nearest.CopyFrom(self.NearestItems(entry.nearest, context))
                elif kind == "session":
                    result.session.CopyFrom(self.RecommendForSession(entry.session, context))
                else:
                    raise InvalidInput("the entry holds no request (user, similar, nearest or session)")
            except Exception as exc:  # noqa: BLE001 - an answerable failure is the entry's; a bug fails the call
                status = status_of(exc)
                if status is None:
                    raise
                result.code, result.message = status[0].value[0], f"entries[{i}]: {status[1]}"
        return out

    def IngestEvents(
        self, request_iterator: Iterable[pb.IngestEventsRequest], context: grpc.ServicerContext
    ) -> pb.IngestEventsResponse:
        events: list[dict[str, Any]] = []
        for message in request_iterator:
            if len(events) + len(message.events) > self.max_stream_events:
                raise ResourceExhausted(
                    f"a stream may carry at most {self.max_stream_events} events; nothing was ingested, split it into several streams"
                )
            events.extend(event_mapping(ev) for ev in message.events)
        result = self.engine.ingest(events)
        return pb.IngestEventsResponse(
            received=len(events),
            accepted=result.accepted,
            duplicates=result.duplicates,
            rejected=[pb.Rejection(index=r.index, reason=r.reason) for r in result.rejected],
        )

    def GetEmbedding(self, request: pb.GetEmbeddingRequest, context: grpc.ServicerContext) -> pb.GetEmbeddingResponse:
        node_type = NODE_TYPES.get(request.node_type)
        if node_type is None:
            raise InvalidInput("node_type must be NODE_TYPE_USER or NODE_TYPE_ITEM")
        emb = self.engine.get_embedding(node_type, self.check.id(request.id, "id"))
        return pb.GetEmbeddingResponse(vector=emb.vector.tolist(), model_version=emb.model_version, updated_at=emb.updated_at)

    def ForgetUser(self, request: pb.ForgetUserRequest, context: grpc.ServicerContext) -> pb.ForgetUserResponse:
        existed = self.engine.forget_user(self.check.id(request.user_id, "user_id"))
        return pb.ForgetUserResponse(existed=existed)
