"""``python -m server``: run the gRPC server with settings from the environment (IG_SERVER_*, IG_*, NEO4J_*)."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import SecretStr

from server.settings import ServerSettings


def _default(value: object) -> str:
    return "(secret)" if isinstance(value, SecretStr) else repr(value)


def _parser() -> argparse.ArgumentParser:
    prefix = ServerSettings.model_config.get("env_prefix", "")
    names = [f"  {(prefix + name).upper():<38} {_default(field.default)}" for name, field in ServerSettings.model_fields.items()]
    return argparse.ArgumentParser(
        prog="python -m server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve nearest items and recommendations over gRPC from the graph's embeddings (FAISS), "
        "following the worker's delta stream. Every setting comes from the environment.",
        epilog="server settings (variable, default); the graph's (IG_*, NEO4J_*) are in the README's table:\n" + "\n".join(names),
    )


def main(argv: list[str] | None = None) -> None:
    _parser().parse_args(argv)  # --help, and a clear error for anything else given on the command line
    # grpc, FAISS and the driver load only once the server is really to run
    from graphdb.settings import GraphSettings
    from server.app import LOG_FORMAT, check_exposure, check_pseudonym_key, run_process
    from server.processes import process_count, supervise

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = ServerSettings()
    if process_count(settings) == 1:
        run_process(settings)
        return
    check_exposure(settings)  # fail here, once, rather than in every child
    check_pseudonym_key(settings, GraphSettings())
    sys.exit(supervise(settings, run_process))


if __name__ == "__main__":
    main()
