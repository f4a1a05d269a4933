"""Framework callbacks over `diag.live.LiveSession`: `lightning`, `transformers`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

logger = logging.getLogger("diag")


def echo_and_log(user: Callable[[str], None] | None) -> Callable[[str], None]:
    """Each line to the user's echo (default: stderr) and to the "diag" logger."""
    write = user or (lambda line: print(line, file=sys.stderr, flush=True))

    def echo(line: str) -> None:
        write(line)
        logger.info(line)  # INFO: Python's last-resort handler would print it twice

    return echo
