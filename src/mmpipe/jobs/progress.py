"""A rich progress bar for a job: items done of items listed so far, rate, ETA, errors."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class JobProgress:
    """Shown only on a terminal; the total is unknown until listing ends, then the ETA appears."""

    def __init__(self, label: str, enabled: bool | None = None):
        console = Console(stderr=True)
        self.enabled = console.is_terminal if enabled is None else enabled
        self.listed = 0
        self.errors = 0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TextColumn("{task.fields[rate]} items/s"),
            TextColumn("[red]{task.fields[errors]} errors"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(),
            console=console, disable=not self.enabled, transient=False)
        self.task = self.progress.add_task(label, total=None, rate="-", errors=0)

    def __enter__(self) -> "JobProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def on_listed(self) -> None:
        self.listed += 1

    def on_listing_done(self) -> None:
        self.progress.update(self.task, total=self.listed)

    def on_done(self, items: int, errors: int) -> None:
        self.errors += errors
        task = self.progress.tasks[0]
        rate = f"{task.speed:.1f}" if task.speed else "-"
        self.progress.update(self.task, advance=items, rate=rate, errors=self.errors)
