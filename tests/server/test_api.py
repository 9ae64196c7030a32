"""Every query RPC, filters and every bad-input case, against a real server without a graph database."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from proto.interest.v1 import interest_pb2 as pb
from tests.server.conftest import DIM, item_vectors


def _code(fn, request, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn(request, timeout=10, **kw)
    return err.value.code(), err.value.details()


def _exact(vecs: np.ndarray, q: np.ndarray, k: int, keep=None) -> list[str]:
    scores = vecs @ q
    order = np.argsort(-scores, kind="stable")
    ids = [f"item-{j}" for j in order if keep is None or keep(j)]
    return ids[:k]


def test_similar_items_are_the_exact_neighbours(plain_server) -> None:
    stub = plain_server.stub()
    _, vecs = item_vectors()
    resp = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=10), timeout=10)
    got = [i.item_id for i in resp.items]
    assert resp.model_version == "m1" and len(got) == 10 and "item-7" not in got
    want = _exact(vecs, vecs[7], 11, keep=lambda j: j != 7)[:10]
    assert len(set(got) & set(want)) >= 9
    scores = [i.score for i in resp.items]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0001 for s in scores)


def test_filters_by_category_brand_and_exclusion(plain_server) -> None:
    stub = plain_server.stub()
    _, vecs = item_vectors()
    excl = ["item-2", "item-8"]
    flt = pb.ItemFilter(category_ids=["Electronics"], brand_ids=["brand-0", "brand-1"], exclude_item_ids=excl)
    resp = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-4", k=10, filter=flt), timeout=10)
    got = [i.item_id for i in resp.items]
    keep = lambda j: j % 2 == 0 and j % 3 in (0, 1) and j != 4 and f"item-{j}" not in excl  # noqa: E731
    assert got == _exact(vecs, vecs[4], 10, keep)
    # a subcategory filter matches through the stored ancestors; an unknown category matches nothing
    sub = stub.SimilarItems(
        pb.SimilarItemsRequest(item_id="item-4", k=5, filter=pb.ItemFilter(category_ids=["Electronics > Audio"])), timeout=10
    )
    assert all(int(i.item_id.split("-")[1]) % 2 == 0 for i in sub.items) and len(sub.items) == 5
    none = stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-4", k=5, filter=pb.ItemFilter(category_ids=["Nope"])), timeout=10)
    assert list(none.items) == []


def test_nearest_items_normalises_and_checks_dimension(plain_server) -> None:
    stub = plain_server.stub()
    _, vecs = item_vectors()
    resp = stub.NearestItems(pb.NearestItemsRequest(vector=(3.0 * vecs[11]).tolist(), k=3), timeout=10)
    assert resp.items[0].item_id == "item-11" and resp.items[0].score == pytest.approx(1.0, abs=1e-4)
    for scale in (1e30, 1e-30):  # the norm of these overflows / underflows in float32: still the same direction
        resp = stub.NearestItems(pb.NearestItemsRequest(vector=(scale * vecs[11]).tolist(), k=3), timeout=10)
        assert resp.items[0].item_id == "item-11" and resp.items[0].score == pytest.approx(1.0, abs=1e-4), scale
    code, details = _code(stub.NearestItems, pb.NearestItemsRequest(vector=[1.0] * (DIM + 1), k=3))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and str(DIM) in details and str(DIM + 1) in details
    for bad in ([], [0.0] * DIM, [float("nan")] + [1.0] * (DIM - 1)):
        code, details = _code(stub.NearestItems, pb.NearestItemsRequest(vector=bad, k=3))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "vector" in details


def test_get_embedding_of_an_item(plain_server) -> None:
    stub = plain_server.stub()
    _, vecs = item_vectors()
    resp = stub.GetEmbedding(pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_ITEM, id="item-3"), timeout=10)
    assert np.allclose(resp.vector, vecs[3], atol=1e-6) and resp.model_version == "m1"
    code, _ = _code(stub.GetEmbedding, pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_ITEM, id="missing"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = _code(stub.GetEmbedding, pb.GetEmbeddingRequest(id="item-3"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "node_type" in details


@pytest.mark.parametrize(
    "request_, field",
    [
        (pb.SimilarItemsRequest(item_id="item-1", k=0), "k must be"),
        (pb.SimilarItemsRequest(item_id="item-1", k=101), "k must be"),
        (pb.SimilarItemsRequest(item_id="", k=5), "item_id must not be empty"),
        (pb.SimilarItemsRequest(item_id="x" * 300, k=5), "item_id is longer"),
        (pb.SimilarItemsRequest(item_id="item-1", k=5, filter=pb.ItemFilter(brand_ids=[""])), "filter.brand_ids[0]"),
        (pb.SimilarItemsRequest(item_id="item-1", k=5, filter=pb.ItemFilter(exclude_item_ids=["a"] * 51)), "more than 50 ids"),
    ],
)
def test_bad_similar_items_requests(plain_server, request_, field) -> None:
    code, details = _code(plain_server.stub().SimilarItems, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
    assert "Traceback" not in details


def test_unknown_item_is_not_found(plain_server) -> None:
    code, details = _code(plain_server.stub().SimilarItems, pb.SimilarItemsRequest(item_id="nope", k=5))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details


def test_bad_user_requests(plain_server) -> None:
    stub = plain_server.stub()
    code, details = _code(stub.RecommendForUser, pb.RecommendForUserRequest(user_id="", k=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in details
    code, _ = _code(stub.RecommendForUser, pb.RecommendForUserRequest(user_id="u", k=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = _code(stub.ForgetUser, pb.ForgetUserRequest(user_id=" "))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_graph_operations_without_a_graph_are_unavailable(plain_server) -> None:
    stub = plain_server.stub()
    ev = pb.Event(event_id="e1", user_id="u", type=pb.EVENT_TYPE_VIEW, item_id="item-1", ts=1.0)
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestEvents(iter([pb.IngestEventsRequest(events=[ev])]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stream_length_limit(plain_server) -> None:
    stub = plain_server.stub()
    ev = pb.Event(event_id="e", user_id="u", type=pb.EVENT_TYPE_VIEW, item_id="i", ts=1.0)
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestEvents(iter([pb.IngestEventsRequest(events=[ev] * 15)] * 2), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 20" in err.value.details()


def test_deadline_is_honoured(plain_server) -> None:
    """A client stream that never ends ends at its deadline: the call returns (DEADLINE_EXCEEDED) while the client
    still holds the stream open, so only the deadline can have ended it."""
    import threading

    stub = plain_server.stub()
    release = threading.Event()

    def held_open():
        yield pb.IngestEventsRequest()
        release.wait(60)
        yield pb.IngestEventsRequest()

    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.IngestEvents(held_open(), timeout=0.3)
    finally:
        release.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the server is still healthy afterwards
    assert stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-1", k=1), timeout=10).items
