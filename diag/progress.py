"""Progress on stderr for work that can take more than a couple of seconds.

Its own module so the core (api, engine, run) can all show progress without importing
each other.
"""

from __future__ import annotations

from collections.abc import Callable

# What a long task calls as it goes: (done, total).
Advance = Callable[[int, int], None]


class Progress:
    """A rich progress bar on stderr, or a no-op when quiet (not a terminal, --quiet, small)."""

    def __init__(self, quiet: bool, total: int, label: str, unit: str = "bytes") -> None:
        self.quiet = quiet
        self.total = total
        self.label = label
        self.unit = unit

    def __enter__(self) -> Advance | None:
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        amount = DownloadColumn() if self.unit == "bytes" else MofNCompleteColumn()
        self._bar = Bar(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            amount,
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total)
        return lambda done, total: self._bar.update(self._task, completed=done)

    def describe(self, text: str, total: int | None = None) -> None:
        """Name what is running now (a rule, a shared computation), and grow the total when
        work joins that was not known at the start; a no-op when quiet."""
        if not self.quiet and hasattr(self, "_bar"):
            self._bar.update(self._task, description=f"{self.label}: {text}", total=total)

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self._bar.stop()
