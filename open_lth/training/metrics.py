"""Metrics as a long CSV (iteration, name, value), appended as they happen so that a
crashed run keeps its curve and `pandas.read_csv` reads it in one call."""

from __future__ import annotations

import csv
from pathlib import Path

from open_lth.foundations import distributed
from open_lth.foundations.store import atomic_write_text

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
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pending: list[str] = []

    def keep_until(self, iteration: int) -> None:
        """Keep only rows up to `iteration`: a resumed run logs the rest again."""
        kept = [r for r in read_rows(self.path) if r[0] <= iteration]
        atomic_write_text(self.path, HEADER + "".join(_format(*r) for r in kept))

    def log(self, iteration: int, name: str, value: float) -> None:
        self._pending.append(_format(iteration, name, value))

    def flush(self) -> None:
        if not distributed.is_primary():
            self._pending.clear()  # under torchrun only rank 0 writes
        if self._pending:
            with open(self.path, "a") as f:
                f.write("".join(self._pending))
            self._pending.clear()


def _format(iteration: int, name: str, value: float) -> str:
    return f"{iteration},{name},{value!r}\n"
