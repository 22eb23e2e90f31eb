"""SynFlow (Tanaka et al. 2020, "Pruning neural networks without any data by
iteratively conserving synaptic flow"): data-free. With every parameter and buffer
replaced by its absolute value (the released `linearize`), R = 1ᵀ(∏ₗ|Wₗ|)1 is the sum
of the network's output on an all-ones input, and the score is |∂R/∂w ⊙ w|, kept
highest. As the released code: BatchNorm in eval mode and --synflow_rounds rounds (100)
that each re-score the survivors and prune to the next density of an exponential
schedule, n₀·(target/n₀)^(r/R) kept after round r, the last exactly the target (the
same rounding as Gem-Miner's events).

In float64, the Missing-the-Mark fork's choice (R is a product over every layer: float64
gives it range). Synaptic-Flow's current code scores in
float32 (its float64 commit was reverted): --synflow_float32.

Only the input's shape is needed: the training set's example shape where there is
one, else the first layer's input width (a network of linear layers)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import functional_call

from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import at_least, hp
from open_lth.foundations.masks import Mask
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.at_init import AtInitHparams, AtInitStrategy, keep_highest, target_kept
from open_lth.pruning.gem_miner import kept_after


@dataclass
class SynflowHparams(AtInitHparams):
    _name: ClassVar[str] = "SynFlow Hyperparameters"
    _description: ClassVar[str] = "Iterative synaptic flow pruning, without data."

    synflow_rounds: int = hp(
        100, "synflow: rounds of the exponential schedule (the released 100)", check=at_least(1)
    )
    synflow_float32: bool = hp(
        False,
        "synflow: score in float32, as Synaptic-Flow's current code (default float64, the "
        "Missing-the-Mark fork's)",
    )


def input_shape(ctx: PruneContext) -> tuple[int, ...]:
    if ctx.train_data is not None:
        return tuple(ctx.train_data.images.shape[1:])  # the shape only: no example is read
    first = next((m for m in ctx.start_model.modules() if hasattr(m, "in_features")), None)
    if first is None:
        raise UserError("synflow: without data, the input shape is known for linear nets only")
    return (first.in_features,)


def linearized(model: torch.nn.Module, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A copy in `dtype` and eval mode whose every parameter and buffer is |value|."""
    net = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
    with torch.no_grad():
        for value in net.state_dict().values():
            if value.is_floating_point():
                value.abs_()
    return net


def synflow_scores(
    net: torch.nn.Module, mask: Mask, names: list[str], shape: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """|∂R/∂w ⊙ w| for the weights `names` of a linearized `net` under `mask`."""
    params = dict(net.named_parameters())
    weights = {
        n: (params[n] * mask[n].to(params[n].device, params[n].dtype)).requires_grad_()
        for n in names
    }
    first = params[names[0]]
    ones = torch.ones((1, *shape), dtype=first.dtype, device=first.device)
    r = functional_call(net, {**params, **weights}, (ones,)).sum()
    grads = torch.autograd.grad(r, [weights[n] for n in names])
    return {n: (g * weights[n]).detach().abs() for n, g in zip(names, grads, strict=True)}


@registries.strategies.register("synflow")
class Synflow(AtInitStrategy):
    hparams_type = SynflowHparams
    description = "SynFlow: data-free |dR/dw · w|, --synflow_rounds rounds to --target_density"

    def _linearized(self, ctx: PruneContext) -> torch.nn.Module:
        dtype = torch.float32 if self.settings.synflow_float32 else torch.float64
        return linearized(ctx.start_model, dtype)

    def scores(self, ctx: PruneContext, ignore: list[str]) -> dict[str, torch.Tensor]:
        net = self._linearized(ctx)
        names = [n for n in ctx.mask if n not in ignore]
        return synflow_scores(net, ctx.mask, names, input_shape(ctx))

    def prune(self, ctx: PruneContext, ignore: list[str]) -> Mask:
        _, target = target_kept(self._density(), ctx.mask, ignore, ctx.pruning)
        net = self._linearized(ctx)
        names = [n for n in ctx.mask if n not in ignore]
        shape = input_shape(ctx)
        mask = {n: m.clone() for n, m in ctx.mask.items()}
        n0 = sum(int(mask[n].sum()) for n in names)
        rounds = self.settings.synflow_rounds
        for r in range(1, rounds + 1):
            kept = kept_after(r, rounds, n0, target)
            if kept < sum(int(mask[n].sum()) for n in names):
                mask = keep_highest(synflow_scores(net, mask, names, shape), mask, ignore, kept)
        return mask
