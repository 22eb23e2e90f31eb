"""GraSP (Wang et al. 2020, "Picking Winning Tickets Before Training by Preserving
Gradient Flow"): score −w ⊙ (H g) at the starting weights, g the gradient and H the
Hessian of the mean cross-entropy of the logits divided by a temperature T
(--grasp_temperature, 200 as the released code) on --pai_examples training examples,
and remove the HIGHEST scores (the released rule: removing them reduces the gradient
norm least, or raises it).

H g comes from a double backward: the gradient of gᵀ∇L(w) with g held fixed, over
every conv and linear weight, the ignored layers' included, as the released code
(only the others are scored). The released code sums over two halves of its examples
(a positive multiple of this H g, the same order). BatchNorm normalizes with the
examples' statistics (train mode, as the released code leaves the network), on a copy.

--grasp_reinit draws every linear layer's weights of the scoring copy afresh (Xavier
normal, seeded by the run), as the released code does by default (reinit=True): the
linear layers are then scored at those weights, not at the network's. Off by default
(the scores are of the network that trains); the saved network is never changed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from open_lth.foundations import formats, registries
from open_lth.foundations.hparams import PruningHparams, hp, positive
from open_lth.foundations.model import Model
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.at_init import AtInitStrategy, ExamplesHparams, Scoring, scoring_inputs
from open_lth.pruning.snip import chunk_losses, mean_loss_gradient
from open_lth.training.data import derive_seed


@dataclass
class GraspHparams(ExamplesHparams):
    _name: ClassVar[str] = "GraSP Hyperparameters"
    _description: ClassVar[str] = "Gradient signal preservation at initialization."

    grasp_temperature: float = hp(
        200.0, "grasp: the logits are divided by it (the released 200)", check=positive
    )
    grasp_reinit: bool = hp(
        False,
        "grasp: score with every linear layer's weights drawn afresh (Xavier normal) in the "
        "scoring copy, as the released code's default reinit=True; the network keeps its own",
    )


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
    """GraSP's score −w ⊙ (H g) for every weight of `s.names` (the highest are removed)."""
    hg = hessian_gradient_product(s, temperature)
    return {n: -s.weights[n] * h for n, h in zip(s.names, hg, strict=True)}


def reinitialize_linear(s: Scoring, mask: dict[str, torch.Tensor], seed: int) -> None:
    """Draw the weights of every linear layer of the scoring copy afresh, Xavier normal,
    as the released reinit; pruned weights stay 0 (drawn on the CPU: the same on any
    device)."""
    g = torch.Generator().manual_seed(seed)
    for name, module in s.net.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = f"{name}.weight"
            w = s.weights[key]
            fresh = torch.nn.init.xavier_normal_(torch.empty(w.shape), generator=g)
            s.weights[key] = fresh.to(w.device, w.dtype) * mask[key].to(w.device, w.dtype)


@registries.strategies.register("grasp")
class Grasp(AtInitStrategy):
    description = "GraSP: remove the highest -w·Hg (Hessian-gradient product), one shot"
    hparams_type = GraspHparams

    @classmethod
    def changed_since(cls, made: int, pruning: PruningHparams, model: Model) -> str | None:
        if made >= 3 or not pruning.ignored:
            return None
        return (
            "GraSP's Hessian-gradient product ran over the weights outside "
            f"{', '.join(pruning.ignored)}, it now runs over every conv and linear weight as "
            f"the released code (about 1% of the mask changes); the old one is in commit "
            f"{formats.LAST_OF_FORMAT_2}; use another --root to run the new one"
        )

    def scores(self, ctx: PruneContext, ignore: list[str]) -> dict[str, torch.Tensor]:
        settings = self.settings
        # Every conv and linear weight enters H g (the released code's); only those
        # outside `ignore` are scored.
        inputs = scoring_inputs(ctx, settings, "grasp", [], "train")
        if settings.grasp_reinit:
            reinitialize_linear(inputs, ctx.mask, derive_seed("grasp_reinit", ctx.seed))
        scores = grasp_scores(inputs, settings.grasp_temperature)
        # The highest GraSP scores are removed: keep the highest of their negation.
        return {n: -s for n, s in scores.items() if n not in ignore}
