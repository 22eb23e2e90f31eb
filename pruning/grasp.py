"""GraSP (Wang et al. 2020, "Picking Winning Tickets Before Training by Preserving
Gradient Flow"): score −w ⊙ (H g) at the starting weights, g the gradient and H the
Hessian of the mean cross-entropy of the logits divided by a temperature T
(--grasp_temperature, 200 as the released code) on --pai_examples training examples,
and remove the HIGHEST scores (the released rule: removing them reduces the gradient
norm least, or raises it).

H g comes from a double backward: the gradient of gᵀ∇L(w) with g held fixed. The
released code sums over two halves of its examples (a positive multiple of this H g,
the same order). BatchNorm normalizes with the examples' statistics (train mode, as the
released code leaves the network), on a copy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import hp
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.at_init import AtInitStrategy, ExamplesHparams, Scoring, scoring_inputs
from open_lth.pruning.snip import chunk_losses, mean_loss_gradient


@dataclass
class GraspHparams(ExamplesHparams):
    grasp_temperature: float = hp(200.0, "grasp: the logits are divided by it (the released 200)")

    _name: ClassVar[str] = "GraSP Hyperparameters"
    _description: ClassVar[str] = "Gradient signal preservation at initialization."

    def validate(self) -> None:
        super().validate()
        if not self.grasp_temperature > 0:
            raise UserError(f"--grasp_temperature must be positive, got {self.grasp_temperature}")


def hessian_gradient_product(s: Scoring, temperature: float) -> list[torch.Tensor]:
    """H g for L = mean cross-entropy(net(x)/T, y) over the weights `s.names`."""
    g = mean_loss_gradient(s, temperature)
    hg = [torch.zeros_like(t) for t in g]
    for loss, leaves in chunk_losses(s, temperature):
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        z = sum((a * b).sum() for a, b in zip(grads, g, strict=True))
        for t, part in zip(hg, torch.autograd.grad(z, leaves), strict=True):
            t.add_(part)
    return hg


def grasp_scores(s: Scoring, temperature: float) -> dict[str, torch.Tensor]:
    """GraSP's score −w ⊙ (H g) (the highest are removed)."""
    hg = hessian_gradient_product(s, temperature)
    return {n: -s.weights[n] * h for n, h in zip(s.names, hg, strict=True)}


@registries.strategies.register("grasp")
class Grasp(AtInitStrategy):
    hparams_type = GraspHparams
    description = "GraSP: remove the highest -w·Hg (Hessian-gradient product), one shot"

    def scores(self, ctx: PruneContext, ignore: list[str]) -> dict[str, torch.Tensor]:
        inputs = scoring_inputs(ctx, self.settings, "grasp", ignore)
        scores = grasp_scores(inputs, self.settings.grasp_temperature)
        # The highest GraSP scores are removed: keep the highest of their negation.
        return {n: -s for n, s in scores.items()}
