"""How long-running work reports what it is doing: a stage (a heading), then details.

The CLI prints them to stderr (cli.ConsoleProgress); library callers get them as log
records. Kept apart from the pipeline so that the modules it orders (evaluation, build)
can report progress without importing the pipeline.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("edgeport")


class Progress(Protocol):
    def stage(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...


class SilentProgress:
    """Progress as log records only: nothing on the terminal unless logging is set up."""

    def stage(self, message: str) -> None:
        log.info(message)

    def info(self, message: str) -> None:
        log.info(message)
