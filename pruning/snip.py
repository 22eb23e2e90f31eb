"""SNIP (Lee et al. 2019, "Single-shot Network Pruning based on Connection
Sensitivity"): score |∂L/∂w ⊙ w| at the starting weights, L the mean cross-entropy on
--pai_examples training examples (10 per class by default, as GraSP's code feeds its
SNIP), kept highest, on a copy: the level's weights are untouched.

BatchNorm (--snip_batchnorm): eval by default, normalizing with the running statistics,
as its authors' code (snip-public builds the scoring network with is_train=False) and
Synaptic-Flow (model.eval()) do; train normalizes with the examples' own statistics, as
the Missing-the-Mark fork does. The two masks differ widely on a BatchNorm network (48%
overlap on ResNet-20); a network without BatchNorm gets the same mask from both."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from open_lth.foundations import registries
from open_lth.foundations.hparams import PruningHparams, hp, one_of
from open_lth.foundations.model import Model
from open_lth.lottery.levels import has_batchnorm
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.at_init import AtInitStrategy, ExamplesHparams, Scoring, scoring_inputs


@dataclass
class SnipHparams(ExamplesHparams):
    snip_batchnorm: str = hp(
        "eval",
        "snip: BatchNorm mode of the scoring pass: eval (running statistics, as its authors' "
        "code and Synaptic-Flow) or train (the examples' statistics, as the Missing-the-Mark "
        "fork)",
        check=one_of("eval", "train"),
    )

    _name: ClassVar[str] = "SNIP Hyperparameters"
    _description: ClassVar[str] = "Connection sensitivity at initialization."


def chunk_losses(
    s: Scoring, temperature: float = 1.0
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """The mean cross-entropy of net(x)/T in chunks of at most `s.chunk` examples, each
    weighted by its share (so the chunks' sum is the mean's), with the leaves `s.names`
    it is to be differentiated by: (loss, leaves) per chunk."""
    for start in range(0, len(s.y), s.chunk):
        params = {**s.weights, **{n: s.weights[n].detach().requires_grad_() for n in s.names}}
        xc, yc = s.x[start : start + s.chunk], s.y[start : start + s.chunk]
        out = functional_call(s.net, params, (xc,)) / temperature
        yield F.cross_entropy(out, yc) * (len(yc) / len(s.y)), [params[n] for n in s.names]


def mean_loss_gradient(s: Scoring, temperature: float = 1.0) -> list[torch.Tensor]:
    """∂/∂w of the mean cross-entropy of net(x)/T over all examples."""
    total = [torch.zeros_like(s.weights[n]) for n in s.names]
    for loss, leaves in chunk_losses(s, temperature):
        for t, g in zip(total, torch.autograd.grad(loss, leaves), strict=True):
            t.add_(g)
    return total


def snip_scores(s: Scoring) -> dict[str, torch.Tensor]:
    """|∂L/∂w ⊙ w| for the weights `s.names`."""
    grads = mean_loss_gradient(s)
    return {n: (g * s.weights[n]).abs() for n, g in zip(s.names, grads, strict=True)}


@registries.strategies.register("snip")
class Snip(AtInitStrategy):
    hparams_type = SnipHparams
    description = "SNIP: |dL/dw · w| at the starting weights on --pai_examples, one shot"

    @classmethod
    def changed_since(cls, made: int, pruning: PruningHparams, model: Model) -> str | None:
        if made >= 3 or not has_batchnorm(model):
            return None
        return (
            "SNIP scored with BatchNorm in train mode (the examples' statistics), it now "
            "scores in eval mode as its authors' code does; for the old behaviour add "
            "--snip_batchnorm=train (a new run folder), or move this one away to recompute it"
        )

    def scores(self, ctx: PruneContext, ignore: list[str]) -> dict[str, torch.Tensor]:
        settings = self.settings
        inputs = scoring_inputs(ctx, settings, "snip", ignore, settings.snip_batchnorm)
        return snip_scores(inputs)
