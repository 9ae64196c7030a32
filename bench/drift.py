"""Interest drift on the served path: does a shopper's fresh interest reach their top 10, and how fast?

    python -m bench.drift [--shoppers 3000] [--events-per 30] [--drift-share 0.05] [--out FILE]

Starts Neo4j, Redis, a Celery worker and the gRPC server (``bench._stack``). Synthetic shoppers, each with one
planted interest (a community of items sharing a category path and brands, so the catalogue looks like a shop),
view, click, cart and buy over the last 60 days; their events go in through the server's ``IngestEvents``, then
the worker trains the served model on the live graph and rolls it out. With the recompute scheduler running, a
share of shoppers each click 6 and buy 2 items of another interest within one minute, sent through
``IngestEvents``. From the acknowledgement on, that shopper's ``RecommendForUser`` top 10 is polled until at
least 3 come from the new interest (the time to shift) or ``--timeout-s`` passes. Meanwhile shoppers who did not
drift are asked too: their top 10 should stay in their interest.

Then the item side: one item new since training per interest (up to ``--new-items``), bought by 20 shoppers of
that interest one after another; from the 20th acknowledgement, 5 other shoppers of the interest who never met it
are asked until it is in their top 10 (``new_items`` in the RESULT: how many saw it, and when).

The peer, measured in the same run, is popularity: the server's own answer for a shopper it does not know
(its popular items), less each shopper's purchases, i.e. what the new interest gets by chance.

The served model is the one at the service's defaults. Variants are measured with the same script through the
worker's environment, e.g. ``IG_MODEL_RECENCY_BOOST=30 IG_MODEL_SELECT_FILTER=false python -m bench.drift``;
the RESULT's ``config`` is read from the rolled-out checkpoint, so it shows what was served. The server's
short-term interest (``server.short_term``) is on by default; ``IG_SERVER_SHORT_TERM_SHARE=0`` turns it off.
Its serving cost is measured last (``short_term_cost``): a second server over the same graph with it off, and
``RecommendForUser`` of the same shoppers (the drifted ones first) on both, alternating rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import typer

from bench._common import emit_result
from bench._stack import Pipeline, _start_server, log, pipeline, start_scheduler
from graphdb.pseudonym import pseudonymise
from ml.checkpoint import load_checkpoint, resolve
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server.settings import ServerSettings
from workers import process

DAY_S = 86400.0
_UPDATED = "UNWIND $ids AS id MATCH (u:User {id: id}) RETURN u.id AS id, u.emb_updated_at AS at"
K = 10
SHIFTED_AT = 3  # of the top 10 from the new interest
STREAMS = 4  # IngestEvents streams open at once (the server's default limit is 8)
NEW_ITEM_BUYERS = 20  # a new item's buyers before its like shoppers are watched (issue 16: "its 20th purchase")
NEW_ITEM_WATCHERS = 5  # shoppers of the same interest who never met it
RANK_DEPTH = 100  # how deep a new item's rank in a watcher's answer is looked for
# (category path, brands, product noun): one planted interest each; more interests than these repeat them
# with a numbered sub-category.
INTERESTS = [
    (["Electronics", "Audio", "Headphones"], ["Sonora", "Beatline"], "headphones"),
    (["Electronics", "Cameras"], ["Lumix Pro", "Optica"], "camera"),
    (["Computers", "Laptops"], ["Zenbyte", "Corel"], "laptop"),
    (["Home", "Kitchen", "Cookware"], ["Castiron Co", "Panhaus"], "frying pan"),
    (["Home", "Bedding"], ["Dreamweave", "Linenly"], "duvet cover"),
    (["Garden", "Tools"], ["Greenthumb", "Spadeworks"], "pruning shears"),
    (["Sports", "Running"], ["Stride", "Pacer"], "running shoes"),
    (["Sports", "Cycling"], ["Velox", "Chainring"], "bike helmet"),
    (["Fashion", "Women", "Dresses"], ["Maison Lila", "Verano"], "summer dress"),
    (["Fashion", "Men", "Shoes"], ["Oxford & Co", "Brogan"], "leather shoes"),
    (["Beauty", "Skincare"], ["Dermaglow", "Purea"], "face serum"),
    (["Toys", "Building Sets"], ["Brickfield", "Constructo"], "building set"),
    (["Books", "Fiction"], ["Inkwell Press", "Harbor Books"], "novel"),
    (["Grocery", "Coffee"], ["Roastery 9", "Bean Bros"], "coffee beans"),
    (["Pet Supplies", "Dogs"], ["Pawfect", "Barkley"], "dog bed"),
    (["Baby", "Strollers"], ["Cradle", "Tinywheels"], "stroller"),
    (["Automotive", "Car Care"], ["Shinex", "Autoglanz"], "car wax"),
    (["Office", "Stationery"], ["Penwright", "Papyra"], "notebook"),
    (["Musical Instruments", "Guitars"], ["Fretline", "Tonewood"], "acoustic guitar"),
    (["Health", "Vitamins"], ["Vitara", "Nutrix"], "multivitamin"),
]
# An ordinary history event's type: a funnel, most views, few purchases.
FUNNEL = [(pb.EVENT_TYPE_VIEW, 0.5), (pb.EVENT_TYPE_CLICK, 0.3), (pb.EVENT_TYPE_ADD_TO_CART, 0.12), (pb.EVENT_TYPE_PURCHASE, 0.08)]


@dataclass
class Shop:
    """The synthetic catalogue and shoppers: each item's interest, each shopper's home interest and purchases."""

    items: list[str]
    interest: dict[str, int]  # item id -> interest
    info: dict[str, pb.ItemInfo]
    home: dict[str, int]  # shopper id -> interest
    members: list[list[str]]  # per interest: its items
    weights: list[np.ndarray]  # per interest: its items' popularity (sums to 1)
    bought: dict[str, set[str]] = field(default_factory=dict)

    def pick(self, interest: int, rng: np.random.Generator, size: int = 1) -> list[str]:
        own = self.members[interest]
        return [own[j] for j in rng.choice(len(own), size=size, replace=False, p=self.weights[interest])]


def make_shop(n_interests: int, items_per: int, shoppers: int, seed: int) -> Shop:
    rng = np.random.default_rng(seed)
    items, interest, info, members, weights = [], {}, {}, [], []
    for c in range(n_interests):
        path, brands, noun = INTERESTS[c % len(INTERESTS)]
        path = path if c < len(INTERESTS) else [*path, f"Range {c // len(INTERESTS) + 1}"]
        for j in range(items_per):
            item = f"sku-{c:02d}-{j:04d}"
            brand = brands[j % len(brands)]
            items.append(item)
            interest[item] = c
            info[item] = pb.ItemInfo(
                title=f"{brand} {noun} {100 + j}",
                description=f"{noun} by {brand}, model {100 + j}",
                brand=brand,
                categories=[pb.CategoryPath(names=path)],
            )
        w = 1.0 / np.arange(1, items_per + 1) ** 0.8  # Zipf-like popularity inside an interest
        weights.append(rng.permutation(w / w.sum()))
        members.append(items[-items_per:])
    home = {f"shopper-{u:05d}": u % n_interests for u in range(shoppers)}
    return Shop(items, interest, info, home, members, weights)


def history(shop: Shop, events_per: int, noise: float, now: float, seed: int) -> list[pb.Event]:
    """Each shopper's events over the last 60 days (up to a day ago), mostly in their home interest; ``noise``
    of them on any item. The first event of each item carries its catalogue entry. Sorted by time."""
    rng = np.random.default_rng(seed)
    types, p = zip(*FUNNEL)
    raw = []
    for user, c in shop.home.items():
        n = max(1, int(rng.integers(events_per // 2, events_per + events_per // 2 + 1)))
        times = np.sort(rng.uniform(now - 60 * DAY_S, now - DAY_S, size=n))
        for k, ts in enumerate(times):
            item = shop.items[int(rng.integers(len(shop.items)))] if rng.random() < noise else shop.pick(c, rng)[0]
            kind = types[int(rng.choice(len(types), p=p))]
            if kind == pb.EVENT_TYPE_PURCHASE:
                shop.bought.setdefault(user, set()).add(item)
            raw.append(pb.Event(event_id=f"h-{user}-{k}", user_id=user, type=kind, item_id=item, ts=float(ts)))
    raw.sort(key=lambda e: e.ts)
    seen: set[str] = set()
    for e in raw:
        if e.item_id not in seen:
            seen.add(e.item_id)
            e.item.CopyFrom(shop.info[e.item_id])
    return raw


def drift_events(shop: Shop, user: str, new: int, now: float, rng: np.random.Generator) -> list[pb.Event]:
    """Within the last minute: 6 clicks on items of interest ``new``, the 2nd and 5th of them bought."""
    clicked = shop.pick(new, rng, size=6)
    steps = [(pb.EVENT_TYPE_CLICK, clicked[0]), (pb.EVENT_TYPE_CLICK, clicked[1]), (pb.EVENT_TYPE_CLICK, clicked[2])]
    steps += [(pb.EVENT_TYPE_PURCHASE, clicked[1]), (pb.EVENT_TYPE_CLICK, clicked[3]), (pb.EVENT_TYPE_CLICK, clicked[4])]
    steps += [(pb.EVENT_TYPE_CLICK, clicked[5]), (pb.EVENT_TYPE_PURCHASE, clicked[4])]
    shop.bought.setdefault(user, set()).update((clicked[1], clicked[4]))
    return [
        pb.Event(event_id=f"d-{user}-{k}", user_id=user, type=kind, item_id=item, ts=now - 60 + 60 * k / (len(steps) - 1))
        for k, (kind, item) in enumerate(steps)
    ]


async def ingest(stub: pb_grpc.InterestServiceStub, events: list[pb.Event], batch: int = 1000) -> None:
    """One IngestEvents stream; every event must be accepted."""
    reqs = [pb.IngestEventsRequest(events=events[s : s + batch]) for s in range(0, len(events), batch)]
    reply = await stub.IngestEvents(iter(reqs), timeout=600)
    if reply.accepted != len(events):
        raise RuntimeError(
            f"{len(events) - reply.accepted} events not accepted: {list(reply.rejected)[:3]} duplicates={reply.duplicates}"
        )


async def top_k(stub: pb_grpc.InterestServiceStub, user: str, k: int = K) -> pb.RecommendForUserResponse:
    return await stub.RecommendForUser(pb.RecommendForUserRequest(user_id=user, k=k), timeout=30)


def share(items: list[str], shop: Shop, interest: int) -> float:
    return sum(shop.interest.get(i) == interest for i in items) / K


@dataclass
class Shift:
    user: str
    new: int
    ack: float  # monotonic
    sent_wall: float = 0.0
    shift_s: float | None = None
    polls: int = 0


async def follow(
    stub: pb_grpc.InterestServiceStub,
    shop: Shop,
    s: Shift,
    events: list[pb.Event],
    poll_s: float,
    timeout_s: float,
    streams: asyncio.Semaphore,
) -> None:
    """Send the drift, then poll the shopper's top 10 until ``SHIFTED_AT`` come from the new interest."""
    async with streams:  # the server takes a bounded number of concurrent streams (IG_SERVER_STREAM_THREADS)
        s.sent_wall = time.time()
        await ingest(stub, events)
    s.ack = time.monotonic()
    while True:
        answer = await top_k(stub, s.user)
        s.polls += 1
        if sum(shop.interest.get(i.item_id) == s.new for i in answer.items) >= SHIFTED_AT:
            s.shift_s = time.monotonic() - s.ack
            return
        if time.monotonic() - s.ack >= timeout_s:
            return
        await asyncio.sleep(poll_s)


async def control(stub: pb_grpc.InterestServiceStub, shop: Shop, users: list[str], done: asyncio.Event, pace_s: float) -> list[float]:
    """While the drift runs: shoppers who did not drift, one after another (at least one pass); their home shares."""
    shares: list[float] = []
    n = 0
    while not done.is_set() or n < len(users):
        u = users[n % len(users)]
        shares.append(share([i.item_id for i in (await top_k(stub, u)).items], shop, shop.home[u]))
        n += 1
        await asyncio.sleep(pace_s)
    return shares


@dataclass
class NewItem:
    item: str
    interest: int
    buyers: list[str]
    watchers: list[str]
    ack: float = 0.0  # monotonic, the last buyer's acknowledgement
    seen_s: dict[str, float] = field(default_factory=dict)  # watcher -> seconds from ack to the item in their top 10
    rank: dict[str, int | None] = field(default_factory=dict)  # watcher -> the item's rank after the wait
    strangers: list[str] = field(default_factory=list)  # shoppers of another interest: it should not reach them
    stranger_hits: int = 0  # strangers with the item in their top 10 after the wait


async def launch(
    stub: pb_grpc.InterestServiceStub,
    n: NewItem,
    info: pb.ItemInfo | None,
    poll_s: float,
    timeout_s: float,
    streams: asyncio.Semaphore,
) -> None:
    """A new item bought by its buyers one after another (each a click then a purchase, its own IngestEvents
    stream), then its watchers (shoppers of the same interest who never met it) asked until it is in their top 10."""
    for b, user in enumerate(n.buyers):
        now = time.time()
        events = [
            pb.Event(event_id=f"n-{n.item}-{user}-c", user_id=user, type=pb.EVENT_TYPE_CLICK, item_id=n.item, ts=now - 1, item=info),
            pb.Event(event_id=f"n-{n.item}-{user}-p", user_id=user, type=pb.EVENT_TYPE_PURCHASE, item_id=n.item, ts=now),
        ]
        async with streams:
            await ingest(stub, events)
    n.ack = time.monotonic()
    waiting = set(n.watchers)
    while waiting and time.monotonic() - n.ack < timeout_s:
        for u in sorted(waiting):
            if n.item in {i.item_id for i in (await top_k(stub, u)).items}:
                n.seen_s[u] = time.monotonic() - n.ack
                waiting.discard(u)
        await asyncio.sleep(poll_s)
    for u in n.watchers:  # where it stands in the end, within the top RANK_DEPTH (None: below)
        ranked = [i.item_id for i in (await top_k(stub, u, k=RANK_DEPTH)).items]
        n.rank[u] = ranked.index(n.item) + 1 if n.item in ranked else None
    for u in n.strangers:
        n.stranger_hits += n.item in {i.item_id for i in (await top_k(stub, u)).items}


async def new_items(
    stub: pb_grpc.InterestServiceStub,
    shop: Shop,
    skip: set[str],
    count: int,
    buyers: int,
    watchers: int,
    poll_s: float,
    timeout_s: float,
    with_info: bool = True,
) -> dict:
    """Items new since training, one per interest: from the last buyer's acknowledgement until the item is in the
    top 10 of shoppers like its buyers (issue 16: the item side in real time, without a retrain)."""
    launches = []
    for c in range(min(count, len(shop.members))):
        like = [u for u in shop.home if shop.home[u] == c and u not in skip]
        path, brands, noun = INTERESTS[c % len(INTERESTS)]
        item = f"sku-{c:02d}-new"
        info = (
            pb.ItemInfo(title=f"{brands[0]} {noun} new", brand=brands[0], categories=[pb.CategoryPath(names=path)])
            if with_info
            else None
        )
        other = (c + 1) % len(shop.members)
        strangers = [u for u in shop.home if shop.home[u] == other and u not in skip][-watchers:]
        launches.append((NewItem(item, c, like[:buyers], like[buyers : buyers + watchers], strangers=strangers), info))
    streams = asyncio.Semaphore(STREAMS)
    await asyncio.gather(*(launch(stub, n, info, poll_s, timeout_s, streams) for n, info in launches))
    times = [n.seen_s.get(u, float("inf")) for n, _ in launches for u in n.watchers]
    return {
        "items": len(launches),
        "buyers_each": buyers,
        "watchers_each": watchers,
        "appeared": sum(t < float("inf") for t in times),
        "asked": len(times),
        "appeared_within_2s": sum(t <= 2.0 for t in times),
        "appear_p50_s": percentile(times, 50),
        "appear_p99_s": percentile(times, 99),
        # the item's rank in each watcher's answer after the wait (within the top RANK_DEPTH; null: below)
        # shoppers of the next interest with the item in their top 10 after the wait (a prior that floods would show)
        "stranger_hits": sum(n.stranger_hits for n, _ in launches),
        "strangers_asked": sum(len(n.strangers) for n, _ in launches),
        "ranks": sorted((r for n, _ in launches for r in n.rank.values()), key=lambda r: (r is None, r or 0)),
    }


def percentile(values: list[float], q: float) -> float | None:
    """``q``-th percentile with shoppers that never shifted counted as infinitely slow (None if it lands there)."""
    v = float(np.percentile(np.asarray(values, dtype=np.float64), q, method="higher"))
    return None if np.isinf(v) else round(v, 3)


async def rewritten(p: Pipeline, shifts: list[Shift], wait_s: float) -> int:
    """How many drifted shoppers' vectors were written to Neo4j after their events were sent (the vector is on
    the delta stream before that write), waiting up to ``wait_s`` for all of them."""
    key = p.graph.pseudonym_key.get_secret_value()
    ids = {pseudonymise(key, s.user): s.sent_wall for s in shifts}
    deadline = time.monotonic() + wait_s
    while True:
        rows = (await asyncio.to_thread(p.driver.execute_query, _UPDATED, ids=list(ids))).records
        n = sum((r["at"] or 0.0) >= ids[r["id"]] for r in rows)
        if n == len(ids) or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.2)


async def short_term_cost(on_port: int, off_port: int, users: list[str], rounds: int = 3) -> dict:
    """RecommendForUser latency of the same shoppers on the served server (short-term interest on) and on a second
    server over the same graph with ``IG_SERVER_SHORT_TERM_SHARE=0``, alternating rounds, one call at a time."""
    lat: dict[str, list[float]] = {"on": [], "off": []}
    answers: dict[str, dict[str, list[str]]] = {"on": {}, "off": {}}
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{on_port}") as on_ch,
        grpc.aio.insecure_channel(f"127.0.0.1:{off_port}") as off_ch,
    ):
        stubs = {"on": pb_grpc.InterestServiceStub(on_ch), "off": pb_grpc.InterestServiceStub(off_ch)}
        for mode in ("on", "off"):  # warm both
            for u in users[:20]:
                await top_k(stubs[mode], u)
        for _ in range(rounds):
            for mode in ("on", "off"):
                for u in users:
                    t0 = time.perf_counter()
                    answer = await top_k(stubs[mode], u)
                    lat[mode].append(time.perf_counter() - t0)
                    answers[mode][u] = [i.item_id for i in answer.items]

    def ms(values: list[float], q: float) -> float:
        return round(1000 * float(np.percentile(values, q)), 3)

    out: dict = {m: {"p50_ms": ms(v, 50), "p99_ms": ms(v, 99), "calls": len(v)} for m, v in lat.items()}
    out["p50_ratio"] = round(out["on"]["p50_ms"] / out["off"]["p50_ms"], 3)
    out["p99_ratio"] = round(out["on"]["p99_ms"] / out["off"]["p99_ms"], 3)
    out["answers_differing"] = sum(answers["on"][u] != answers["off"][u] for u in users)
    out["shoppers"] = len(users)
    return out


def served_config(p: Pipeline) -> dict:
    """What was served: the rolled-out checkpoint's model and how it was selected."""
    ck = load_checkpoint(resolve(Path(p.env["IG_WORKER_MODEL_DIR"]), p.version))
    m, ms, ts = ck.model, ck.model_settings, ck.train_settings
    sel = next((h for h in ck.metrics.get("history", []) if "selected" in h), {}).get("selected", {})
    return {
        "model": type(m).__name__,
        "version": p.version,
        "dim": int(getattr(m, "dim", ms.get("dim", 0))),
        "filter_power": sel.get("filter_power", ms.get("filter_power")),
        "user_norm": getattr(m, "user_norm", None),
        "item_norm": getattr(m, "item_norm", None),
        "recency_boost": getattr(m, "recency_boost", None),
        "recency_scale": getattr(m, "recency_scale", None),
        "select_filter": ms.get("select_filter"),
        "user_cap": ms.get("user_cap"),
        "val_split": ts.get("val_split"),
        "served_epochs": ts.get("served_epochs"),
        "half_life_days": p.graph.half_life_days,
        # the server's short-term interest (server.short_term), from the environment the server reads
        "short_term": {k: v for k, v in ServerSettings().model_dump().items() if k.startswith("short_term_")},
    }


async def measure(
    p: Pipeline,
    shop: Shop,
    drifted: list[str],
    controls: list[str],
    poll_s: float,
    timeout_s: float,
    concurrency: int,
    seed: int,
    new_item_count: int = 10,
    new_item_info: bool = True,
) -> dict:
    rng = np.random.default_rng(seed)
    n_interests = len(shop.members)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{p.server_port}") as channel:
        stub = pb_grpc.InterestServiceStub(channel)
        # the server switches to the rolled-out version from the delta stream: wait until it answers with it
        deadline = time.monotonic() + 120
        while (answer := await top_k(stub, controls[0])).model_version != p.version or answer.cold_start:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not switch to {p.version}: {answer.model_version}")
            await asyncio.sleep(0.2)
        stranger = await top_k(stub, "bench-drift-stranger", k=200)  # a shopper the server does not know: popular items
        if not stranger.cold_start:
            raise RuntimeError("the popularity peer should be the server's cold-start answer")
        popular = [i.item_id for i in stranger.items]
        before = [await top_k(stub, u) for u in controls + drifted]
        home_before = [share([i.item_id for i in a.items], shop, shop.home[u]) for u, a in zip(controls + drifted, before)]

        def pop_top(u: str) -> list[str]:
            return [i for i in popular if i not in shop.bought.get(u, ())][:K]

        shifts = []
        for u in drifted:
            new = int((shop.home[u] + rng.integers(1, n_interests)) % n_interests)
            shifts.append(Shift(u, new, 0.0))
        log(f"drift: {len(drifted)} shoppers, {concurrency} at a time; {len(controls)} control shoppers asked meanwhile")
        done, streams = asyncio.Event(), asyncio.Semaphore(STREAMS)
        ctl = asyncio.create_task(control(stub, shop, controls, done, pace_s=0.02))
        try:
            for w in range(0, len(shifts), concurrency):
                wave = shifts[w : w + concurrency]
                await asyncio.gather(
                    *(
                        follow(stub, shop, s, drift_events(shop, s.user, s.new, time.time(), rng), poll_s, timeout_s, streams)
                        for s in wave
                    )
                )
        except BaseException:
            ctl.cancel()
            raise
        done.set()
        during = await ctl
        # settled: once every drifted vector is rewritten (or a minute passed), each drifted shopper once more
        updated = await rewritten(p, shifts, wait_s=60.0)
        after = [[i.item_id for i in (await top_k(stub, s.user)).items] for s in shifts]
        log(f"new items: {new_item_count} items, {NEW_ITEM_BUYERS} buyers each, {NEW_ITEM_WATCHERS} like shoppers watched")
        launched = await new_items(
            stub, shop, set(drifted), new_item_count, NEW_ITEM_BUYERS, NEW_ITEM_WATCHERS, poll_s, timeout_s, new_item_info
        )
    times = [s.shift_s if s.shift_s is not None else float("inf") for s in shifts]
    shifted = [s.shift_s for s in shifts if s.shift_s is not None]
    return {
        "home_share": round(float(np.mean(home_before)), 4),
        "new_share_after": round(float(np.mean([share(a, shop, s.new) for a, s in zip(after, shifts)])), 4),
        "shift_p50_s": percentile(times, 50),
        "shift_p99_s": percentile(times, 99),
        "shifted": len(shifted),
        "shifted_within_1s": sum(t <= 1.0 for t in shifted),
        "drifted": len(shifts),
        "vectors_updated": updated,
        "home_share_during": round(float(np.mean(during)), 4),
        "controls_min_home_share": round(float(np.min(during)), 2),
        "control_queries": len(during),
        "drifted_home_share_after": round(float(np.mean([share(a, shop, shop.home[s.user]) for a, s in zip(after, shifts)])), 4),
        "popularity": {
            "new_share": round(float(np.mean([share(pop_top(s.user), shop, s.new) for s in shifts])), 4),
            "home_share": round(float(np.mean([share(pop_top(u), shop, shop.home[u]) for u in controls])), 4),
        },
        "polls": sum(s.polls for s in shifts),
        "new_items": launched,
    }


def run_drift(
    var: Path,
    *,
    shoppers: int = 3000,
    interests: int = 20,
    items_per: int = 50,
    events_per: int = 30,
    noise: float = 0.03,
    drift_share: float = 0.05,
    controls: int = 300,
    poll_s: float = 0.1,
    timeout_s: float = 10.0,
    concurrency: int = 10,
    seed: int = 16,
    worker_extra: dict[str, str] | None = None,
    new_item_count: int = 10,
    new_item_info: bool = True,
    short_term_users: int = 200,
) -> dict:
    shop = make_shop(interests, items_per, shoppers, seed)
    events = history(shop, events_per, noise, time.time(), seed + 1)

    def seed_graph(port: int) -> None:
        async def send() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await ingest(pb_grpc.InterestServiceStub(channel), events)

        t0 = time.monotonic()
        asyncio.run(send())
        log(f"ingested {len(events):,} events of {shoppers:,} shoppers through IngestEvents in {time.monotonic() - t0:.1f}s")

    users = list(shop.home)
    random.Random(seed).shuffle(users)
    n_drift = max(1, round(drift_share * shoppers))
    drifted, rest = users[:n_drift], users[n_drift:]
    with pipeline(var, dataset=None, server=True, seed=seed_graph, worker_extra=worker_extra) as p:
        config = served_config(p)
        scheduler = start_scheduler(p)
        try:
            res = asyncio.run(
                measure(p, shop, drifted, rest[:controls], poll_s, timeout_s, concurrency, seed + 2, new_item_count, new_item_info)
            )
        finally:
            process.stop(scheduler)
        if short_term_users and p.server_port is not None:
            # the short-term interest's serving cost: a second server over the same graph with it off
            off_var = p.var / "short-term-off"
            off_var.mkdir(exist_ok=True)
            procs: list = []
            try:
                off_port = _start_server({**p.env, "IG_SERVER_SHORT_TERM_SHARE": "0"}, off_var, procs)
                asked = drifted + rest[: max(0, short_term_users - len(drifted))]
                log(f"short-term cost: RecommendForUser of {len(asked)} shoppers, short-term on and off")
                res["short_term_cost"] = asyncio.run(short_term_cost(p.server_port, off_port, asked))
            finally:
                for proc in procs:
                    process.stop(proc)
    return {
        "bench": "drift",
        **res,
        "timeout_s": timeout_s,
        "poll_s": poll_s,
        "config": config,
        "sizes": {
            "shoppers": shoppers,
            "interests": interests,
            "items": len(shop.items),
            "events": len(events),
            "noise": noise,
            "drift_share": drift_share,
            "controls": min(controls, len(rest)),
            "concurrency": concurrency,
        },
    }


def main(
    shoppers: int = typer.Option(3000),
    interests: int = typer.Option(20, help="planted interests (item communities)"),
    items_per: int = typer.Option(50, help="items per interest"),
    events_per: int = typer.Option(30, help="mean history events per shopper"),
    noise: float = typer.Option(0.03, help="share of history events on a random item"),
    drift_share: float = typer.Option(0.05, help="share of shoppers who drift"),
    controls: int = typer.Option(300, help="shoppers who did not drift, asked while the others drift"),
    poll_s: float = typer.Option(0.1, help="pause between a drifted shopper's RecommendForUser calls"),
    timeout_s: float = typer.Option(10.0, help="a shopper not shifted this long after the acknowledgement counts as never"),
    concurrency: int = typer.Option(10, help="drifted shoppers followed at once"),
    seed: int = typer.Option(16),
    new_items: int = typer.Option(10, help="items new since training launched after the drift, one per interest"),
    new_item_info: bool = typer.Option(True, help="send the new items' catalogue entries (else they are known by their buyers only)"),
    short_term_users: int = typer.Option(200, help="shoppers (the drifted first) asked for the short-term cost; 0: not measured"),
    out: Path = typer.Option(None, help="also write the RESULT JSON here"),
    var: Path = typer.Option(None, help="keep data and logs here (default: a temporary directory)"),
) -> None:
    """Model variants: set IG_MODEL_* / IG_TRAIN_* in the environment (the worker reads them)."""
    with contextlib.nullcontext(str(var)) if var else tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        result = run_drift(
            Path(tmp),
            shoppers=shoppers,
            interests=interests,
            items_per=items_per,
            events_per=events_per,
            noise=noise,
            drift_share=drift_share,
            controls=controls,
            poll_s=poll_s,
            timeout_s=timeout_s,
            concurrency=concurrency,
            seed=seed,
            new_item_count=new_items,
            new_item_info=new_item_info,
            short_term_users=short_term_users,
        )
    emit_result(result, out)


if __name__ == "__main__":
    typer.run(main)
