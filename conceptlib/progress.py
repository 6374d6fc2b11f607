"""Rich progress bars for long jobs: dataset loading, training, sampling.

Library functions take plain callbacks (``progress(done, total)``); this module turns them into
bars so the library never depends on a terminal. A bar appears at its first report, not when its
callback is made: a job that fails its checks before any work (an unknown source) prints its one
error line, not a ``training 0/300`` bar above it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column


class JobProgress:
    """Bars on ``console``, the live display started with the first of them (an empty one prints a blank line)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress: Progress | None = None

    def _add(self, description: str, total: int) -> TaskID:
        if self._progress is None:
            self._progress = Progress(*COLUMNS, console=self._console, transient=False)
            self._progress.start()
        return self._progress.add_task(description, total=total, stats="")

    def _update(self, task: TaskID, **fields: object) -> None:
        assert self._progress is not None
        self._progress.update(task, **fields)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, description: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback that drives a bar labelled ``description``."""
        task: list[TaskID] = []

        def update(done: int, total: int) -> None:
            if not task:
                task.append(self._add(description, total))
            self._update(task[0], completed=done, total=total)

        return update

    def samples(self, description: str) -> Callable[[float, int], None]:
        """A ``(samples done, samples)`` callback: a bar counting whole samples, a batch's share as its steps pass."""
        update = self.phase(description)
        return lambda done, total: update(int(done), total)

    def training(self, iterations: int) -> Callable[[int, dict[str, float]], None]:
        """A per-iteration callback showing the run's metrics (loss, energies or gradient norm) beside the bar."""
        task: list[TaskID] = []

        def update(iteration: int, record: dict[str, float]) -> None:
            if not task:
                task.append(self._add("training", iterations))
            labels = {"loss": "loss", "energy_pos": "E+", "energy_neg": "E-", "grad_norm": "|g|"}
            stats = " ".join(f"{label}={record[key]:+.4f}" for key, label in labels.items() if key in record)
            self._update(task[0], completed=iteration, stats=stats)

        return update


_KEEP = {"no_wrap": True}
COLUMNS = (  # counts and times whole; at 80 columns the bar shrinks and the metrics wrap at words, nothing is cut
    TextColumn("{task.description:<16}", table_column=Column(**_KEEP)),
    BarColumn(bar_width=8),
    MofNCompleteColumn(table_column=Column(**_KEEP)),
    TimeElapsedColumn(table_column=Column(**_KEEP)),
    TimeRemainingColumn(table_column=Column(**_KEEP)),
    TextColumn("{task.fields[stats]}", table_column=Column(overflow="fold")),
)


@contextmanager
def job_progress(console: Console) -> Iterator[JobProgress]:
    progress = JobProgress(console)
    try:
        yield progress
    finally:
        progress.stop()
