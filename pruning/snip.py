"""SNIP (Lee et al. 2019, "Single-shot Network Pruning based on Connection
Sensitivity"): score |∂L/∂w ⊙ w| at the starting weights, L the mean cross-entropy on
--pai_examples training examples (10 per class by default, as GraSP's code feeds its
SNIP), kept highest. BatchNorm normalizes with the examples' statistics (train mode, as
the released codes leave the network), on a copy: the level's weights are untouched."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from open_lth.foundations import registries
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.at_init import AtInitStrategy, ExamplesHparams, Scoring, scoring_inputs


@dataclass
class SnipHparams(ExamplesHparams):
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

    def scores(self, ctx: PruneContext, ignore: list[str]) -> dict[str, torch.Tensor]:
        return snip_scores(scoring_inputs(ctx, self.settings, "snip", ignore))
