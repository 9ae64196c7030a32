"""``python -m server``: run the gRPC server with settings from the environment (IG_SERVER_*, IG_*, NEO4J_*)."""

from __future__ import annotations

import logging
import sys

from server.app import LOG_FORMAT, check_exposure, run_process
from server.processes import process_count, supervise
from server.settings import ServerSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = ServerSettings()
    if process_count(settings) == 1:
        run_process(settings)
        return
    check_exposure(settings)  # fail here, once, rather than in every child
    sys.exit(supervise(settings, run_process))


if __name__ == "__main__":
    main()
