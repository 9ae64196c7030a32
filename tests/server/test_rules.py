"""Ranking rules (diversity caps, boosts) on SimilarItems, NearestItems, RecommendForUser and BatchRecommend, through
the generated stubs against a real server. The index is exact here (flat: fewer items than IG_SERVER_ANN_MIN_ITEMS),
so every answer is checked against the rules applied by hand to the whole catalogue."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from graphdb.catalog import ItemFacets
from graphdb.pseudonym import pseudonymise
from proto.interest.v1 import interest_pb2 as pb
from tests.server.conftest import base_settings, item_vectors, start_harness

N = 300
# twin-a and twin-b have item-0's vector (equal scores); the flat index returns the tie as FAISS leaves it (twin-b first)
TWINS = ["twin-a", "twin-b"]


def _cats(j: int) -> tuple[str, ...]:
    """Items j and j + 6 share a vector cluster (conftest.item_vectors: 6 clusters), each cluster spans two leaves."""
    return (f"Leaf {j % 12}",)


def _brand(j: int) -> str:
    return f"brand-{j % 5}"


def _facets(ids: list[str]) -> list[ItemFacets]:
    out = []
    for item_id in ids:
        j = 0 if item_id in TWINS else int(item_id.split("-")[1])
        leaf = _cats(j)[0]
        out.append(ItemFacets(item_id, ("Root", f"Root > {leaf}"), (_brand(j),), (f"Root > {leaf}",)))
    return out


def _setup(engine) -> None:
    ids, vecs = item_vectors(N)
    ids, vecs = ids + TWINS, np.vstack([vecs, vecs[[0, 0]]])
    engine.install(engine.load_vectors(ids, vecs, "m1"))
    engine.update_facets(_facets(ids))


@pytest.fixture(scope="module")
def rules_server(server_graph_settings):
    """A graph-less server, exact search over 302 items with leaf categories and brands; alice has a vector."""
    harness, stop = start_harness(base_settings(ann_min_items=10_000, rules_candidates=20), server_graph_settings, setup=_setup)
    _, vecs = item_vectors(N)
    key = server_graph_settings.pseudonym_key.get_secret_value()
    harness.call(lambda: harness.engine.serving.users.put(pseudonymise(key, "alice"), vecs[7], 0.0))
    yield harness
    stop()


def _catalogue() -> tuple[list[str], np.ndarray, dict[str, tuple[str, str]]]:
    ids, vecs = item_vectors(N)
    facets = {f.id: (f.direct_category_ids[0], f.brand_ids[0]) for f in _facets(ids + TWINS)}
    return ids + TWINS, np.vstack([vecs, vecs[[0, 0]]]), facets


def _by_hand(
    query: np.ndarray, k: int, rules: pb.RankingRules, skip: set[str] = frozenset(), pool: int | None = None
) -> list[tuple[str, float]]:
    """The rules as documented, over the model's best ``pool`` items (all by default): boosted score, ties by id,
    greedy caps."""
    ids, vecs, facets = _catalogue()
    scores = (vecs @ query.astype(np.float32)).astype(np.float32)
    candidates = sorted((t for t in zip(ids, scores.tolist()) if t[0] not in skip), key=lambda t: -t[1])[:pool]
    ranked = []
    for item_id, s in candidates:
        cat, brand = facets[item_id]
        m = 1.0
        for b in rules.boosts:
            if (b.WhichOneof("target") == "brand_id" and b.brand_id == brand) or b.category_id in ("Root", cat):
                m *= np.float32(b.multiplier)
        ranked.append((item_id, float(np.float32(s * m if s >= 0 else s / m))))
    ranked.sort(key=lambda t: (-t[1], t[0]))
    per_cat: dict[str, int] = {}
    per_brand: dict[str, int] = {}
    out = []
    for item_id, s in ranked:
        cat, brand = facets[item_id]
        if rules.max_per_category and per_cat.get(cat, 0) >= rules.max_per_category:
            continue
        if rules.max_per_brand and per_brand.get(brand, 0) >= rules.max_per_brand:
            continue
        per_cat[cat] = per_cat.get(cat, 0) + 1
        per_brand[brand] = per_brand.get(brand, 0) + 1
        out.append((item_id, s))
        if len(out) == k:
            break
    return out


def _items(response) -> list[tuple[str, float]]:
    return [(i.item_id, i.score) for i in response.items]


def _assert_matches(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-5, abs=1e-6)


CAPS = pb.RankingRules(max_per_category=2, max_per_brand=3)


def test_caps_hold_in_every_answer_and_keep_its_size(rules_server) -> None:
    stub = rules_server.stub()
    _, vecs, facets = _catalogue()
    q = vecs[7] / np.linalg.norm(vecs[7])
    answers = {
        "similar": _items(stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=12, rules=CAPS), timeout=10)),
        "nearest": _items(stub.NearestItems(pb.NearestItemsRequest(vector=vecs[7].tolist(), k=12, rules=CAPS), timeout=10)),
        "user": _items(stub.RecommendForUser(pb.RecommendForUserRequest(user_id="alice", k=12, rules=CAPS), timeout=10)),
    }
    plain = _items(stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=12), timeout=10))
    assert max(np.unique([facets[i][0] for i, _ in plain], return_counts=True)[1]) > 2  # the caps bind here
    for name, got in answers.items():
        assert len(got) == 12, name  # the first 48 candidates (4 k) hold 4 items under the caps: the engine fetched more
        for kind in (0, 1):
            _, counts = np.unique([facets[i][kind] for i, _ in got], return_counts=True)
            assert counts.max() <= (2, 3)[kind], (name, kind)
    _assert_matches(answers["similar"], _by_hand(vecs[7], 12, CAPS, skip={"item-7"}))
    _assert_matches(answers["nearest"], _by_hand(q, 12, CAPS))
    _assert_matches(answers["user"], answers["nearest"])  # alice's vector is item-7's


def test_boosts_move_boosted_items_up_by_the_documented_rule(rules_server) -> None:
    stub = rules_server.stub()
    _, vecs, facets = _catalogue()
    rules = pb.RankingRules(
        boosts=[pb.Boost(brand_id="brand-2", multiplier=3.0), pb.Boost(category_id="Root > Leaf 1", multiplier=0.5)]
    )
    req = pb.SimilarItemsRequest(item_id="item-7", k=10, rules=rules)
    got = _items(stub.SimilarItems(req, timeout=10))
    plain = _items(stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=10), timeout=10))
    # boosts re-rank the best max(IG_SERVER_RULES_CANDIDATES, 4 k) = 40 candidates: item-42 (brand-2, another
    # cluster) would overtake with its boost from further down, but is not among them
    _assert_matches(got, _by_hand(vecs[7], 10, rules, skip={"item-7"}, pool=40))
    assert "item-42" in [i for i, _ in _by_hand(vecs[7], 10, rules, skip={"item-7"})]
    assert len(got) == 10 and got == _items(stub.SimilarItems(req, timeout=10))  # deterministic
    brand2 = [i for i, _ in got if facets[i][1] == "brand-2"]
    assert len(brand2) > sum(facets[i][1] == "brand-2" for i, _ in plain)  # brand-2 gained places
    assert got[0][0] in brand2
    # a boosted item's served score is its model score times the multiplier
    ids, vecs, _ = _catalogue()
    model = dict(zip(ids, (vecs @ vecs[7]).tolist()))
    for item_id, score in got:
        factor = 3.0 if facets[item_id][1] == "brand-2" else 1.0
        factor *= 0.5 if facets[item_id][0] == "Root > Leaf 1" else 1.0
        assert score == pytest.approx(model[item_id] * factor, rel=1e-5)


def test_a_boost_moves_negative_scores_up_too(rules_server) -> None:
    stub = rules_server.stub()
    _, vecs, facets = _catalogue()
    away = -vecs[7]  # every item of item-7's cluster (leaves 1 and 7) scores below zero
    flt = pb.ItemFilter(category_ids=["Root > Leaf 1", "Root > Leaf 7"])
    rules = pb.RankingRules(boosts=[pb.Boost(brand_id="brand-1", multiplier=4.0)])
    got = _items(stub.NearestItems(pb.NearestItemsRequest(vector=away.tolist(), k=50, filter=flt, rules=rules), timeout=10))
    plain = dict(_items(stub.NearestItems(pb.NearestItemsRequest(vector=away.tolist(), k=50, filter=flt), timeout=10)))
    assert len(got) == len(plain) == 50 and max(plain.values()) < 0
    outside = {i for i, (cat, _) in facets.items() if cat not in ("Root > Leaf 1", "Root > Leaf 7")}
    _assert_matches(got, _by_hand(away / np.linalg.norm(away), 50, rules, skip=outside))
    assert {facets[i][1] for i, _ in got[:10]} == {"brand-1"}  # j = 1 mod 30: the 10 boosted ones lead
    assert all(s == pytest.approx(plain[i] / 4.0, rel=1e-5) and s > plain[i] for i, s in got[:10])


def test_ties_are_ordered_by_item_id(rules_server) -> None:
    stub = rules_server.stub()
    plain = [i for i, _ in _items(stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-0", k=2), timeout=10))]
    assert plain == ["twin-b", "twin-a"]  # as FAISS leaves the tie
    ruled = _items(
        stub.SimilarItems(pb.SimilarItemsRequest(item_id="item-0", k=2, rules=pb.RankingRules(max_per_brand=100)), timeout=10)
    )
    assert [i for i, _ in ruled] == sorted(TWINS) and ruled[0][1] == ruled[1][1]


def test_caps_answer_fewer_when_the_catalogue_cannot_fill_k(rules_server) -> None:
    stub = rules_server.stub()
    flt = pb.ItemFilter(brand_ids=["brand-0"])  # brand-0 items fall in 12 leaves
    req = pb.SimilarItemsRequest(item_id="item-7", k=20, filter=flt, rules=pb.RankingRules(max_per_category=1))
    got = [i for i, _ in _items(stub.SimilarItems(req, timeout=10))]
    assert len(got) == 12 and len({_cats(int(i.split("-")[1])) for i in got}) == 12


def test_batch_entries_take_their_rules(rules_server) -> None:
    stub = rules_server.stub()
    good = pb.SimilarItemsRequest(item_id="item-7", k=8, rules=CAPS)
    bad = pb.SimilarItemsRequest(item_id="item-7", k=8, rules=pb.RankingRules(boosts=[pb.Boost(brand_id="b", multiplier=0)]))
    out = stub.BatchRecommend(pb.BatchRecommendRequest(entries=[pb.BatchEntry(similar=good), pb.BatchEntry(similar=bad)]), timeout=10)
    assert out.results[0].code == 0 and _items(out.results[0].similar) == _items(stub.SimilarItems(good, timeout=10))
    assert out.results[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "multiplier" in out.results[1].message


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (pb.RankingRules(boosts=[pb.Boost(brand_id="b", multiplier=0.0)]), "rules.boosts[0].multiplier must be between 0.1 and 10"),
        (pb.RankingRules(boosts=[pb.Boost(brand_id="b", multiplier=10.5)]), "got 10.5"),
        (pb.RankingRules(boosts=[pb.Boost(brand_id="b", multiplier=-2.0)]), "got -2"),
        (pb.RankingRules(boosts=[pb.Boost(brand_id="b", multiplier=math.nan)]), "got nan"),
        (pb.RankingRules(boosts=[pb.Boost(multiplier=2.0)]), "rules.boosts[0] names neither a category_id nor a brand_id"),
        (pb.RankingRules(boosts=[pb.Boost(category_id=" ", multiplier=2.0)]), "rules.boosts[0].category_id must not be empty"),
        (
            pb.RankingRules(boosts=[pb.Boost(brand_id="b", multiplier=2.0), pb.Boost(brand_id="b", multiplier=3.0)]),
            "rules.boosts[1] repeats brand_id 'b'",
        ),
        (pb.RankingRules(boosts=[pb.Boost(brand_id=f"b{i}", multiplier=2.0) for i in range(17)]), "at most 16 are allowed"),
    ],
)
def test_bad_rules_are_invalid_argument_on_every_call(rules_server, rules, message) -> None:
    stub = rules_server.stub()
    calls = [
        (stub.SimilarItems, pb.SimilarItemsRequest(item_id="item-7", k=5, rules=rules)),
        (stub.NearestItems, pb.NearestItemsRequest(vector=[1.0] * 16, k=5, rules=rules)),
        (stub.RecommendForUser, pb.RecommendForUserRequest(user_id="alice", k=5, rules=rules)),
        (stub.RecommendForSession, pb.RecommendForSessionRequest(k=5, rules=rules)),
    ]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_empty_rules_change_nothing(rules_server) -> None:
    stub = rules_server.stub()
    req = pb.SimilarItemsRequest(item_id="item-7", k=10)
    with_empty = pb.SimilarItemsRequest(item_id="item-7", k=10, rules=pb.RankingRules())
    assert _items(stub.SimilarItems(with_empty, timeout=10)) == _items(stub.SimilarItems(req, timeout=10))
