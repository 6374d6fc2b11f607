"""Rich progress bars for long jobs: dataset loading, training, sampling.

Library functions take plain callbacks (``progress(done, total)``); this module turns them into
bars so the library never depends on a terminal.
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


class JobProgress:
    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def phase(self, description: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback that drives a bar labelled ``description``."""
        task: list[TaskID] = []

        def update(done: int, total: int) -> None:
            if not task:
                task.append(self._progress.add_task(description, total=total, stats=""))
            self._progress.update(task[0], completed=done, total=total)

        return update

    def training(self, iterations: int) -> Callable[[int, dict[str, float]], None]:
        """A per-iteration callback showing the run's metrics (loss, energies or gradient norm) beside the bar."""
        task = self._progress.add_task("training", total=iterations, stats="")

        def update(iteration: int, record: dict[str, float]) -> None:
            labels = {"loss": "loss", "energy_pos": "E+", "energy_neg": "E-", "grad_norm": "|g|"}
            stats = "  ".join(f"{label} {record[key]:+.4f}" for key, label in labels.items() if key in record)
            self._progress.update(task, completed=iteration, stats=stats)

        return update


@contextmanager
def job_progress(console: Console) -> Iterator[JobProgress]:
    columns = (
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield JobProgress(progress)
