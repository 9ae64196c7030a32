"""``interest stack ...`` and ``interest graph ...``: the local stack, migrations, dataset loading, Cypher."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console

from graphdb.errors import InterestError
from graphdb.import_cli import graph_import, rate_progress

# The driver, the loaders and even the settings (pydantic) are imported by the commands that use them, so
# `interest --help` answers at once.

console = Console()
stack_app = typer.Typer(help="The local stack: embedded Neo4j and a loopback redis-server.", no_args_is_help=True)
graph_app = typer.Typer(help="The graph: migrate, load datasets, counts, Cypher.", no_args_is_help=True)
graph_app.command("import")(graph_import)  # a shop's own files (graphdb/import_cli.py)


def _fail(exc: InterestError) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


@stack_app.command("up")
def stack_up() -> None:
    """Start Neo4j and Redis (what already runs is left alone) and wait until both answer."""
    from graphdb import localstack
    from graphdb.settings import LocalStackSettings

    settings = LocalStackSettings()
    try:
        started = time.monotonic()
        services = localstack.up(settings)
    except InterestError as exc:
        _fail(exc)
    for name, svc in services.items():
        console.print(f"{name}: 127.0.0.1:{svc.port} (pid {svc.pid()}, log {svc.log_file})")
    if url := localstack.browser_url(settings):
        console.print(f"Neo4j Browser: {url} (connect to bolt://127.0.0.1:{settings.neo4j_port}, no authentication)")
    console.print(f"stack up in {time.monotonic() - started:.1f} s")


@stack_app.command("down")
def stack_down() -> None:
    """Stop Neo4j (clean shutdown) and Redis."""
    from graphdb import localstack
    from graphdb.settings import LocalStackSettings

    for name, was_running in localstack.down(LocalStackSettings()).items():
        console.print(f"{name}: {'stopped' if was_running else 'was not running'}")


@stack_app.command("status")
def stack_status() -> None:
    """Whether Neo4j and Redis run, on which ports."""
    from graphdb import localstack
    from graphdb.settings import LocalStackSettings

    for name, st in localstack.status(LocalStackSettings()).items():
        console.print(f"{name}: {'running' if st['running'] else 'stopped'} port {st['port']} pid {st['pid']}")


@graph_app.command("migrate")
def graph_migrate() -> None:
    """Create constraints and indexes (idempotent)."""
    from graphdb.driver import connect
    from graphdb.schema import migrate
    from graphdb.settings import GraphSettings, Neo4jSettings

    try:
        with connect(Neo4jSettings()) as driver:
            console.print(f"schema version {migrate(driver, GraphSettings())}")
    except InterestError as exc:
        _fail(exc)


@graph_app.command("load")
def graph_load(
    dataset: str = typer.Argument(..., help="one of: gowalla, amazon-hin, amazon-office"),
    limit: int = typer.Option(None, help="load at most this many events"),
) -> None:
    """Load a research dataset through the ingestion path, with progress."""
    from graphdb.driver import connect
    from graphdb.loaders import DATASETS, load_dataset
    from graphdb.schema import migrate
    from graphdb.settings import DataSettings, GraphSettings, Neo4jSettings

    gs, data = GraphSettings(), DataSettings()
    try:
        root = data.dataset_dir(dataset)
        with connect(Neo4jSettings()) as driver:
            migrate(driver, gs)
            total = DATASETS[dataset].count_events(root) if dataset in DATASETS else 0
            total = min(total, limit) if limit else total
            started = time.monotonic()
            with rate_progress(f"loading {dataset}", console) as bar:
                task = bar.add_task("load", total=total, rate="")

                def advance(n: int) -> None:
                    bar.advance(task, n)
                    done = bar.tasks[task].completed
                    bar.update(task, rate=f"{done / max(time.monotonic() - started, 1e-9):,.0f} ev/s")

                result = load_dataset(driver, gs, dataset, root, limit=limit, progress=advance)
            elapsed = time.monotonic() - started
    except InterestError as exc:
        _fail(exc)
    console.print(
        f"{dataset}: {result.accepted:,} events stored, {result.duplicates:,} duplicates, "
        f"{len(result.rejected):,} rejected in {elapsed:.1f} s ({result.accepted / max(elapsed, 1e-9):,.0f} ev/s)"
    )
    for r in result.rejected[:5]:
        console.print(f"  rejected #{r.index}: {r.reason}")


@graph_app.command("stats")
def graph_stats(as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts of nodes, relationships and events in the graph."""
    from rich.table import Table

    from graphdb.driver import connect
    from graphdb.settings import Neo4jSettings
    from graphdb.stats import graph_counts

    try:
        with connect(Neo4jSettings()) as driver:
            counts = graph_counts(driver)
    except InterestError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(counts))
        return
    table = Table("kind", "name", "count")
    for kind, values in counts.items():
        for name, n in values.items():
            table.add_row(kind, name, f"{n:,}")
    console.print(table)


def _parse_params(params: list[str], user_params: list[str], key: str) -> dict[str, object]:
    """``name=value`` pairs: a value that parses as JSON is used as such (numbers, lists, quoted strings),
    anything else as a plain string; ``--user-param`` values are external user ids, pseudonymised."""
    from graphdb.pseudonym import pseudonymise

    out: dict[str, object] = {}
    for raw, is_user in [(p, False) for p in params] + [(p, True) for p in user_params]:
        name, sep, value = raw.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise typer.BadParameter(f"expected name=value, got {raw!r}")
        if is_user:
            out[name] = pseudonymise(key, value)
            continue
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


@graph_app.command("query")
def graph_query(
    cypher: str = typer.Argument(..., help="a read-only Cypher query; $name refers to a parameter"),
    limit: int = 20,
    param: list[str] = typer.Option(
        [], "--param", "-p", help='NAME=VALUE, repeatable; VALUE is JSON when it parses (10, 0.5, [1,2], "123"), else a string'
    ),
    user_param: list[str] = typer.Option(
        [], "--user-param", "-u", help="NAME=EXTERNAL_USER_ID, repeatable; passed as the user's pseudonym (IG_PSEUDONYM_KEY)"
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per row instead of a table"),
) -> None:
    """Run a read-only Cypher query (as an analyst would) with parameters and print the rows."""
    import neo4j
    from rich.table import Table

    from graphdb.driver import connect
    from graphdb.settings import GraphSettings, Neo4jSettings

    params = _parse_params(param, user_param, GraphSettings().pseudonym_key.get_secret_value() if user_param else "")
    try:
        with connect(Neo4jSettings()) as driver:
            records, _, keys = driver.execute_query(cypher, params, routing_=neo4j.RoutingControl.READ)
    except InterestError as exc:
        _fail(exc)
    except neo4j.exceptions.Neo4jError as exc:
        console.print(f"[red]Cypher error:[/red] {exc.message}")
        raise typer.Exit(1)
    if as_json:
        for r in records[:limit]:
            print(json.dumps(dict(r), default=str))
        return
    table = Table(*keys)
    for r in records[:limit]:
        table.add_row(*(str(r[k]) for k in keys))
    console.print(table)
