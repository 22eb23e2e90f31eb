"""The base class of pruning strategies, and what a strategy gets to see."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from open_lth.foundations.hparams import Hparams, PruningHparams
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model
from open_lth.training.data import DeviceData


@dataclass
class PruneContext:
    """Everything a strategy may use to choose level L's mask."""

    model: Model  # level L-1's trained weights, on the device, with its mask applied
    mask: Mask  # level L-1's mask (all ones at level 0); pruned weights stay pruned
    train_data: DeviceData  # the run's training set; `batch(index)` gives it unaugmented
    pruning: PruningHparams
    seed: int  # derived from the replicate and the level
    level: int  # the level being created (>= 1)
    start_model: Model  # the level's starting weights (unmasked), on the device
    batch_size: int  # the run's training batch size
    workdir: Path  # the level's directory: a strategy may keep a checkpoint here
    quiet: bool = False  # no progress bar
    cuda_graphs: str = "auto"  # --cuda_graphs, for a strategy that trains (Gem-Miner)


class Strategy(abc.ABC):
    """A registered strategy (`@registries.strategies.register("magnitude")`).

    Most strategies only score weights and subclass `pruning.base.ScoreStrategy`,
    which removes `pruning_fraction` of the survivors by score. A strategy that finds
    its mask in its own way (Gem-Miner) implements `prune` directly.
    """

    # The strategy's own hparams (flags prefixed by its name), or None.
    hparams_type: ClassVar[type[Hparams] | None] = None
    description: ClassVar[str] = ""
    # A one-shot strategy finds the final mask at level 1 (Gem-Miner); its lottery
    # run has levels 0 (dense) and 1 only.
    one_shot: ClassVar[bool] = False
    # False: the model's default --pruning_layers_to_ignore (e.g. ResNet's fc.weight)
    # does not apply; only layers named on the command line are ignored (Gem-Miner
    # scores every layer, as published).
    uses_model_ignore_list: ClassVar[bool] = True

    @classmethod
    def resolve(
        cls, hparams: Hparams | None, levels: int, pruning: PruningHparams
    ) -> Hparams | None:
        """Fill defaults that depend on the lottery's --levels (before the run is named)."""
        return hparams

    @classmethod
    def changed_since(cls, made: int, pruning: PruningHparams, model: Model) -> str | None:
        """What a lottery level made under the rules of format `made` computed
        differently for this description (its pruned levels) on `model` (a fresh
        network of the run's kind), or None if nothing; the text says how to
        get the old behaviour (see open_lth.foundations.formats)."""
        return None

    def __init__(self, hparams: Hparams | None = None) -> None:
        self.hparams = hparams

    def check(self, model: Model, ignored: list[str], iterations_per_epoch: int) -> None:  # noqa: B027
        """Raise UserError on values that need the model or the data, before anything
        is written."""

    def kept(self, previous: Mask, ignore: list[str], pruning: PruningHparams) -> int | None:
        """How many weights in total the mask `prune` makes from `previous` keeps,
        computed from the counts alone: the lottery checks every level's mask against it
        to the weight (None: no check)."""
        return None

    @abc.abstractmethod
    def prune(self, ctx: PruneContext, ignore: list[str]) -> Mask:
        """Level L's mask: a subset of `ctx.mask` that keeps every weight in `ignore`."""
