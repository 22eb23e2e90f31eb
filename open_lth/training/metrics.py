"""Metrics as a long CSV (iteration, name, value), appended as they happen so that a
crashed run keeps its curve and `pandas.read_csv` reads it in one call."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from open_lth.foundations import distributed
from open_lth.foundations.store import atomic_write_text
from open_lth.training.trackers import Tracker

HEADER = "iteration,name,value\n"


def read_rows(path: Path) -> list[tuple[int, str, float]]:
    """Every complete row; a row cut short by a kill is skipped."""
    rows = []
    if not Path(path).exists():
        return rows
    with open(path, newline="") as f:
        for record in csv.reader(f):
            if len(record) != 3 or record[0] == "iteration":
                continue
            try:
                rows.append((int(record[0]), record[1], float(record[2])))
            except ValueError:
                continue
    return rows


class MetricLogger:
    """The CSV and the trackers (--loggers) beside it: every row goes to both, here."""

    def __init__(
        self, path: Path, open_trackers: Callable[[int], list[Tracker]] | None = None
    ) -> None:
        self.path = Path(path)
        self._pending: list[tuple[int, str, float]] = []
        self._open_trackers = open_trackers
        self.trackers: list[Tracker] = []

    def keep_until(self, iteration: int) -> None:
        """Keep only rows up to `iteration`: a resumed run logs the rest again. The
        trackers start here, told the same."""
        kept = [r for r in read_rows(self.path) if r[0] <= iteration]
        atomic_write_text(self.path, HEADER + "".join(_format(*r) for r in kept))
        if self._open_trackers and distributed.is_primary() and not self.trackers:
            self.trackers = self._open_trackers(iteration)

    def log(self, iteration: int, name: str, value: float) -> None:
        self._pending.append((iteration, name, value))

    def flush(self) -> None:
        if not distributed.is_primary():
            self._pending.clear()  # under torchrun only rank 0 writes
        if self._pending:
            with open(self.path, "a") as f:
                f.write("".join(_format(*r) for r in self._pending))
            for tracker in self.trackers:
                for iteration, values in _by_iteration(self._pending).items():
                    tracker.log(iteration, values)
            self._pending.clear()

    def close(self) -> None:
        """End the trackers' runs (the end of a stage, or an interruption)."""
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def _by_iteration(rows: list[tuple[int, str, float]]) -> dict[int, dict[str, float]]:
    grouped: dict[int, dict[str, float]] = {}
    for iteration, name, value in rows:
        grouped.setdefault(iteration, {})[name] = value
    return grouped


def _format(iteration: int, name: str, value: float) -> str:
    return f"{iteration},{name},{value!r}\n"
