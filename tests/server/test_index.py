"""The item index against exact search: upserts, deletes, tombstones, filters, compaction, snapshots."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from server.ann import APPROX_COARSE_MIN_LISTS
from server.index import ABSENT, IndexParams, ItemIndex, LabelMap, build_base, normalise
from server.snapshot import load_snapshot, save_snapshot

DIM = 16


def _data(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return [f"i{j}" for j in range(n)], normalise(x)


def _exact(index: ItemIndex, q: np.ndarray, k: int, allowed=None, exclude=()):
    live = np.flatnonzero(index.live_mask())
    if allowed is not None:
        live = live[allowed[live]]
    live = np.array([lab for lab in live if lab not in set(exclude)], np.int64)
    scores = np.array([index.vector(int(lab))[0] @ q for lab in live])
    order = np.lexsort((live, -scores))[:k]
    return list(live[order])


def _recall(index, queries, k, **kw) -> float:
    hits = 0
    for q in queries:
        got = index.search(q[None, :], k, **kw)[0][0]
        want = _exact(index, q, k, **kw)
        hits += len(set(got.tolist()) & set(want))
    return hits / (k * len(queries))


@pytest.fixture()
def ivf_index() -> ItemIndex:
    ids, x = _data(6000)
    params = IndexParams(nprobe=8, ann_min_items=1000, exact_filter_max=200)
    return ItemIndex.build(DIM, "m1", LabelMap(), params, ids, x)


def test_small_index_is_exact_and_ordered() -> None:
    ids, x = _data(50)
    index = ItemIndex.build(DIM, "m1", LabelMap(), IndexParams(), ids, x)
    labels, scores = index.search(x[:1], 5)[0]
    assert index.labels.id_of(int(labels[0])) == "i0"
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert list(scores) == sorted(scores, reverse=True)
    assert labels.tolist() == _exact(index, x[0], 5)


def test_ivf_recall_against_exact(ivf_index: ItemIndex) -> None:
    _, x = _data(6000)
    assert ivf_index.base.is_ivf
    assert _recall(ivf_index, x[:100], 10) >= 0.95


def test_upsert_replaces_and_delete_tombstones(ivf_index: ItemIndex) -> None:
    rng = np.random.default_rng(3)
    target = normalise(rng.standard_normal((1, DIM)).astype(np.float32))[0]
    ivf_index.upsert("i5", target, ts=10.0)  # moves a base item: base copy becomes a tombstone
    ivf_index.upsert("new", -target, ts=11.0)
    assert ivf_index.tombstones == 1 and ivf_index.delta_rows == 2 and len(ivf_index) == 6001
    labels, scores = ivf_index.search(target[None, :], 3)[0]
    assert ivf_index.labels.id_of(int(labels[0])) == "i5" and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert labels.tolist().count(labels[0]) == 1  # the stale base copy is never returned
    assert ivf_index.delete("i5") and not ivf_index.delete("i5")
    assert ivf_index.label_of("i5") is None
    labels, _ = ivf_index.search(target[None, :], 10)[0]
    assert ivf_index.labels.get("i5") not in labels.tolist()
    labels, _ = ivf_index.search(-target[None, :], 1)[0]
    assert ivf_index.labels.id_of(int(labels[0])) == "new"


def test_exclusions_and_filters_keep_recall(ivf_index: ItemIndex) -> None:
    _, x = _data(6000)
    n = len(ivf_index.labels)
    rng = np.random.default_rng(1)
    small = np.zeros(n, bool)
    small[rng.choice(n, 150, replace=False)] = True  # exact path
    large = np.zeros(n, bool)
    large[rng.choice(n, 1500, replace=False)] = True  # IVF + selector path
    exclude = [int(ivf_index.labels.get(f"i{j}")) for j in range(0, 60, 2)]
    for mask in (small, large):
        assert _recall(ivf_index, x[:50], 10, allowed=mask) >= 0.9
        for q in x[:20]:
            got = ivf_index.search(q[None, :], 10, allowed=mask, exclude=np.array(exclude))[0][0]
            assert mask[got].all() and not set(got.tolist()) & set(exclude)
    assert _recall(ivf_index, x[:50], 10, exclude=exclude) >= 0.95


def test_many_tombstones_switch_to_selector(ivf_index: ItemIndex) -> None:
    for j in range(1500):
        ivf_index.delete(f"i{j}")
    _, x = _data(6000)
    assert ivf_index.tombstones == 1500
    got = ivf_index.search(x[:5], 10)
    dead = {ivf_index.labels.get(f"i{j}") for j in range(1500)}
    assert all(not set(lab.tolist()) & dead and len(lab) == 10 for lab, _ in got)


def test_tombstones_made_after_the_selector_bitmap_is_built_stay_hidden(ivf_index: ItemIndex) -> None:
    """Past ``overfetch_max`` tombstones FAISS skips them through a bitmap that later upserts and deletes keep
    up to date, and a compaction replaces."""
    _, x = _data(6000)
    for j in range(300):
        ivf_index.delete(f"i{j}")
    ivf_index.search(x[:1], 10)  # selector path: the bitmap is built now
    for j in range(300, 350):  # re-embedded far away: the old (base) copy must not answer for them
        ivf_index.upsert(f"i{j}", -x[j])
    for j in range(350, 400):
        ivf_index.delete(f"i{j}")
    hidden = {ivf_index.labels.get(f"i{j}") for j in range(400)}
    for q in x[300:400:5]:
        got = ivf_index.search(q[None, :], 10, exclude=np.asarray([ivf_index.labels.get("i1000")]))[0][0].tolist()
        assert len(got) == 10 and not set(got) & hidden and ivf_index.labels.get("i1000") not in got
    assert _recall(ivf_index, x[400:450], 10) >= 0.95

    labels, vecs, versions, cents = ivf_index.compaction_input()
    ivf_index.apply_compaction(build_base(vecs, labels, ivf_index.params, cents), versions)
    for j in range(500, 800):  # enough tombstones of the new base for the selector path again
        ivf_index.delete(f"i{j}")
    assert ivf_index.tombstones == 300
    hidden |= {ivf_index.labels.get(f"i{j}") for j in range(500, 800)}
    for q in x[500:800:10]:
        got = ivf_index.search(q[None, :], 10)[0][0].tolist()
        assert len(got) == 10 and not set(got) & hidden
    assert _recall(ivf_index, x[400:450], 10) >= 0.95


def test_compaction_keeps_changes_made_while_building(ivf_index: ItemIndex) -> None:
    rng = np.random.default_rng(2)
    for j in range(100):
        ivf_index.upsert(f"n{j}", normalise(rng.standard_normal((1, DIM)))[0])
    ivf_index.delete("i1")
    labels, vecs, versions, cents = ivf_index.compaction_input()
    new_base = build_base(vecs, labels, ivf_index.params, cents)
    moved = normalise(rng.standard_normal((1, DIM)).astype(np.float32))[0]
    ivf_index.upsert("i2", moved)  # lands while the new base is being built
    ivf_index.delete("n0")
    ivf_index.apply_compaction(new_base, versions)
    assert ivf_index.delta_rows == 1 and ivf_index.tombstones == 2
    assert ivf_index.label_of("n0") is None and ivf_index.label_of("i1") is None
    assert len(ivf_index) == 6000 + 100 - 2
    labels, scores = ivf_index.search(moved[None, :], 1)[0]
    assert ivf_index.labels.id_of(int(labels[0])) == "i2" and scores[0] == pytest.approx(1.0, abs=1e-5)
    _, x = _data(6000)
    assert _recall(ivf_index, x[100:150], 10) >= 0.95


def test_snapshot_round_trip(tmp_path, ivf_index: ItemIndex) -> None:
    ivf_index.upsert("fresh", np.ones(DIM), in_scale=0.25)
    ivf_index.delete("i3")
    users = {"u1": (np.ones(DIM, np.float32), 5.0)}
    save_snapshot(tmp_path / "snap", ivf_index, users, stream_id="17-0")
    snap = load_snapshot(tmp_path / "snap", ivf_index.params)
    assert snap is not None and snap.stream_id == "17-0" and snap.index.model_version == "m1"
    restored = snap.index
    assert len(restored) == len(ivf_index) and restored.tombstones == ivf_index.tombstones
    assert restored.label_of("i3") is None and restored.label_of("fresh") is not None
    _, x = _data(6000)
    for q in x[:10]:
        a = ivf_index.search(q[None, :], 10)[0][0]
        b = restored.search(q[None, :], 10)[0][0]
        assert [ivf_index.labels.id_of(int(x)) for x in a] == [restored.labels.id_of(int(x)) for x in b]
    assert np.allclose(snap.users["u1"][0], 1.0) and snap.users["u1"][1] == 5.0
    assert load_snapshot(tmp_path / "missing", ivf_index.params) is None
    # what sessions are embedded from: each item's vector and in_scale (0 where none was given)
    labels = np.array([restored.label_of("fresh"), restored.label_of("i4")], np.int64)
    vecs, scales = restored.user_side(labels)
    assert np.allclose(vecs[0], 1.0) and scales.tolist() == [0.25, 0.0]
    assert ABSENT == 0


@pytest.mark.parametrize("size", [150, 1500])  # exact path / IVF selector path
def test_cached_filter_state_follows_changes(ivf_index: ItemIndex, size: int) -> None:
    n = len(ivf_index.labels)
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(4).choice(n, size, replace=False)] = True
    target = normalise(np.random.default_rng(9).standard_normal((1, DIM)).astype(np.float32))[0]
    before = ivf_index.search(target[None, :], 5, allowed=mask)[0][0]
    member = int(np.flatnonzero(mask)[7])
    ivf_index.upsert(ivf_index.labels.id_of(member), target)
    labels, scores = ivf_index.search(target[None, :], 5, allowed=mask)[0]
    assert labels[0] == member and scores[0] == pytest.approx(1.0, abs=1e-5)
    labels, _ = ivf_index.search(target[None, :], 5, allowed=mask, exclude=np.array([member]))[0]
    assert member not in labels.tolist() and mask[labels].all()
    ivf_index.delete(ivf_index.labels.id_of(member))
    after = ivf_index.search(target[None, :], 5, allowed=mask)[0][0]
    assert member not in after.tolist() and len(after) == 5 and len(before) == 5


@pytest.mark.parametrize("n_excluded", [1, 6])  # both ways of matching exclusions (few: comparisons; many: isin)
def test_exclusions_apply_to_the_delta_and_the_base(ivf_index: ItemIndex, n_excluded: int) -> None:
    _, x = _data(6000)
    for j in range(8):  # near copies of i0 in the delta, next to i0 itself in the base
        ivf_index.upsert(f"copy-{j}", normalise(x[:1] + 0.001 * (j + 1))[0])
    excluded = [ivf_index.labels.get(f"copy-{j}") for j in range(n_excluded - 1)] + [ivf_index.labels.get("i0")]
    got = ivf_index.search(x[:1], 5, exclude=np.array(excluded))[0][0].tolist()
    assert not set(got) & set(excluded)
    assert got == _exact(ivf_index, x[0], 5, exclude=excluded)


def test_delta_rows_enter_the_answer_exactly_when_they_beat_the_base() -> None:
    """The delta's merge is skipped when no row reaches the base's k-th score: rows above it (and one tied with
    it) must still be in the answer, rows below it must not, and the answer equals exact search."""
    ids, x = _data(400)
    index = ItemIndex.build(DIM, "m1", LabelMap(), IndexParams(), ids, x)  # flat base: exact
    q = x[0]
    base_labels, base_scores = index.search(q[None, :], 5)[0]
    rng = np.random.default_rng(7)
    for j in range(30):  # far from q: below the floor
        index.upsert(f"far-{j}", normalise(-q[None, :] + 0.3 * rng.standard_normal((1, DIM)))[0])
    labels, _ = index.search(q[None, :], 5)[0]
    assert labels.tolist() == base_labels.tolist() == _exact(index, q, 5)

    index.upsert("tie", x[int(base_labels[4])])  # the k-th's own vector: ties it, wins on label? exact decides
    index.upsert("near", normalise(q[None, :] + 0.01)[0])  # beats all but q itself
    labels, scores = index.search(q[None, :], 5)[0]
    assert labels.tolist() == _exact(index, q, 5)
    assert index.labels.get("near") in labels.tolist()
    assert list(scores) == sorted(scores, reverse=True)


@pytest.mark.parametrize("ivf_dim", [0, 8])  # 8: an IVF over the leading 8 of 16, re-ranked unlocked at the full width
def test_searches_without_the_lock_never_see_a_half_changed_index(ivf_dim: int) -> None:
    """Searches let the lock go while FAISS runs over the base (and re-ranks), as the engine's do, while a writer
    re-embeds, deletes and compacts under it. No answer may hold an item twice, an item deleted before the search
    began, or a score no vector of the item ever had; and some searches must have found the index changed and run
    again (else this test exercised nothing)."""
    import threading
    from contextlib import contextmanager

    names, vecs = _data(6000, seed=3)
    params = IndexParams(nprobe=4, ann_min_items=1000, ivf_dim=ivf_dim, refine=64)
    index = ItemIndex.build(DIM, "m1", LabelMap(), params, names, vecs)
    lock = threading.Lock()

    @contextmanager
    def unlocked():
        lock.release()
        try:
            yield
        finally:
            lock.acquire()

    history = {index.label_of(n): [v] for n, v in zip(names, vecs)}  # every vector each item had
    deleted: set[int] = set()
    stop = threading.Event()
    failures: list[str] = []
    rng = np.random.default_rng(4)
    queries = normalise(rng.standard_normal((64, DIM)).astype(np.float32))

    def write() -> None:
        wrng = np.random.default_rng(5)
        j = 0
        while not stop.is_set():
            j += 1
            with lock:
                for label in wrng.choice(3000, 20):  # re-embed (tombstones in the base) ...
                    v = normalise(wrng.standard_normal((1, DIM)).astype(np.float32))[0]
                    index.upsert(names[label], v)
                    history[int(label)].append(index.vector(int(label))[0])
                doomed = 3000 + j % 3000  # ... and delete others
                if doomed not in deleted and index.delete(names[doomed]):
                    deleted.add(doomed)
            if j % 40 == 0:
                with lock:
                    labels, vs, versions, cents = index.compaction_input()
                built = build_base(vs, labels, index.params, cents)
                with lock:
                    index.apply_compaction(built, versions)

    def read(seed: int) -> None:
        qrng = np.random.default_rng(seed)
        for _ in range(600):
            q = queries[qrng.integers(len(queries))]
            with lock:
                gone = set(deleted)
                labels, scores = index.search(q[None, :], 10, unlocked=unlocked)[0]
            got = labels.tolist()
            if len(set(got)) != len(got):
                failures.append(f"an item twice: {got}")
            if gone & set(got):
                failures.append(f"deleted before the search began: {gone & set(got)}")
            for label, score in zip(got, scores.tolist()):
                if not any(abs(float(v @ q) - score) < 1e-4 for v in history[label]):
                    failures.append(f"item {label} scored {score}, which none of its vectors gives")

    writer = threading.Thread(target=write)
    readers = [threading.Thread(target=read, args=(s,)) for s in (10, 11)]
    writer.start()
    for t in readers:
        t.start()
    for t in readers:
        t.join(120)
    stop.set()
    writer.join(120)
    assert not failures, failures[:5]
    assert index.stale_searches > 0
    with lock:  # and once quiet, the answers are the exact ones where recall allows: spot-check they agree
        for q in queries[:8]:
            assert index.search(q[None, :], 10, unlocked=unlocked)[0][0].tolist() == index.search(q[None, :], 10)[0][0].tolist()


@pytest.mark.parametrize("ivf_dim", [0, 8])  # 8: the exact re-rank at the full width runs unlocked too
@pytest.mark.parametrize("tombstones", [0, 300])  # 300: FAISS skips tombstones through the live bitmap
def test_a_change_made_while_faiss_runs_unlocked_is_not_missed(tombstones: int, ivf_dim: int) -> None:
    """While one search has the lock let go, another thread re-embeds the query's best neighbour far away:
    the answer must be the one after that change (the old vector's score is gone), found by searching again."""
    import threading
    from contextlib import contextmanager

    names, vecs = _data(6000, seed=6)
    params = IndexParams(nprobe=8, ann_min_items=1000, ivf_dim=ivf_dim, refine=64)
    index = ItemIndex.build(DIM, "m1", LabelMap(), params, names, vecs)
    for j in range(tombstones):  # re-embedded in place: tombstones in the base, the same vectors in the delta
        index.upsert(names[5000 + j], vecs[5000 + j])
    q = vecs[7]
    neighbour = int(index.search(q[None, :], 2, exclude=np.array([7]))[0][0][0])
    lock = threading.Lock()

    @contextmanager
    def unlocked_with_a_change():
        lock.release()
        try:

            def change():
                with lock:
                    index.upsert(names[neighbour], -q)

            t = threading.Thread(target=change)
            t.start()
            t.join()
            yield
        finally:
            lock.acquire()

    with lock:
        got = index.search(q[None, :], 10, exclude=np.array([7]), unlocked=unlocked_with_a_change)[0]
        want = index.search(q[None, :], 10, exclude=np.array([7]))[0]
    assert neighbour not in got[0].tolist()
    assert got[0].tolist() == want[0].tolist() and np.allclose(got[1], want[1])
    assert index.stale_searches == 1


@pytest.mark.parametrize(
    ("codes", "dim", "ivf_dim", "held"),
    [("flat", DIM, DIM // 2, "flat"), ("pq4", 128, 64, "pq4"), ("pq4", 128, 0, "pq4"), ("pq4", DIM, DIM // 2, "flat")],
)
def test_ivf_over_leading_components_re_ranks_at_full_width(tmp_path, codes: str, dim: int, ivf_dim: int, held: str) -> None:
    """An IVF holding the leading half of each vector (components of decaying scale, as the served model's are),
    as floats or as PQ codes, or PQ codes of all of it, returns exact full-width inner products, keeps recall, and
    survives snapshots, filters and compaction. Too narrow an IVF for PQ codes keeps floats."""
    rng = np.random.default_rng(5)
    n = 6000
    scale = np.geomspace(1.0, 0.05, dim).astype(np.float32)
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    x = (centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)) * scale
    x *= rng.uniform(0.5, 2.0, (n, 1)).astype(np.float32)  # norms vary, like a popularity prior
    params = IndexParams(ann_min_items=1000, nprobe=32, ivf_dim=ivf_dim, refine=128, ivf_codes=codes)
    width = ivf_dim or dim
    index = ItemIndex.build(dim, "m1", LabelMap(), params, [f"i{j}" for j in range(n)], x)
    assert index.base.is_ivf and index.base.width == width and index.base.codes == held
    queries = x[rng.choice(n, 40, replace=False)] * 1.3
    labels, scores = index.search(queries[:1], 10)[0]
    assert np.allclose(scores, x[labels] @ queries[0], atol=1e-4)  # full-width scores, best first
    assert list(scores) == sorted(scores, reverse=True)
    assert _recall(index, queries, 10) >= 0.9
    allowed = np.zeros(n, bool)
    allowed[rng.choice(n, 3000, replace=False)] = True
    assert _recall(index, queries, 10, allowed=allowed) >= 0.9
    labels, scores = index.search(queries[:1], 10, allowed=allowed)[0]  # the exact path: re-ranked too
    assert allowed[labels].all() and np.allclose(scores, x[labels] @ queries[0], atol=1e-4)
    save_snapshot(tmp_path / "snap", index, {}, "0-0")
    snap = load_snapshot(tmp_path / "snap", params)
    again = snap.index
    assert again.base.width == width and again.base.codes == held
    assert np.array_equal(again.search(queries[:5], 10)[0][0], index.search(queries[:5], 10)[0][0])
    live, vecs, versions, cents = index.compaction_input()
    index.apply_compaction(build_base(vecs, live, params, cents), versions)
    assert index.base.width == width and index.base.codes == held and _recall(index, queries, 10) >= 0.9


def test_many_lists_are_assigned_by_pq_codes_refined_exactly_keeping_recall_and_snapshots(tmp_path) -> None:
    """From APPROX_COARSE_MIN_LISTS lists the coarse quantizer shortlists lists by PQ codes and picks them by exact
    centroid scores: the best list (where an item is added) is nearly always the exact best, most of the probed
    lists are the exact ones, their scores are exact, the answers keep recall against exact search, and a snapshot
    brings back the same quantizer and search settings (FAISS does not save ``implem`` or ``nprobe``)."""
    rng = np.random.default_rng(9)
    n, dim = 48_000, 128
    scale = np.geomspace(1.0, 0.05, dim).astype(np.float32)
    centres = rng.standard_normal((300, dim)).astype(np.float32)
    x = (centres[rng.integers(0, 300, n)] + rng.standard_normal((n, dim)).astype(np.float32)) * scale
    params = IndexParams(ann_min_items=1000, nlist=APPROX_COARSE_MIN_LISTS, nprobe=64, ivf_dim=64, refine=200, ivf_codes="pq4")
    index = ItemIndex.build(dim, "m1", LabelMap(), params, [f"i{j}" for j in range(n)], x)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index.base.index))
    assert ivf.nlist == APPROX_COARSE_MIN_LISTS and index.base.codes == "pq4"
    quantizer = faiss.downcast_index(ivf.quantizer)
    assert isinstance(quantizer, faiss.IndexRefineFlat)
    queries = x[rng.choice(n, 50, replace=False)]
    exact_lists = faiss.knn(np.ascontiguousarray(queries[:, :64]), index.base.centroids, 64, metric=faiss.METRIC_INNER_PRODUCT)[1]
    scores, picked = quantizer.search(np.ascontiguousarray(queries[:, :64]), 64)
    overlap = np.mean([len(set(a) & set(b)) / 64 for a, b in zip(picked, exact_lists)])
    assert overlap >= 0.6
    assert np.mean(picked[:, 0] == exact_lists[:, 0]) >= 0.95
    assert np.allclose(scores[:, 0], np.einsum("ij,ij->i", queries[:, :64], index.base.centroids[picked[:, 0]]), atol=1e-4)
    want = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    got = [index.search(q[None, :], 10)[0][0] for q in queries]
    assert np.mean([len(set(g.tolist()) & set(w.tolist())) / 10 for g, w in zip(got, want)]) >= 0.9
    save_snapshot(tmp_path / "snap", index, {}, "0-0")
    again = load_snapshot(tmp_path / "snap", params).index
    ivf_again = faiss.downcast_index(faiss.extract_index_ivf(again.base.index))
    assert isinstance(faiss.downcast_index(ivf_again.quantizer), faiss.IndexRefineFlat)
    assert (ivf_again.nprobe, ivf_again.implem) == (ivf.nprobe, ivf.implem) == (64, 11)
    for q, g in zip(queries[:10], got):
        assert np.array_equal(again.search(q[None, :], 10)[0][0], g)
