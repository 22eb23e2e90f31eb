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

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from open_lth import registries
from open_lth.errors import UserError
from open_lth.hparams import hp
from open_lth.strategy_base import PruneContext
from pruning.at_init import AtInitStrategy, ExamplesHparams, examples, masked_start
from pruning.snip import mean_loss_gradient


@dataclass
class GraspHparams(ExamplesHparams):
    grasp_temperature: float = hp(200.0, "grasp: the logits are divided by it (the released 200)")

    _name: ClassVar[str] = "GraSP Hyperparameters"
    _description: ClassVar[str] = "Gradient signal preservation at initialization."

    def validate(self) -> None:
        super().validate()
        if not self.grasp_temperature > 0:
            raise UserError(f"--grasp_temperature must be positive, got {self.grasp_temperature}")


def hessian_gradient_product(
    net: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int,
    temperature: float,
) -> list[torch.Tensor]:
    """H g for L = mean cross-entropy(net(x)/T, y) over the weights `names`."""
    g = mean_loss_gradient(net, weights, names, x, y, chunk, temperature)
    hg = [torch.zeros_like(t) for t in g]
    for start in range(0, len(y), chunk):
        params = {**weights, **{n: weights[n].detach().requires_grad_() for n in names}}
        xc, yc = x[start : start + chunk], y[start : start + chunk]
        out = functional_call(net, params, (xc,)) / temperature
        loss = F.cross_entropy(out, yc) * (len(yc) / len(y))
        leaves = [params[n] for n in names]
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        z = sum((a * b).sum() for a, b in zip(grads, g, strict=True))
        for t, part in zip(hg, torch.autograd.grad(z, leaves), strict=True):
            t.add_(part)
    return hg


def grasp_scores(
    net: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """GraSP's score −w ⊙ (H g) (the highest are removed)."""
    hg = hessian_gradient_product(net, weights, names, x, y, chunk, temperature)
    return {n: -weights[n] * h for n, h in zip(names, hg, strict=True)}


@registries.strategies.register("grasp")
class Grasp(AtInitStrategy):
    hparams_type = GraspHparams
    description = "GraSP: remove the highest -w·Hg (Hessian-gradient product), one shot"

    def scores(self, ctx: PruneContext, ignore: list[str]) -> dict[str, torch.Tensor]:
        x, y = examples(ctx, self.settings, "grasp")
        net = copy.deepcopy(ctx.start_model).train().requires_grad_(False)
        names = [n for n in ctx.mask if n not in ignore]
        t = self.settings.grasp_temperature
        scores = grasp_scores(net, masked_start(ctx), names, x, y, ctx.batch_size, t)
        # The highest GraSP scores are removed: keep the highest of their negation.
        return {n: -s for n, s in scores.items()}
