"""Magnitude pruning (Frankle & Carbin): remove the smallest |w|."""

from __future__ import annotations

import torch

from open_lth.foundations import registries
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.base import ScoreStrategy


@registries.strategies.register("magnitude")
class MagnitudeStrategy(ScoreStrategy):
    description = "|w| of the trained weights (iterative magnitude pruning)"

    def score(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        params = dict(ctx.model.named_parameters())
        return {name: params[name].detach().abs() for name in ctx.mask}
