"""Stopping on a signal: SIGINT, SIGTERM and SIGUSR2 (Slurm's and submitit's warning of
preemption or of the time limit) become a flag that a loop checks between steps, so it
saves a checkpoint first and then raises `Interrupted`. The trainer and Gem-Miner's
search take both from here; the CLI turns `Interrupted` into its exit status."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGUSR2 arrived; a checkpoint was saved first."""

    def __init__(self, signum: int, iteration: int, where: str = "iteration") -> None:
        super().__init__(f"interrupted at {where} {iteration}; checkpoint saved")
        self.signum = signum
        self.iteration = iteration


class StopFlag:
    signum: int | None = None


@contextlib.contextmanager
def signals_to_flag() -> Iterator[StopFlag]:
    """Turn SIGINT/SIGTERM/SIGUSR2 into a flag the loop checks, so it can checkpoint
    first."""
    flag = StopFlag()

    def handler(signum: int, frame: object) -> None:
        flag.signum = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
