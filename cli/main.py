"""``interest``: one entry point for everything a person runs (stack, graph, models, serving)."""

from __future__ import annotations

import typer

from cli.picture import picture
from graphdb.cli import graph_app, stack_app
from workers.model_cli import app as models_app
from workers.worker_cli import worker_app

app = typer.Typer(help="Real-time user-interest graph service.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
graph_app.command("picture")(picture)
app.add_typer(graph_app, name="graph")
app.add_typer(models_app, name="model")
app.add_typer(worker_app, name="worker")


@app.command("demo")
def demo(
    dataset: str = typer.Option("amazon-office", help="amazon-office | amazon-hin | gowalla"),
    budget_min: float = typer.Option(2.0, help="training budget, minutes"),
    port: int = typer.Option(None, help="gRPC port (default IG_SERVER_PORT)"),
) -> None:
    """Run the whole service on the local stack and show it working through the gRPC API."""
    from cli.demo import run  # grpc, the driver and the server's modules: only when the demo runs

    run(dataset, budget_min, port)


if __name__ == "__main__":
    app()
