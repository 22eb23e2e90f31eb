"""Initializers of conv and linear weights, registered by name for `--model_init`.

Each takes the weight tensor and fills it in place. They draw from the global torch
RNG, which `build_model` seeds, so the seed alone decides the weights.
"""

import math

import torch
from torch import nn

from open_lth.foundations import registries


def _fan_in(weight: torch.Tensor) -> int:
    # Weights are (out, in, *kernel): the fan-in is everything feeding one output unit.
    return weight[0].numel()


@registries.initializers.register("kaiming_normal")
def kaiming_normal(weight: torch.Tensor) -> None:
    """N(0, 2/fan_in): He et al. 2015, the default of every family here."""
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")


@registries.initializers.register("kaiming_uniform")
def kaiming_uniform(weight: torch.Tensor) -> None:
    """U(-b, b) with b = sqrt(6/fan_in): the same variance as kaiming_normal."""
    nn.init.kaiming_uniform_(weight, mode="fan_in", nonlinearity="relu")


@registries.initializers.register("orthogonal")
def orthogonal(weight: torch.Tensor) -> None:
    """A (semi-)orthogonal matrix over the weight flattened to (out, fan_in)."""
    nn.init.orthogonal_(weight)


@registries.initializers.register("signed_constant")
def signed_constant(weight: torch.Tensor) -> None:
    """Every weight is +-sqrt(2/fan_in) with a fair random sign.

    The signed Kaiming constant of supermask search (Ramanujan et al. 2020) and
    Gem-Miner: the magnitudes carry no information, so only the mask and the signs
    decide what the network computes.
    """
    std = math.sqrt(2.0 / _fan_in(weight))
    with torch.no_grad():
        weight.bernoulli_(0.5).mul_(2.0).sub_(1.0).mul_(std)
