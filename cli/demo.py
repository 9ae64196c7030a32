"""``interest demo``: the main job end to end, on the local stack, through the real processes and the gRPC API.

Starts Neo4j and Redis (if not running), a Celery worker, the recompute scheduler and the gRPC server; loads a
dataset into the graph; trains the served model on the live graph (worker task) and rolls it out (rebuild, then
the servers switch); then, through gRPC: similar items for a few products, recommendations for a few users, and
new events for one user replayed live, with how the recommendations changed and the freshness (event
acknowledged -> new vector served). The worker, scheduler and server stop at the end; Neo4j and Redis stay up
for Cypher (``interest stack down`` stops them).
"""

from __future__ import annotations

import contextlib
import html
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from graphdb import localstack
from graphdb.driver import connect
from graphdb.errors import InvalidInput
from graphdb.loaders import DATASETS, load_dataset
from graphdb.pseudonym import pseudonymise
from graphdb.schema import DIRTY, migrate
from graphdb.settings import DataSettings, GraphSettings, LocalStackSettings, Neo4jSettings
from graphdb.stats import graph_counts
from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server.probe import wait_serving
from server.settings import ServerSettings
from workers import process
from workers.settings import WorkerSettings

console = Console()

PREFIX = {"amazon-office": "office", "amazon-hin": "hin", "gowalla": "gowalla"}
EVENTS = {"amazon-office": 53_258, "gowalla": 810_128}

# The best seller of each of the n busiest categories: unrelated products, so their similar items can differ.
_TOP_ITEMS = """
MATCH (i:Item)<-[r]-(:User)
WHERE i.id STARTS WITH $prefix
WITH i, count(r) AS buyers
MATCH (i)-[:IN_CATEGORY]->(c:Category)
WITH c, i, buyers ORDER BY buyers DESC, i.id
WITH c, collect({id: i.id, title: coalesce(i.title, i.id), buyers: buyers})[0] AS top, sum(buyers) AS volume
ORDER BY volume DESC, c.id LIMIT $n
RETURN top.id AS id, top.title AS title, top.buyers AS buyers, c.name AS category
"""
_TITLES = "UNWIND $ids AS id MATCH (i:Item {id: id}) RETURN i.id AS id, coalesce(i.title, i.id) AS title"
# Items of the biggest category (of the same dataset) the user has not touched: a clear change of interest.
_NEW_INTEREST = """
OPTIONAL MATCH (:User {id: $user})-->(:Item)-[:IN_CATEGORY]->(mine:Category)
WITH collect(DISTINCT mine) AS mine
MATCH (c:Category)<-[:IN_CATEGORY]-(i:Item)
WHERE i.id STARTS WITH $prefix AND NOT c IN mine
WITH c, i, COUNT { (i)<--(:User) } AS buyers
ORDER BY buyers DESC, i.id
WITH c, collect(i.id)[..$n] AS items, sum(buyers) AS weight
ORDER BY weight DESC, c.id LIMIT 1
RETURN c.id AS category, items
"""
_ANY_ITEMS = "MATCH (i:Item) WHERE i.id STARTS WITH $prefix RETURN i.id AS id ORDER BY i.id DESC LIMIT $n"


def _step(msg: str) -> None:
    # A heading that wraps on a narrow terminal (a rule would cut it at the width).
    console.print()
    console.print(f"[bold]━━ {msg}[/bold]")


def _watch(app, name: str, kwargs: dict, label: str) -> dict:
    result = app.send_task(name, kwargs=kwargs)
    started = time.monotonic()
    with console.status(f"{label} (task {result.id})") as status:
        while not result.ready():
            info = result.info if isinstance(result.info, dict) else {}
            status.update(f"{label}: {result.state.lower()} {info.get('step', '')} [{time.monotonic() - started:.0f}s]")
            time.sleep(0.3)
    out = result.get()
    if isinstance(out, dict) and "error" in out:
        raise RuntimeError(f"{name}: {out['error']}: {out['message']}")
    console.print(f"{label}: done in {time.monotonic() - started:.1f}s")
    return out


def _titles(driver, ids: list[str]) -> dict[str, str]:
    return {r["id"]: r["title"] for r in driver.execute_query(_TITLES, ids=ids).records}


def _short(text: str, n: int = 70) -> str:
    text = html.unescape(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _items_table(title: str, answer, names: dict[str, str]) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("item")
    t.add_column("score", justify="right")
    for k, it in enumerate(answer.items, 1):
        t.add_row(str(k), _short(names.get(it.item_id, it.item_id)), f"{it.score:.3f}")
    return t


def run(dataset: str, budget_min: float, port: int | None) -> None:
    """Run the whole service on the local stack and show it working through the gRPC API (``interest demo``)."""
    if dataset not in DATASETS:
        raise typer.BadParameter(f"unknown dataset {dataset!r} (one of {', '.join(DATASETS)})")
    # The data first: a missing dataset fails here, in one line, before anything starts.
    try:
        root = DataSettings().dataset_dir(dataset)
    except InvalidInput as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    t_start = time.monotonic()
    stack, ns, gs, ws = LocalStackSettings(), Neo4jSettings(), GraphSettings(), WorkerSettings()
    ss = ServerSettings()
    port = port or ss.port
    logs = Path(stack.var_dir) / "logs"

    console.print(f"data: {dataset} from {root}", soft_wrap=True)
    _step("1. local stack: Neo4j and Redis")
    for name, svc in localstack.up(stack).items():
        console.print(f"{name}: 127.0.0.1:{svc.port} (pid {svc.pid()}, log {svc.log_file})")
    driver = connect(ns)
    migrate(driver, gs)

    env = process.worker_env(
        neo4j_uri=ns.uri,
        redis_base=f"redis://127.0.0.1:{stack.redis_port}",
        model_dir=Path(ws.model_dir).resolve(),
        text_cache_dir=Path(ws.text_cache_dir).resolve(),
        graph=gs,
        extra={"IG_TRAIN_BUDGET_MIN": str(budget_min), "IG_WORKER_METRICS_PORT": str(ws.metrics_port)},
    )
    procs: list[subprocess.Popen] = []
    try:
        _step("2. a Celery worker and the recompute scheduler")
        app = process.client_app(env)
        worker = process.start_worker(env, logs / "worker.log")
        procs.append(worker)
        process.wait_for_worker(app, worker, timeout_s=120)
        procs.append(process.start_scheduler(env, logs / "scheduler.log"))
        console.print(f"worker and scheduler running (logs in {logs})")

        _step(f"3. loading {dataset} into the graph")
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task("events", total=EVENTS.get(dataset))
            loaded = load_dataset(driver, gs, dataset, root, progress=lambda n: bar.advance(task, n))
        console.print(f"{loaded.accepted:,} new events, {loaded.duplicates:,} already there (idempotent reload)")
        counts = graph_counts(driver)
        waiting = counts["nodes"].pop(DIRTY, 0)
        for kind in ("nodes", "relationships"):
            console.print(f"{kind}: " + ", ".join(f"{k} {v:,}" for k, v in counts[kind].items()))
        console.print(f"{waiting:,} nodes marked for recompute (none has a vector until the model is trained)")

        _step("4. training the model on the live graph (worker task, queue gpu; CPU here)")
        trained = _watch(app, "interest.train", {"budget_min": budget_min}, "train")
        console.print(f"model {trained['version']}: {trained['users']:,} users, {trained['items']:,} items")
        rebuilt = _watch(app, "interest.rebuild", {"version": trained["version"]}, "embed everything and activate")
        console.print(f"{rebuilt['written']:,} vectors written to Neo4j; active: {rebuilt['active']}")

        _step("5. the gRPC server")
        senv = dict(env, IG_SERVER_PORT=str(port), IG_SERVER_REDIS_URL=env["IG_WORKER_REDIS_URL"])
        out = open(logs / "server.log", "ab")  # noqa: SIM115 - the child's log
        server = subprocess.Popen(
            [sys.executable, "-m", "server"], env=senv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(server)
        wait_serving(port, server)
        console.print(f"serving on 127.0.0.1:{port} (health SERVING, reflection on: grpcurl works)")

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InterestServiceStub(channel)
            prefix = PREFIX[dataset] + ":"  # the loaders prefix ids with the dataset; the graph may hold several
            _wait_version(stub, driver, rebuilt["active"], prefix)
            _similar(stub, driver, prefix)
            users = _dataset_users(dataset, root)
            _recommend(stub, driver, users)
            _live(stub, driver, gs, users, prefix)
    finally:
        for proc in reversed(procs):
            process.stop(proc)
        driver.close()
    console.rule()
    console.print(
        f"[bold]demo finished in {time.monotonic() - t_start:.0f}s[/bold]. Neo4j and Redis are still up "
        f"(bolt://127.0.0.1:{stack.neo4j_port}); `interest graph query` and docs/analysts.md for Cypher, "
        f"`interest stack down` to stop."
    )


def _wait_version(stub, driver, version: str, prefix: str, timeout_s: float = 120.0) -> None:
    item = driver.execute_query(_TOP_ITEMS, prefix=prefix, n=1).records[0]["id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.RpcError):
            if stub.SimilarItems(pb.SimilarItemsRequest(item_id=item, k=1), timeout=5).model_version == version:
                return
        time.sleep(0.3)
    raise RuntimeError(f"the server did not switch to {version}")


def _similar(stub, driver, prefix: str) -> None:
    _step("6. SimilarItems: products near a product")
    for rec in driver.execute_query(_TOP_ITEMS, prefix=prefix, n=3).records:
        answer = stub.SimilarItems(pb.SimilarItemsRequest(item_id=rec["id"], k=5), timeout=10)
        names = _titles(driver, [it.item_id for it in answer.items])
        console.print(_items_table(f"like: {_short(rec['title'])}  ({rec['buyers']} buyers, {rec['category']})", answer, names))


def _dataset_users(dataset: str, root: Path) -> Counter:
    """Events per external user id in the dataset's files (the graph holds only pseudonyms, and may hold
    other datasets' users too)."""
    return Counter(e["user_id"] for e in DATASETS[dataset].events(root))


def _recommend(stub, driver, users: Counter) -> None:
    _step("7. RecommendForUser: items near a shopper's interest (already bought ones left out)")
    for user, _n in sorted(users.items(), key=lambda kv: (-kv[1], kv[0]))[:3]:
        answer = stub.RecommendForUser(pb.RecommendForUserRequest(user_id=user, k=5), timeout=10)
        names = _titles(driver, [it.item_id for it in answer.items])
        console.print(_items_table(f"for {user}", answer, names))
    answer = stub.RecommendForUser(pb.RecommendForUserRequest(user_id="someone-new", k=3), timeout=10)
    console.print(f"a new shopper gets a cold-start answer: cold_start={answer.cold_start}, {len(answer.items)} popular items")


def _live(stub, driver, gs: GraphSettings, users: Counter, prefix: str) -> None:
    _step("8. live: new events for one shopper, through IngestEvents")
    # a shopper with a short history, so a few new purchases are a clear change of interest
    user = min(users, key=lambda u: (abs(users[u] - 4), u))
    pseudonym = pseudonymise(gs.pseudonym_key.get_secret_value(), user)
    rows = driver.execute_query(_NEW_INTEREST, user=pseudonym, prefix=prefix, n=5).records
    category, items = (
        (rows[0]["category"], rows[0]["items"])
        if rows
        else (None, [r["id"] for r in driver.execute_query(_ANY_ITEMS, prefix=prefix, n=5).records])
    )
    before = stub.RecommendForUser(pb.RecommendForUserRequest(user_id=user, k=5), timeout=10)
    names = _titles(driver, items + [it.item_id for it in before.items])
    console.print(f"{user} now buys {len(items)} items" + (f" from '{category}'" if category else "") + ":")
    for i in items:
        console.print(f"  + {_short(names.get(i, i))}")
    old = stub.GetEmbedding(pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_USER, id=user), timeout=10)
    now = time.time()
    events = [
        pb.Event(event_id=f"demo-{int(now * 1000)}-{k}", user_id=user, type=pb.EVENT_TYPE_PURCHASE, item_id=i, ts=now)
        for k, i in enumerate(items)
    ]
    reply = stub.IngestEvents(iter([pb.IngestEventsRequest(events=events)]), timeout=30)
    acked = time.monotonic()
    console.print(f"acknowledged: {reply.accepted} accepted, {reply.duplicates} duplicates, {len(reply.rejected)} rejected")
    deadline = acked + 60
    while time.monotonic() < deadline:
        emb = stub.GetEmbedding(pb.GetEmbeddingRequest(node_type=pb.NODE_TYPE_USER, id=user), timeout=10)
        if emb.updated_at > old.updated_at:
            break
        time.sleep(0.02)
    fresh_s = time.monotonic() - acked
    after = stub.RecommendForUser(pb.RecommendForUserRequest(user_id=user, k=5), timeout=10)
    names.update(_titles(driver, [it.item_id for it in after.items]))
    console.print(_items_table("before", before, names))
    console.print(_items_table("after", after, names))
    changed = len({it.item_id for it in after.items} - {it.item_id for it in before.items})
    console.print(
        f"[bold green]freshness: {fresh_s:.2f}s[/bold green] from the acknowledgement to the new vector "
        f"served by the gRPC server (recomputed by the worker, written to Neo4j, on the delta stream); "
        f"{changed} of 5 recommendations changed"
    )
