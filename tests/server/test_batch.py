"""BatchRecommend: several answers in one call, each equal to its own call's, failures entry by entry; against a
real server (no graph database: a user entry gets the cold-start answer)."""

from __future__ import annotations

import grpc
import pytest

from proto.interest.v1 import interest_pb2 as pb
from tests.server.conftest import DIM, item_vectors


def _items(response) -> list[tuple[str, float]]:
    return [(i.item_id, i.score) for i in response.items]


def test_each_entry_is_answered_as_its_own_call_in_order(plain_server) -> None:
    stub = plain_server.stub()
    _, vecs = item_vectors()
    flt = pb.ItemFilter(category_ids=["Electronics"])
    similar = pb.SimilarItemsRequest(item_id="item-7", k=5, filter=flt)
    nearest = pb.NearestItemsRequest(vector=vecs[11].tolist(), k=4)
    user = pb.RecommendForUserRequest(user_id="alice", k=3)
    entries = [
        pb.BatchEntry(similar=similar),
        pb.BatchEntry(nearest=nearest),
        pb.BatchEntry(user=user),
        pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id="item-3", k=2)),
    ]
    out = stub.BatchRecommend(pb.BatchRecommendRequest(entries=entries), timeout=10)
    assert [r.WhichOneof("response") for r in out.results] == ["similar", "nearest", "user", "similar"]
    assert all(r.code == 0 and r.message == "" for r in out.results)
    assert _items(out.results[0].similar) == _items(stub.SimilarItems(similar, timeout=10))
    assert _items(out.results[1].nearest) == _items(stub.NearestItems(nearest, timeout=10))
    alone = stub.RecommendForUser(user, timeout=10)
    assert _items(out.results[2].user) == _items(alone) and out.results[2].user.cold_start == alone.cold_start
    assert len(out.results[3].similar.items) == 2 and out.results[3].similar.model_version == "m1"


def test_a_failed_entry_has_its_own_status_and_the_others_are_answered(plain_server) -> None:
    stub = plain_server.stub()
    entries = [
        pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id="item-1", k=3)),
        pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id="no-such-item", k=3)),
        pb.BatchEntry(nearest=pb.NearestItemsRequest(vector=[1.0] * (DIM + 1), k=3)),
        pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id="item-2", k=0)),
        pb.BatchEntry(),
        pb.BatchEntry(user=pb.RecommendForUserRequest(user_id="", k=3)),
        pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id="item-4", k=3)),
    ]
    out = stub.BatchRecommend(pb.BatchRecommendRequest(entries=entries), timeout=10)
    codes = [grpc.StatusCode.OK if r.code == 0 else next(c for c in grpc.StatusCode if c.value[0] == r.code) for r in out.results]
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND] + [grpc.StatusCode.INVALID_ARGUMENT] * 4 + [grpc.StatusCode.OK]
    for i, r in enumerate(out.results):
        if r.code:
            assert r.message.startswith(f"entries[{i}]: ") and r.WhichOneof("response") is None
    assert "no-such-item" in out.results[1].message and str(DIM + 1) in out.results[2].message
    assert "k must be" in out.results[3].message and "holds no request" in out.results[4].message
    assert "user_id" in out.results[5].message
    assert len(out.results[0].similar.items) == 3 and len(out.results[6].similar.items) == 3


def test_an_empty_or_oversized_batch_is_refused(plain_server) -> None:
    stub = plain_server.stub()
    one = pb.BatchEntry(similar=pb.SimilarItemsRequest(item_id="item-1", k=1))
    for n in (0, 33):  # the default limit is 32 entries
        with pytest.raises(grpc.RpcError) as err:
            stub.BatchRecommend(pb.BatchRecommendRequest(entries=[one] * n), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "1 to 32 entries" in err.value.details()
    assert len(stub.BatchRecommend(pb.BatchRecommendRequest(entries=[one] * 32), timeout=10).results) == 32
