"""The description of a lottery (IMP) run: the training groups, the pruning and
lottery groups, and the chosen strategy's own hparams.

Every registered strategy's flags are on the command line (so `--help` shows them
all); the flags of a strategy that was not chosen must keep their defaults. The
strategy's group enters the run name only when it differs from its defaults, so a
strategy that gains its first hparam renames no existing run. A flag may be shared by
several strategies (`--target_density` by the one-shot ones): it is added once, and it
is refused with a strategy that does not have it, even at its default value."""

from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from open_lth.foundations import registries
from open_lth.foundations.desc import Desc
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import (
    DatasetHparams,
    DefaultHparams,
    Hparams,
    LotteryHparams,
    ModelHparams,
    PruningHparams,
    TrainingHparams,
    given,
)
from open_lth.lottery.strategy import Strategy


@dataclass
class LotteryDesc(Desc):
    dataset: DatasetHparams
    model: ModelHparams
    training: TrainingHparams
    pruning: PruningHparams
    lottery: LotteryHparams
    strategy: Hparams | None = None

    prefix: ClassVar[str] = "lottery"

    @functools.cached_property
    def strategy_type(self) -> type[Strategy]:
        """The chosen strategy, looked up once: the code asks it (`one_shot`, `resolve`,
        `hparams_type`) instead of comparing names. Not a field: no part of the name."""
        return registries.strategies.get(self.pruning.pruning_strategy)

    def make_strategy(self) -> Strategy:
        return self.strategy_type(self.strategy)

    @classmethod
    def group_types(cls) -> dict[str, type[Hparams]]:
        return {n: t for n, t in super().group_types().items() if n != "strategy"}

    def groups(self) -> list[Hparams]:
        groups = [getattr(self, name) for name in self.group_types()]
        if self.strategy is not None and self.strategy.non_default():
            groups.append(self.strategy)
        return groups

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None:
        for name, group_type in cls.group_types().items():
            group_type.add_args(parser, defaults=getattr(defaults, name, None))
        added: set[str] = set()
        for name in registries.strategies.names():
            strategy_hparams = registries.strategies.get(name).hparams_type
            if strategy_hparams is not None:
                strategy_hparams.add_args(parser, exclude=frozenset(added))
                added.update(f.name for f in dataclasses.fields(strategy_hparams))

    @classmethod
    def create_from_args(cls, args: argparse.Namespace) -> LotteryDesc:
        desc = super().create_from_args(args)
        strategy = desc.strategy_type
        check_strategy_flags(args, desc)
        if strategy.hparams_type is not None:
            desc.strategy = strategy.hparams_type.create_from_args(args)
        if not strategy.uses_model_ignore_list and "pruning_layers_to_ignore" not in given(args):
            # The model's default ignore list (ResNet's fc.weight) is for IMP; this
            # strategy prunes every layer unless told otherwise, and the description
            # (hparams.json, the run name) records what it does.
            desc.pruning = dataclasses.replace(desc.pruning, pruning_layers_to_ignore=None)
        return desc

    def to_dict(self) -> dict[str, dict[str, Any]]:
        values = {name: getattr(self, name).to_dict() for name in self.group_types()}
        if self.strategy is not None:
            values["strategy"] = self.strategy.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, dict[str, Any]]) -> LotteryDesc:
        desc = cls(**{n: t.from_dict(values[n]) for n, t in cls.group_types().items()})
        strategy = desc.strategy_type.hparams_type
        if strategy is not None:
            desc.strategy = strategy.from_dict(values.get("strategy", {}))
        return desc

    def display(self) -> str:
        shown = [getattr(self, name) for name in self.group_types()]
        return "\n".join(g.display() for g in shown + ([self.strategy] if self.strategy else []))


def check_strategy_flags(args: argparse.Namespace, desc: LotteryDesc) -> None:
    """A strategy's flag given with a strategy that does not have it does nothing: refuse
    it, even at its default value, naming the strategies it applies to."""
    chosen, own_type = desc.pruning.pruning_strategy, desc.strategy_type.hparams_type
    own = {f.name for f in dataclasses.fields(own_type)} if own_type is not None else set()
    owners: dict[str, list[str]] = {}
    defaults: dict[str, Any] = {}
    for name in registries.strategies.names():
        hparams_type = registries.strategies.get(name).hparams_type
        for f in dataclasses.fields(hparams_type) if hparams_type is not None else ():
            owners.setdefault(f.name, []).append(name)
            defaults[f.name] = f.default
    for field, names in owners.items():
        if field in own:
            continue
        if field in given(args) or getattr(args, field, defaults[field]) != defaults[field]:
            raise UserError(
                f"--{field} applies to --pruning_strategy={', '.join(names)}, not {chosen}"
            )
