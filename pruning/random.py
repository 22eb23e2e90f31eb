"""Random pruning: the control that shows whether the choice of weights matters."""

from __future__ import annotations

import torch

from open_lth.foundations import registries
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.base import ScoreStrategy


@registries.strategies.register("random")
class RandomStrategy(ScoreStrategy):
    description = "uniform random scores, seeded by the replicate and the level"

    def score(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(ctx.seed)
        return {name: torch.rand(m.shape, generator=g) for name, m in ctx.mask.items()}
