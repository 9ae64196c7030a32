"""The serving domain object: queries over the live index, and the graph operations behind the RPCs.

Queries run in the gRPC server's worker threads (Neo4j calls too, with the sync driver); the lifecycle changes
the serving state on the event loop. ``lock`` makes the two take turns: every read or change of the index, the
user vectors and the facets holds it, Neo4j round trips never do. The serving state (item
index + user vectors of one model version) is swapped as a single reference, so a model switch is atomic for
every query.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence

import faiss
import neo4j
import numpy as np

from graphdb import catalog, explain
from graphdb.ego import SimilarUser, similar_users
from graphdb.embeddings import get_embedding
from graphdb.errors import InvalidInput, NotFound, Unavailable
from graphdb.feedback import Exclusions
from graphdb.forget import forget_user
from graphdb.ingest import IngestResult, ingest_events
from graphdb.model_state import UserSideCard, read_card
from graphdb.pseudonym import pseudonymise
from graphdb.recent import recent_edges
from graphdb.schema import ITEM_INTERACTIONS, USER
from graphdb.session import SessionEdges, session_edges
from graphdb.settings import GraphSettings
from graphdb.subgraph import EdgeRow
from server.facets import FacetStore
from server.feedback import push_down
from server.hetero_sessions import HeteroSides
from server.index import IndexParams, ItemIndex, LabelMap, normalise
from server.rules import RankingRules, apply_rules
from server.settings import ServerSettings
from server.short_term import ShortTermParams, may_have_recent, mix, recent_items, reserved_slots
from server.users import UserVectors
from workers.hetero_side import HeteroSideCard, session_vector
from workers.user_side import user_vector, weighted_sum

log = logging.getLogger(__name__)
_thread = threading.local()


def _one_search_thread() -> None:
    """FAISS searches one query at a time on the calling thread. OpenMP's thread count is per thread: the
    process's ``faiss.omp_set_num_threads(1)`` holds for its main thread only, and every other thread starts
    from OMP_NUM_THREADS or the core count. Without this, searches from the front end's threads (``python -m
    server`` sets no OMP_NUM_THREADS) ran FAISS's parallel regions on every core, with OpenMP's threads spinning
    between calls: ~18 % more server CPU a call at 1M x 1024 (docs/benchmarks.md)."""
    if not getattr(_thread, "one", False):
        faiss.omp_set_num_threads(1)
        _thread.one = True


# The one user of a session's edge rows (never stored: sessions are embedded in memory only).
SESSION_USER = "session"


@dataclass(frozen=True)
class ItemFilter:
    category_ids: tuple[str, ...] = ()
    brand_ids: tuple[str, ...] = ()
    exclude_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    items: list[tuple[str, float]]
    model_version: str
    cold_start: bool = False
    # With explain: item id -> its reasons (items without any are left out); None without explain.
    reasons: Mapping[str, list[explain.Reason]] | None = None


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray
    model_version: str
    updated_at: float


@dataclass
class Serving:
    """What one model version serves: item index and user vectors, swapped together."""

    index: ItemIndex
    users: UserVectors


@dataclass
class _Popular:
    items: list[tuple[str, float]] = field(default_factory=list)
    at: float = -1.0


def explain_limits(settings: ServerSettings) -> explain.ExplainLimits:
    return explain.ExplainLimits(
        max_own_items=settings.explain_max_own_items,
        max_queries=settings.explain_max_queries,
        min_shoppers=settings.explain_min_shoppers,
        min_category_items=settings.explain_min_category_items,
        timeout_s=settings.explain_timeout_s,
    )


def short_term_params(settings: ServerSettings) -> ShortTermParams:
    return ShortTermParams(
        share=settings.short_term_share,
        window_s=settings.short_term_window_s,
        min_items=settings.short_term_min_items,
        max_items=settings.short_term_max_items,
    )


def index_params(settings: ServerSettings) -> IndexParams:
    return IndexParams(
        nlist=settings.ivf_nlist,
        nprobe=settings.ivf_nprobe,
        ivf_dim=settings.ivf_dim,
        refine=settings.ivf_refine,
        ivf_codes=settings.ivf_codes,
        ann_min_items=settings.ann_min_items,
        exact_filter_max=settings.exact_filter_max,
    )


class Engine:
    def __init__(self, settings: ServerSettings, graph: GraphSettings, driver: neo4j.Driver | None, database: str = "neo4j") -> None:
        self.settings = settings
        self.graph = graph
        self.driver = driver
        self.database = database
        self.dim = graph.embedding_dim
        self.params = index_params(settings)
        self.explain_limits = explain_limits(settings)
        self.short_term = short_term_params(settings)
        # Where a shopper's recent edges come from (pseudonym -> (edges, distinct items)): Neo4j unless set; the
        # quality bench sets it to the training graph's edges, as it has no Neo4j (bench._served).
        self.recent_source: Callable[[str], tuple[list[EdgeRow], int]] | None = None
        self.labels = LabelMap()
        self.facets = FacetStore(self.labels)
        self.serving: Serving | None = None
        self._popular = _Popular()
        self._cards: dict[str, UserSideCard | HeteroSideCard] = {}  # model version -> its user side (sessions)
        # a 2-layer heterogeneous version's user side and its items' numbers are in Redis (server.hetero_sessions)
        self.hetero = HeteroSides(settings) if settings.redis_url else None
        self._key = graph.pseudonym_key.get_secret_value()
        self.on_forget: list[Any] = []  # async callbacks(pseudonym), e.g. publish to the delta stream
        self.on_ready: list[Any] = []  # async callbacks(serving: bool), e.g. the health service
        # Set while the lifecycle catches up with the delta stream: the first install then does not announce
        # readiness; the lifecycle does, once caught up.
        self.hold_ready = False
        self.on_ingest: list[Any] = []  # callbacks(received: int, IngestResult), e.g. metrics
        self.metrics: Any = None  # this server's metrics (server.metrics.ServerMetrics), set by create_server
        # The event loop the lifecycle and the async callbacks run on (set by create_server).
        self.loop: asyncio.AbstractEventLoop | None = None
        # Every read or change of the serving state holds it; an unfiltered search lets it go while FAISS runs
        # over the immutable base (``_unlocked``), and searches again if the index changed meanwhile.
        self.lock = threading.Lock()

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.serving is not None

    def _state(self) -> Serving:
        serving = self.serving
        if serving is None:
            raise Unavailable("the index is not loaded yet; retry shortly")
        return serving

    def install(self, index: ItemIndex, users: UserVectors | None = None) -> None:
        """Makes ``index`` the serving index (atomically: one reference swap)."""
        new_users = users or UserVectors(index.model_version, self.settings.user_cache_size)
        with self.lock:
            if self.serving is not None:
                new_users.carry_forgotten(self.serving.users)
            first = self.serving is None
            self.serving = Serving(index, new_users)
        log.info("serving model %r: %d items", index.model_version, len(index))
        if first and not self.hold_ready:
            try:
                asyncio.get_running_loop().create_task(self.notify_ready(True))
            except RuntimeError:  # installed before any loop runs (tests, benchmarks): hooks see it on start
                pass

    async def notify_ready(self, serving: bool) -> None:
        for callback in self.on_ready:
            await callback(serving)

    def load_vectors(
        self,
        ids: list[str],
        vectors: np.ndarray,
        model_version: str,
        updated_at: np.ndarray | None = None,
        in_scale: np.ndarray | None = None,
    ) -> ItemIndex:
        """Builds an index from in-memory vectors (CPU heavy: call from a thread) without installing it."""
        if vectors.shape[1:] != (self.dim,):
            raise InvalidInput(f"vectors have dimension {vectors.shape[1:]}, the index expects {self.dim}")
        return ItemIndex.build(self.dim, model_version, self.labels, self.params, ids, vectors, updated_at, in_scale)

    def update_facets(self, facets: Iterable[catalog.ItemFacets]) -> None:
        with self.lock:
            self.facets.update(facets)

    def _on_loop(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 10.0) -> Any:
        """Runs ``coro`` on the event loop from a worker thread and waits for its result."""
        if self.loop is None:
            coro.close()
            raise Unavailable("the server's event loop is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def _pseudonym(self, user_id: str) -> str:
        return pseudonymise(self._key, user_id)

    def _need_driver(self) -> neo4j.Driver:
        if self.driver is None:
            raise Unavailable("this server runs without a graph database")
        return self.driver

    # -- queries ---------------------------------------------------------------------------------------------
    @contextmanager
    def _unlocked(self) -> Iterator[None]:
        """Releases ``lock`` for the thread holding it while FAISS searches the immutable base (ItemIndex.search
        checks afterwards that nothing changed meanwhile), so one process's searches overlap: measured with the
        native front end, one process then served ~30 % more calls (bench.serving)."""
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()

    def _search(
        self,
        serving: Serving,
        query: np.ndarray,
        k: int,
        flt: ItemFilter,
        extra_exclude: Sequence[int] = (),
        rules: RankingRules | None = None,
    ) -> list[tuple[str, float]]:
        _one_search_thread()
        index = serving.index
        exclude = [lab for lab in (self.labels.get(i) for i in flt.exclude_item_ids) if lab is not None]
        exclude.extend(extra_exclude)
        allowed = self.facets.mask(flt.category_ids, flt.brand_ids)
        excl = np.asarray(exclude, np.int64)
        ids = self.labels.ids()
        if rules is None:
            labels, scores = index.search(query.reshape(1, -1), k, allowed=allowed, exclude=excl, unlocked=self._unlocked)[0]
            return [(ids[lab], s) for lab, s in zip(labels.tolist(), scores.tolist())]  # tolist: Python ints, floats
        # The rules re-rank the best n candidates; caps that leave the answer short fetch twice as many, up to the
        # bound, so an answer has k items whenever the bounded candidates allow.
        most = max(k, self.settings.rules_max_candidates)
        n = min(max(4 * k, self.settings.rules_candidates), most)
        while True:
            labels, scores = index.search(query.reshape(1, -1), n, allowed=allowed, exclude=excl, unlocked=self._unlocked)[0]
            labs = labels.tolist()
            items = apply_rules(self.facets, rules, labels, scores, k, lambda j: ids[labs[j]])
            if len(items) >= k or len(labels) < n or n >= most:
                return items
            n = min(2 * n, most)

    def similar_items(
        self, item_id: str, k: int, flt: ItemFilter, rules: RankingRules | None = None, explained: bool = False
    ) -> Answer:
        with self.lock:
            serving = self._state()
            label = serving.index.label_of(item_id)
            if label is None:
                raise NotFound(f"item {item_id!r} has no vector in model {serving.index.model_version!r}")
            vec, _ = serving.index.vector(label)
            items = self._search(serving, vec, k, flt, extra_exclude=(label,), rules=rules)
        answer = Answer(items, serving.index.model_version)
        if explained:
            limits, db = self.explain_limits, self.database
            return self._with_reasons(answer, lambda driver, ids: explain.for_similar(driver, item_id, ids, limits, database=db))
        return answer

    def nearest_items(self, vector: Sequence[float], k: int, flt: ItemFilter, rules: RankingRules | None = None) -> Answer:
        serving = self._state()
        if len(vector) != serving.index.dim:
            raise InvalidInput(f"vector has dimension {len(vector)}, the index expects {serving.index.dim}")
        vec = np.asarray(vector, np.float64)  # float32 components up to 3.4e38: their squares fit in float64
        if not np.all(np.isfinite(vec)) or not np.any(vec):
            raise InvalidInput("vector must be finite and not all zeros")
        query = (vec / np.linalg.norm(vec)).astype(np.float32)
        with self.lock:
            items = self._search(serving, query, k, flt, rules=rules)
        return Answer(items, serving.index.model_version)

    def recommend_for_user(
        self,
        user_id: str,
        k: int,
        flt: ItemFilter,
        include_seen: bool,
        rules: RankingRules | None = None,
        explained: bool = False,
    ) -> Answer:
        pseudonym = self._pseudonym(user_id)
        answer = self._recommend_for_user(pseudonym, k, flt, include_seen, rules)
        if explained:
            limits, db = self.explain_limits, self.database
            return self._with_reasons(answer, lambda driver, ids: explain.for_user(driver, pseudonym, ids, limits, database=db))
        return answer

    def _recommend_for_user(
        self, pseudonym: str, k: int, flt: ItemFilter, include_seen: bool, rules: RankingRules | None = None
    ) -> Answer:
        serving = self._state()
        user_vec = self._user_vector(serving, pseudonym)
        # One read for what the shopper bought and hid: hidden items never come back, whatever include_seen says.
        excl = Exclusions()
        if self.driver is not None:
            excl = catalog.shopper_exclusions(self.driver, pseudonym, database=self.database)
        skipped = excl.hidden if include_seen else excl.hidden + excl.bought
        seen = [lab for lab in (self.labels.get(i) for i in skipped) if lab is not None]
        if user_vec is None:
            return Answer(self._cold_start(k, flt, seen, rules), serving.index.model_version, cold_start=True)
        short_q = self._short_term_query(serving, *self._recent(pseudonym)) if self.short_term.share > 0 else None
        with self.lock:
            items = self._search_mixed(serving, user_vec, short_q, k, flt, seen, excl.hidden, rules)
        return Answer(items, serving.index.model_version)

    def _recent(self, pseudonym: str) -> tuple[list[EdgeRow], int]:
        """The shopper's newest edges (enough for ``short_term.max_items`` items) and their number of items."""
        if self.recent_source is not None:
            return self.recent_source(pseudonym)
        if self.driver is None:
            return [], 0
        limit = len(ITEM_INTERACTIONS) * self.short_term.max_items  # one edge per item and behaviour type at most
        return recent_edges(self.driver, pseudonym, limit, database=self.database)

    def _short_term_query(self, serving: Serving, edges: Sequence[EdgeRow], total_items: int) -> np.ndarray | None:
        """The short-term interest's query (server.short_term): its items' served vectors summed by weight,
        normalised; None without a short-term interest or when none of its items has a vector."""
        recent = recent_items(edges, total_items, self.short_term)
        if recent is None:
            return None
        with self.lock:
            found = [(lab, w) for lab, w in ((serving.index.label_of(i), w) for i, w in recent.items()) if lab is not None]
            if not found:
                return None
            vecs = serving.index.vectors([lab for lab, _ in found])
        query = np.asarray([w for _, w in found], np.float32) @ vecs
        return normalise(query.reshape(1, -1))[0] if np.any(query) else None

    def _search_mixed(
        self,
        serving: Serving,
        query: np.ndarray,
        short_q: np.ndarray | None,
        k: int,
        flt: ItemFilter,
        seen: Sequence[int],
        hidden: Sequence[str],
        rules: RankingRules | None = None,
    ) -> list[tuple[str, float]]:
        """``_search_pushing_down`` of the long-term ``query``, with the short-term ranking mixed in
        (server.short_term.mix) when there is a short-term query. With rules, they apply to the mixed candidates in
        their mixed order (a rank score), and each item keeps its own ranking's score."""
        if short_q is None:
            return self._search_pushing_down(serving, query, k, flt, seen, hidden, rules)
        share = self.short_term.share
        if rules is None:
            long = self._search_pushing_down(serving, query, k, flt, seen, hidden)
            short = self._search_pushing_down(serving, short_q, k, flt, seen, hidden)
            return mix(long, short, k, reserved_slots(k, share))
        n = max(k, self.settings.rules_candidates)
        pool = mix(
            self._search_pushing_down(serving, query, n, flt, seen, hidden),
            self._search_pushing_down(serving, short_q, n, flt, seen, hidden),
            n,
            reserved_slots(n, share),
        )
        if not pool:
            return pool
        score = dict(pool)
        labels = np.asarray([self.labels.get(i) for i, _ in pool], np.int64)
        rank_scores = np.linspace(1.0, 0.5, len(pool), dtype=np.float32)
        ranked = apply_rules(self.facets, rules, labels, rank_scores, k, lambda j: pool[j][0])
        return [(i, score[i]) for i, _ in ranked]

    def _search_pushing_down(
        self,
        serving: Serving,
        query: np.ndarray,
        k: int,
        flt: ItemFilter,
        seen: Sequence[int],
        hidden: Sequence[str],
        rules: RankingRules | None = None,
    ) -> list[tuple[str, float]]:
        """``_search``, re-ranked by the negative-feedback rule (server.feedback) when the shopper hid items; ranking
        rules then apply to the re-ranked candidates (at least ``IG_SERVER_RULES_CANDIDATES`` of them)."""
        s = self.settings
        index = serving.index
        recent = [lab for lab in (index.label_of(i) for i in hidden[: s.feedback_max_hidden]) if lab is not None]
        if not recent or s.feedback_strength == 0.0:
            return self._search(serving, query, k, flt, seen, rules)
        n = k + s.feedback_pool if rules is None else max(k + s.feedback_pool, s.rules_candidates)
        pool = self._search(serving, query, n, flt, seen)
        if not pool:
            return pool
        ids = [i for i, _ in pool]
        labels = [self.labels.get(i) for i in ids]
        candidates = index.vectors([lab for lab in labels if lab is not None])  # the pool's items: all in the index
        hidden_vecs = index.vectors(recent)
        scores = np.asarray([sc for _, sc in pool], np.float64)
        kept = k if rules is None else len(pool)
        ranked = push_down(ids, scores, candidates, hidden_vecs, kept, strength=s.feedback_strength, threshold=s.feedback_threshold)
        if rules is None:
            return ranked
        labs = np.asarray([self.labels.get(i) for i, _ in ranked], np.int64)
        return apply_rules(self.facets, rules, labs, np.asarray([sc for _, sc in ranked], np.float32), k, lambda j: ranked[j][0])

    def explain_session(self, answer: Answer, own: Sequence[str], bought: Sequence[str], queries: Sequence[str]) -> Answer:
        """``answer`` with reasons for a shopper given by their items, purchases and normalised searches (most
        recent first) instead of stored edges: what RecommendForSession's explain calls."""
        limits, db = self.explain_limits, self.database
        return self._with_reasons(
            answer,
            lambda driver, ids: explain.for_items(driver, ids, limits, own=own, bought=bought, queries=queries, database=db),
        )

    def _with_reasons(self, answer: Answer, read: Callable[[neo4j.Driver, list[str]], dict[str, list[explain.Reason]]]) -> Answer:
        """``answer`` with its items' reasons: one batched graph read (graphdb.explain)."""
        driver = self._need_driver()
        return replace(answer, reasons=read(driver, [item_id for item_id, _ in answer.items]) if answer.items else {})

    def recommend_for_session(
        self,
        events: Sequence[tuple[str, str, float, float | None]],
        k: int,
        flt: ItemFilter,
        include_seen: bool,
        rules: RankingRules | None = None,
        explained: bool = False,
    ) -> Answer:
        """Items for an anonymous session: its events are checked and aggregated into edge rows by ingestion's
        rules (``graphdb.session``) and embedded with the served model's user side (``workers.user_side``, or
        ``workers.hetero_side`` under a 2-layer heterogeneous version); nothing is written. Session items without a
        vector in the serving model are left out before the cap (there is nothing to add for them), and so are
        items whose vector came without its in_scale (written by an older worker)."""
        serving = self._state()
        index = serving.index
        session = session_edges(events, self.graph, time.time())
        items, labels, embedded = self._embed_session(session, index)
        bought = session.bought
        seen = [] if include_seen or not bought else [lab for i, lab in zip(items, labels) if lab >= 0 and i in bought]
        norm = 0.0 if embedded is None else math.sqrt(float(embedded @ embedded))  # float32(sqrt) either way
        if norm == 0.0 or embedded is None:
            if not include_seen:  # bought items without a vector are not in the index either
                seen = [lab for lab in map(self.labels.get, sorted(session.bought)) if lab is not None]
            return Answer(self._cold_start(k, flt, seen, rules), index.model_version, cold_start=True)
        query = embedded / np.float32(norm)  # normalised, as a stored user's vector is (server.users)
        # The short-term interest from the session's own events (a session has no stored edges to read); its edge
        # rows are built only when it has one, which a session whose items are all recent never has.
        short_q = None
        if may_have_recent(session.latest.values(), len(items), self.short_term):
            short_q = self._short_term_query(serving, session.edges(SESSION_USER), len(items))
        with self.lock:
            top = self._search_mixed(serving, query, short_q, k, flt, seen, (), rules)
        answer = Answer(top, index.model_version)
        if explained:  # the session's own items, most recent first, stand in for a stored shopper's edges
            own = sorted(session.latest, key=lambda i: (-session.latest[i], i))
            return self.explain_session(answer, own, [i for i in own if i in session.bought], [])
        return answer

    def session_vector(self, events: Sequence[tuple[str, str, float, float | None]]) -> np.ndarray | None:
        """The vector RecommendForSession searches with (before it is normalised), None when it answers from
        popularity: what a stored user with these events gets once the worker recomputes them."""
        return self._embed_session(session_edges(events, self.graph, time.time()), self._state().index)[2]

    def _embed_session(self, session: SessionEdges, index: ItemIndex) -> tuple[list[str], list[int], np.ndarray | None]:
        """(the session's items, sorted; their index labels, -1 without a vector; its vector or None)."""
        items = sorted(session.latest)
        with self.lock:  # the labels, rows and scales of the session's items, read together
            labels = index.live_labels(items)
            live = [j for j, lab in enumerate(labels) if lab >= 0]  # the items with a vector
            z, scales = index.user_side(np.array([labels[j] for j in live], np.int64))
        side = self._side(index.model_version) if live else None
        if isinstance(side, HeteroSideCard):  # its items' served vectors are not what it sums (workers.hetero_side)
            assert self.hetero is not None  # where the card came from
            got = session_vector(side, session.edges(SESSION_USER), self.hetero.items(side.version, session.latest))
            return items, labels, None if got is None else got[0]
        if not all(s > 0 for s in scales.tolist()):  # mostly every item has its scale: no copy of the rows
            keep = scales > 0
            live, z, scales = [j for j, kept in zip(live, keep.tolist()) if kept], z[keep], scales[keep]
        return items, labels, self._session_vector(session, [items[j] for j in live], z, scales, index)

    def _session_vector(
        self, session: SessionEdges, items: list[str], z: np.ndarray, scales: np.ndarray, index: ItemIndex
    ) -> np.ndarray | None:
        """The session's user vector from its items' served rows ``z`` and ``scales`` (``items``: sorted, each with
        a vector); None when it has none. Within the cap (every session of up to ``user_cap`` items) the rows are
        summed as they are; past it ``user_vector`` chooses the items as the worker does."""
        if not items:
            return None
        card = self._card(index.model_version)
        if len(items) <= card.user_cap:
            latest = session.latest
            times = [int(latest[i]) for i in items]  # whole seconds, as stored
            strengths = None
            if card.behaviour_power:  # what the worker weighs by: each item's typed edge weights summed (pair_strengths)
                pairs = session.strengths(card.behaviour_weights)
                strengths = np.fromiter((pairs[i] for i in items), np.float64, len(items))
            return weighted_sum(z, scales, times, card, strengths)
        known = {i: (v, float(s)) for i, v, s in zip(items, z, scales)}
        embedded = user_vector(session.edges(SESSION_USER), known, card)
        return None if embedded is None else embedded[0]

    def add_card(self, card: UserSideCard) -> None:
        """Makes ``card`` the user side of its version without asking Neo4j (a server without a graph)."""
        self._cards = {**self._cards, card.version: card}

    def _card(self, version: str) -> UserSideCard:
        """The spectral user side of ``version`` (`_side`)."""
        if self.driver is None and version not in self._cards:
            raise Unavailable("this server runs without a graph database: the model's user side is unknown")
        card = self._side(version)
        if not isinstance(card, UserSideCard):
            raise Unavailable(f"model {version!r} has no user-side card yet (its worker writes it with its vectors); retry shortly")
        return card

    def _side(self, version: str) -> UserSideCard | HeteroSideCard | None:
        """The user side of ``version``, read once per version: a spectral card from Neo4j, else a 2-layer
        heterogeneous one from Redis; None while it has neither (not remembered: a later call reads again)."""
        card: UserSideCard | HeteroSideCard | None = self._cards.get(version)
        if card is not None:
            return card
        if self.driver is not None:
            card = read_card(self.driver, version, database=self.database)
        if card is None and self.hetero is not None:
            card = self.hetero.card(version)
        if card is None:
            return None
        dim = len(card.sign) if isinstance(card, UserSideCard) else card.dim
        if dim != self.dim:
            raise Unavailable(f"model {version!r}'s user-side card has dimension {dim}, the index {self.dim}")
        self._cards = {**self._cards, version: card}  # swapped whole: readers in other threads see either
        return card

    def _user_vector(self, serving: Serving, pseudonym: str) -> np.ndarray | None:
        with self.lock:
            hit = serving.users.get(pseudonym)
        if hit is not None:
            return hit[0]
        if self.driver is None:
            return None
        rec = get_embedding(self.driver, USER, pseudonym, database=self.database)
        if rec is None or rec.model_version != serving.index.model_version or len(rec.vector) != self.dim:
            return None  # no vector of the serving model: cold start rather than mixing models
        with self.lock:
            serving.users.put(pseudonym, rec.vector, rec.updated_at or 0.0)
            hit = serving.users.get(pseudonym)
        return hit[0] if hit else None

    def _cold_start(self, k: int, flt: ItemFilter, seen: Sequence[int], rules: RankingRules | None = None) -> list[tuple[str, float]]:
        popular = self._popular_items()
        if not popular:
            return []
        skip = set(flt.exclude_item_ids) | {self.labels.id_of(s) for s in seen}
        top = popular[0][1] or 1.0
        # with rules, they re-rank the whole popular pool that passes the filter (at most IG_SERVER_POPULAR_POOL)
        take = k if rules is None else len(popular)
        ids: list[str] = []
        labels: list[int] = []
        scores: list[float] = []
        with self.lock:
            allowed = self.facets.mask(flt.category_ids, flt.brand_ids)
            for item_id, score in popular:
                if item_id in skip:
                    continue
                lab = self.labels.get(item_id)
                if allowed is not None and (lab is None or lab >= len(allowed) or not allowed[lab]):
                    continue
                ids.append(item_id)
                labels.append(-1 if lab is None else lab)
                scores.append(score / top)
                if len(ids) == take:
                    break
            if rules is not None:
                return apply_rules(
                    self.facets, rules, np.asarray(labels, np.int64), np.asarray(scores, np.float32), k, ids.__getitem__
                )
        return list(zip(ids, scores))

    def _popular_items(self) -> list[tuple[str, float]]:
        now = time.time()
        if self.driver is None:
            return []
        popular = self._popular
        if popular.at < 0 or now - popular.at > self.settings.popular_ttl_s:
            # Callers arriving meanwhile ask Neo4j too (or use the old list): a refresh a minute, not worth a lock.
            since = now - self.settings.popular_window_days * 86400.0
            items = catalog.popular_items(self.driver, since=since, limit=self.settings.popular_pool, database=self.database)
            popular = self._popular = _Popular(items, now)
        return popular.items

    def similar_users(self, user_id: str, k: int) -> tuple[list[SimilarUser], str]:
        """The k users nearest to this one by ego-graph vector of the serving model (graphdb.ego), with that
        version; their pseudonyms, as the graph holds them."""
        version = self._state().index.model_version
        found = similar_users(self._need_driver(), self._pseudonym(user_id), k, version, database=self.database)
        return found, version

    # -- embeddings, forgetting, ingestion -----------------------------------------------------------------
    def get_embedding(self, node_type: str, node_id: str) -> Embedding:
        serving = self._state()
        if node_type == "Item":
            with self.lock:
                label = serving.index.label_of(node_id)
                if label is None:
                    raise NotFound(f"item {node_id!r} has no vector in model {serving.index.model_version!r}")
                vec, ts = serving.index.vector(label)
            return Embedding(vec, serving.index.model_version, ts)
        pseudonym = self._pseudonym(node_id)
        with self.lock:
            hit = serving.users.get(pseudonym)
        if hit is not None:
            return Embedding(hit[0].copy(), serving.users.model_version, hit[1])
        rec = None
        if self.driver is not None:
            rec = get_embedding(self.driver, USER, pseudonym, database=self.database)
        if rec is None:
            raise NotFound(f"user {node_id!r} has no vector")
        return Embedding(np.asarray(rec.vector, np.float32), rec.model_version, rec.updated_at or 0.0)

    def forget_user(self, user_id: str) -> bool:
        pseudonym = self._pseudonym(user_id)
        existed = False
        if self.driver is not None:
            existed = forget_user(self.driver, pseudonym, database=self.database)
        with self.lock:
            if self.serving is not None:
                existed = self.serving.users.forget(pseudonym) or existed
        for callback in self.on_forget:
            self._on_loop(callback(pseudonym))
        return existed

    def ingest(self, events: Sequence[Mapping[str, Any]]) -> IngestResult:
        driver = self._need_driver()
        total = IngestResult()
        size = self.graph.batch_size
        for start in range(0, len(events), size):
            batch = events[start : start + size]
            total.add(ingest_events(driver, self.graph, batch, database=self.database), offset=start)
        described = sorted({e["item_id"] for e in events if e.get("item") and e.get("item_id")})
        if described:  # new catalogue facts: refresh those items' facets now rather than at the next sweep
            self.update_facets(catalog.item_facets(driver, described, database=self.database))
        for callback in self.on_ingest:
            callback(len(events), total)
        return total
