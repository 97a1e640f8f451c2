"""How long-running work reports what it is doing: a stage (a heading), details, and
which candidate of the search is under way.

The CLI prints them to stderr (ConsoleProgress); library callers get them as log
records. Kept apart from the pipeline so that the modules it orders (evaluation, build)
can report progress without importing the pipeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("edgeport")


class Progress(Protocol):
    def stage(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def candidate(self, index: int, total: int, name: str) -> None:
        """Candidate `index` of `total` (1-based) starts being built and validated."""


class SilentProgress:
    """Progress as log records only: nothing on the terminal unless logging is set up."""

    def stage(self, message: str) -> None:
        log.info(message)

    def info(self, message: str) -> None:
        log.info(message)

    def candidate(self, index: int, total: int, name: str) -> None:
        log.info("candidate %d of %d: %s", index, total, name)


def clock_text(seconds: float) -> str:
    """0:42, 3:05, 1:02:03."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SearchClock:
    """Where a search stands: candidate k of n, its current step, the time spent since
    the conversion started, and an estimate of what remains (the mean time of the
    candidates finished so far, for the current one's rest and each one still to come;
    pruned candidates take no time, so it errs long)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.started = now()
        self.index = 0
        self.total = 0
        self.name = ""
        self.step = ""
        self.candidate_started = self.started
        self.durations: list[float] = []

    def candidate(self, index: int, total: int, name: str) -> None:
        moment = self.now()
        if index <= self.index:  # a new search (the next pair of a build)
            self.durations = []
        elif self.index:
            self.durations.append(moment - self.candidate_started)
        self.index, self.total, self.name, self.step = index, total, name, ""
        self.candidate_started = moment

    def remaining_s(self) -> float | None:
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        current_left = max(0.0, mean - (self.now() - self.candidate_started))
        return current_left + mean * max(0, self.total - self.index)

    def line(self) -> str:
        parts = [f"candidate {self.index}/{self.total}: {self.name}"]
        if self.step:
            parts.append(self.step)
        parts.append(f"{clock_text(self.now() - self.started)} elapsed")
        remaining = self.remaining_s()
        parts.append(
            "time left not known yet" if remaining is None else f"~{clock_text(remaining)} left"
        )
        return " | ".join(parts)


class ConsoleProgress:
    """Stages and details as lines on stderr. On a terminal, a live line under them shows
    the candidate (k of n), its step, the time spent and an estimate of what remains; when
    stderr is not a terminal (CI logs) that line is printed once per candidate instead.
    Use it as a context manager so the live line is taken down at the end."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.clock = SearchClock()
        self._live: Any = None

    def __enter__(self) -> ConsoleProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def stage(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[bold cyan]==>[/] {escape(message)}")

    def info(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"    {escape(message)}", style="dim")
        if self.clock.index:
            # "onnx-int8-static: validating against PyTorch" -> the step of the candidate
            self.clock.step = message.split(": ", 1)[-1][:60]

    def candidate(self, index: int, total: int, name: str) -> None:
        self.clock.candidate(index, total, name)
        if not self.console.is_terminal:
            self.console.print(f"    {self.clock.line()}", style="dim", markup=False)
            return
        if self._live is None:
            from rich.live import Live
            from rich.text import Text

            self._live = Live(
                console=self.console,
                transient=True,
                refresh_per_second=2,
                get_renderable=lambda: Text(self.clock.line(), style="bold"),
            )
            self._live.start()
