"""Strategies that score weights; the shared selector turns scores into a mask."""

from __future__ import annotations

import abc

import torch

from open_lth.strategy_base import Mask, PruneContext, Strategy
from pruning.select import select


class ScoreStrategy(Strategy):
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
