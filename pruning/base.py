"""Strategies that score weights; the shared selector turns scores into a mask."""

from __future__ import annotations

import abc

import torch

from open_lth.foundations.hparams import PruningHparams
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model
from open_lth.lottery.strategy import PruneContext, Strategy
from open_lth.pruning.select import kept_count, select


class ScoreStrategy(Strategy):
    @classmethod
    def changed_since(cls, made: int, pruning: PruningHparams, model: Model) -> str | None:
        ignored = pruning.ignored
        if made >= 2 or pruning.pruning_scope != "global" or not ignored:
            return None
        if pruning.pruning_count_without_ignored:
            return None
        return (
            "global pruning removed the fraction of the surviving weights outside "
            f"{', '.join(ignored)}, it now removes the fraction of all surviving prunable "
            "weights, ignored ones included (open_lth's sparse_global); for the old count "
            "add --pruning_count_without_ignored (a new run folder), or move this one away "
            "to recompute it"
        )

    @abc.abstractmethod
    def score(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        """A score per prunable weight (same shape); the lowest are removed first."""

    def prune(self, ctx: PruneContext, ignore: list[str]) -> Mask:
        scores = self.score(ctx)
        p = ctx.pruning
        return select(
            scores,
            ctx.mask,
            p.pruning_fraction,
            p.pruning_scope,
            ignore,
            count_ignored=not p.pruning_count_without_ignored,
        )

    def kept(self, previous: Mask, ignore: list[str], pruning: PruningHparams) -> int:
        return kept_count(
            previous,
            pruning.pruning_fraction,
            pruning.pruning_scope,
            ignore,
            count_ignored=not pruning.pruning_count_without_ignored,
        )
