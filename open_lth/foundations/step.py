"""A point in training, written as a string everywhere: `50000it`, `160ep`, `2ep100it`."""

from __future__ import annotations

import functools
import re

from open_lth.foundations.errors import UserError

_STEP_RE = re.compile(r"^\s*(?:(\d+)ep)?\s*(?:(\d+)it)?\s*$")


def check_step_syntax(text: str, what: str = "step") -> None:
    """Raise a UserError unless `text` looks like `2ep100it`, `160ep` or `50000it`."""
    match = _STEP_RE.match(text or "")
    if not text or not match or (match.group(1) is None and match.group(2) is None):
        raise UserError(
            f"malformed {what} '{text}': write iterations and/or epochs, "
            "e.g. '50000it', '160ep' or '2ep100it'"
        )


@functools.total_ordering
class Step:
    """An iteration count, with the epoch length needed to read and write epochs."""

    def __init__(self, iteration: int, iterations_per_epoch: int) -> None:
        if iteration < 0:
            raise ValueError(f"negative iteration {iteration}")
        if iterations_per_epoch <= 0:
            raise ValueError(f"iterations_per_epoch must be positive, got {iterations_per_epoch}")
        self._iteration = iteration
        self._ipe = iterations_per_epoch

    @staticmethod
    def from_str(text: str, iterations_per_epoch: int, what: str = "step") -> Step:
        check_step_syntax(text, what)
        ep, it = _STEP_RE.match(text).groups()
        return Step(int(ep or 0) * iterations_per_epoch + int(it or 0), iterations_per_epoch)

    @staticmethod
    def zero(iterations_per_epoch: int) -> Step:
        return Step(0, iterations_per_epoch)

    @property
    def iteration(self) -> int:
        return self._iteration

    @property
    def iterations_per_epoch(self) -> int:
        return self._ipe

    @property
    def ep(self) -> int:
        return self._iteration // self._ipe

    @property
    def it(self) -> int:
        """The iteration within the current epoch."""
        return self._iteration % self._ipe

    def __int__(self) -> int:
        return self._iteration

    def __str__(self) -> str:
        return f"{self._iteration}it"

    def __repr__(self) -> str:
        return f"Step({self._iteration}it = {self.ep}ep{self.it}it)"

    def _other(self, other: object) -> int:
        if isinstance(other, Step):
            if other._ipe != self._ipe:
                raise ValueError("comparing steps with different epoch lengths")
            return other._iteration
        if isinstance(other, int):
            return other
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        value = self._other(other)
        return value is not NotImplemented and self._iteration == value

    def __lt__(self, other: object) -> bool:
        return self._iteration < self._other(other)

    def __hash__(self) -> int:
        return hash(self._iteration)
