"""Pruning at initialization: one-shot strategies that score the level's starting
weights and jump at level 1 to `--target_density`, as Gem-Miner does (Frankle et al.
2021, "Pruning Neural Networks at Initialization: Why Are We Missing the Mark?").

The target counts as IMP's levels do (pruning.select): round(target_density × every
prunable weight, the ignored layers' included), the ignored layers keep their weights
and the rest is removed from the other layers, globally, by score; with
--pruning_count_without_ignored, round(target_density × the weights outside the
ignored layers). So `--target_density=0.8^L` keeps what L levels of IMP keep, up to
the rounding of IMP's per-level ⌈0.2 × remaining⌉ (a few weights).

This module holds what the strategies share: the hparams (`--target_density`; the
examples of SNIP and GraSP), the target count, the balanced examples, the selection
and `magnitude_at_init`. snip.py, grasp.py and synflow.py hold the scores."""

from __future__ import annotations

import abc
import copy
import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch

from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import Hparams, PruningHparams, fraction, hp, positive_int
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model
from open_lth.lottery.strategy import PruneContext, Strategy
from open_lth.pruning.select import lowest_positions
from open_lth.training.data import DeviceData, derive_seed


@dataclass
class AtInitHparams(Hparams):
    """The one flag every one-shot strategy shares (Gem-Miner's hparams extend it, so
    its field stays first and Gem-Miner's run names are unchanged)."""

    target_density: float | None = hp(
        None,
        "one-shot strategies (gem_miner, snip, grasp, synflow, magnitude_at_init): fraction "
        "of the prunable weights kept at level 1; default: the density that --levels levels "
        "of --pruning_fraction pruning reach, e.g. 0.8^8 = 0.168",
        check=fraction,
    )

    _name: ClassVar[str] = "One-shot Pruning Hyperparameters"
    _description: ClassVar[str] = "The density a one-shot strategy prunes to."


@dataclass
class ExamplesHparams(AtInitHparams):
    """SNIP's and GraSP's data: a few training examples, balanced over the classes."""

    pai_examples: int | None = hp(
        None,
        "snip, grasp: training examples scored, drawn balanced per class with the run's seed, "
        "unaugmented (default: 10 per class)",
        check=positive_int,
    )


def density_of_levels(levels: int, pruning: PruningHparams) -> float:
    """The density `levels` levels of --pruning_fraction reach, exact: (1 - 0.2)^8 is
    0.16777216, not 0.1677721600000001, in the run name."""
    density = float((1 - Fraction(repr(pruning.pruning_fraction))) ** max(levels, 1))
    if density <= 0:
        raise UserError(
            f"--levels {levels} of --pruning_fraction {pruning.pruning_fraction} keep no "
            "weights; give --target_density"
        )
    return density


def resolve_density(hparams: AtInitHparams, levels: int, pruning: PruningHparams) -> AtInitHparams:
    if hparams.target_density is not None:
        return hparams
    return dataclasses.replace(hparams, target_density=density_of_levels(levels, pruning))


def target_kept(
    density: float, mask: Mask, ignore: list[str], pruning: PruningHparams
) -> tuple[int, int]:
    """(weights kept in total, of them outside the ignored layers) at `density`, counted
    as IMP counts (see the module's docstring). UserError if it cannot be met."""
    scored = [n for n in mask if n not in ignore]
    if not scored:
        raise UserError(
            "every prunable layer is in --pruning_layers_to_ignore; leave at least one to prune"
        )
    fixed = sum(int(mask[n].sum()) for n in mask if n in ignore)
    if pruning.pruning_count_without_ignored:
        counted = sum(mask[n].numel() for n in scored)
        kept_scored = round(density * counted)
    else:
        counted = sum(m.numel() for m in mask.values())
        kept_scored = round(density * counted) - fixed
    alive = sum(int(mask[n].sum()) for n in scored)
    if kept_scored < 1:
        raise UserError(
            f"--target_density {density} keeps no weights outside --pruning_layers_to_ignore "
            f"(of {counted} counted, {fixed} are in ignored layers)"
        )
    if kept_scored > alive:
        raise UserError(
            f"--target_density {density} keeps {kept_scored} weights outside the ignored "
            f"layers, but only {alive} survive the previous mask"
        )
    return kept_scored + fixed, kept_scored


def keep_highest(scores: dict[str, torch.Tensor], mask: Mask, ignore: list[str], kept: int) -> Mask:
    """`mask` with only the `kept` highest-scoring survivors outside `ignore` left, one
    threshold across layers (the selector's rule)."""
    names = [n for n in mask if n not in ignore]
    layer_scores, masks = [scores[n] for n in names], [mask[n] for n in names]
    for s, m in zip(layer_scores, masks, strict=True):
        if torch.isnan(s.detach()).logical_and_(m.to(s.device, torch.bool)).any():
            raise UserError("the pruning scores hold NaN (the network's output overflows?)")
    alive = sum(int(m.sum()) for m in masks)
    new = {n: m.clone() for n, m in mask.items()}
    for n, gone in zip(names, lowest_positions(layer_scores, masks, alive - kept), strict=True):
        new[n].view(-1)[gone] = False
    return new


def balanced_examples(data: DeviceData, total: int | None, seed: int) -> torch.Tensor:
    """Indices of `total` training examples (default: 10 per class), as equal a number
    per class as `total` allows (the first classes get one more), drawn with `seed`."""
    labels = data.labels.cpu()
    classes = torch.unique(labels)
    total = 10 * len(classes) if total is None else total
    if total > len(labels):
        raise UserError(f"--pai_examples {total} is more than the {len(labels)} training examples")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for i, c in enumerate(classes.tolist()):
        want = total // len(classes) + (1 if i < total % len(classes) else 0)
        members = (labels == c).nonzero().squeeze(1)
        if want > len(members):
            raise UserError(
                f"--pai_examples {total} asks for {want} examples of class {c}, which has "
                f"{len(members)}"
            )
        chosen.append(members[torch.randperm(len(members), generator=g)[:want]])
    return torch.cat(chosen).sort().values.to(data.device)


def masked_start(ctx: PruneContext) -> dict[str, torch.Tensor]:
    """The level's starting weights with the previous mask applied, detached: every
    parameter by name (a pruned weight scores 0 under every formula here)."""
    weights = {n: p.detach().clone() for n, p in ctx.start_model.named_parameters()}
    for n, m in ctx.mask.items():
        weights[n] = weights[n] * m.to(weights[n].device, weights[n].dtype)
    return weights


class AtInitStrategy(Strategy):
    """A one-shot strategy scoring the level's starting weights: the highest scores
    survive, down to --target_density in one step (a subclass may prune in rounds)."""

    hparams_type: ClassVar[type[AtInitHparams]] = AtInitHparams
    one_shot = True

    @classmethod
    def resolve(
        cls, hparams: Hparams | None, levels: int, pruning: PruningHparams
    ) -> AtInitHparams:
        if pruning.pruning_scope != "global":
            raise UserError(
                f"--pruning_scope={pruning.pruning_scope}: the one-shot strategies at "
                "initialization rank all layers' scores together (global only)"
            )
        hparams = hparams if hparams is not None else cls.hparams_type()
        return resolve_density(hparams, levels, pruning)

    @property
    def settings(self) -> AtInitHparams:
        return self.hparams if self.hparams is not None else self.hparams_type()

    def check(self, model: Model, ignored: list[str], iterations_per_epoch: int) -> None:
        density = self.settings.target_density
        params = dict(model.named_parameters())
        dense = {
            n: torch.ones_like(params[n], dtype=torch.bool) for n in model.prunable_layer_names
        }
        if density is not None:
            # Before anything is written. Levels.check does not pass the count rule: the
            # default one is checked here, and `prune` checks again with the run's.
            target_kept(density, dense, ignored, PruningHparams())

    def kept(self, previous: Mask, ignore: list[str], pruning: PruningHparams) -> int:
        return target_kept(self._density(), previous, ignore, pruning)[0]

    def _density(self) -> float:
        density = self.settings.target_density
        if density is None:
            raise ValueError(f"{type(self).__name__}: target_density is unset; call resolve")
        return density

    @abc.abstractmethod
    def scores(self, ctx: PruneContext, ignore: list[str]) -> dict[str, torch.Tensor]:
        """A score per prunable weight outside `ignore`; the highest survive."""

    def prune(self, ctx: PruneContext, ignore: list[str]) -> Mask:
        _, kept_scored = target_kept(self._density(), ctx.mask, ignore, ctx.pruning)
        return keep_highest(self.scores(ctx, ignore), ctx.mask, ignore, kept_scored)


@dataclass
class MagnitudeAtInitHparams(AtInitHparams):
    _name: ClassVar[str] = "Magnitude at Initialization Hyperparameters"


@registries.strategies.register("magnitude_at_init")
class MagnitudeAtInit(AtInitStrategy):
    hparams_type = MagnitudeAtInitHparams
    description = "|w| of the starting weights, one shot to --target_density (the PaI baseline)"

    def scores(self, ctx: PruneContext, ignore: list[str]) -> dict[str, torch.Tensor]:
        weights = masked_start(ctx)
        return {n: weights[n].abs() for n in ctx.mask if n not in ignore}


def examples(ctx: PruneContext, hparams: ExamplesHparams, name: str) -> tuple[torch.Tensor, ...]:
    """SNIP's and GraSP's examples, unaugmented, as (x, y)."""
    if ctx.train_data is None:
        raise UserError(f"{name} needs training data")
    index = balanced_examples(ctx.train_data, hparams.pai_examples, derive_seed(name, ctx.seed))
    return ctx.train_data.batch(index)


@dataclass
class Scoring:
    """What SNIP and GraSP differentiate: a network (no parameter requiring a gradient),
    the value of each of its parameters by name, the names of the scored weights, the
    examples (x, y), and the examples a pass takes at most (`chunk`)."""

    net: torch.nn.Module
    weights: dict[str, torch.Tensor]
    names: list[str]
    x: torch.Tensor
    y: torch.Tensor
    chunk: int


def scoring_inputs(
    ctx: PruneContext, hparams: ExamplesHparams, name: str, ignore: list[str], batchnorm: str
) -> Scoring:
    """A copy of the starting network with BatchNorm in `batchnorm` mode ("eval": the
    running statistics; "train": the examples' own), the masked starting weights, the
    names of the prunable weights outside `ignore`, the examples, and the level's batch
    size as the chunk."""
    x, y = examples(ctx, hparams, name)
    net = copy.deepcopy(ctx.start_model).train(batchnorm == "train").requires_grad_(False)
    names = [n for n in ctx.mask if n not in ignore]
    return Scoring(net, masked_start(ctx), names, x, y, ctx.batch_size)
