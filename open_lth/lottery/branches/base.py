"""The base class of lottery branches: experiments that hang off a trained level.

A branch reads the level (its mask, its starting weights, its trained weights) and
writes only into its own folder, `level_<L>/<name>_<hash of its hparams>/`."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from open_lth.foundations.hparams import Hparams
from open_lth.lottery.levels import Levels
from open_lth.training.job import Job


@dataclass
class BranchContext:
    levels: Levels  # the lottery run's replicate, its description and its data
    level: int
    out: Path  # the branch's folder
    job: Job


class Branch(abc.ABC):
    """A registered branch (`@registries.branches.register("instability")`)."""

    hparams_type: ClassVar[type[Hparams]]
    description: ClassVar[str]

    def __init__(self, hparams: Hparams) -> None:
        self.hparams = hparams

    def check(self, ctx: BranchContext) -> None:  # noqa: B027 - most branches need no check
        """Raise UserError on values that need the data or the level; nothing is written."""

    def start_iteration(self, ctx: BranchContext) -> int:
        """The step the branch's training starts at (recorded in its hparams.json when it
        starts): by default the level's own start, 0 or the rewinding step k."""
        return ctx.levels.start_iteration(ctx.level)

    def changed_since(self, made: int, ctx: BranchContext) -> str | None:
        """What a folder of this branch made under the rules of format `made` computed
        differently, or None if nothing (see open_lth.foundations.formats)."""
        return None

    @abc.abstractmethod
    def is_done(self, out: Path) -> bool: ...

    @abc.abstractmethod
    def run(self, ctx: BranchContext) -> str:
        """Do the work (resuming what an earlier, interrupted call left); return a line
        that says what came out."""
