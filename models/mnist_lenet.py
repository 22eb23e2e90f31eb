"""Fully connected LeNet for MNIST: `mnist_lenet_<h1>[_<h2>...]`, e.g. LeNet-300-100."""

from __future__ import annotations

import re
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from open_lth.foundations import registries
from open_lth.foundations.hparams import (
    DatasetHparams,
    DefaultHparams,
    ModelHparams,
    PruningHparams,
    TrainingHparams,
)
from open_lth.foundations.model import Model

# Positive widths without leading zeros, so that one model has exactly one name (and so
# one run name): `mnist_lenet_0300` would otherwise silently alias `mnist_lenet_300`.
_NAME = re.compile(r"mnist_lenet((?:_[1-9][0-9]*)+)")
_INPUTS = 28 * 28


@registries.models.register("mnist_lenet")
class MnistLenet(Model):
    """ReLU MLP on flattened 28x28 images: hidden layers `fc_layers`, classifier `fc`."""

    name_examples = ["mnist_lenet_300_100"]

    def __init__(self, hidden: list[int], outputs: int = 10) -> None:
        super().__init__()
        widths = [_INPUTS, *hidden]
        self.fc_layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.fc = nn.Linear(widths[-1], outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self.fc(x)

    @staticmethod
    def is_valid_model_name(name: str) -> bool:
        # The registry asks every family about every name: answer, never raise.
        return isinstance(name, str) and _NAME.fullmatch(name) is not None

    @staticmethod
    def _hidden(name: str) -> list[int]:
        match = _NAME.fullmatch(name)
        if match is None:
            raise ValueError(f"not an mnist_lenet name: {name!r}")
        return [int(w) for w in match.group(1).split("_")[1:]]

    @classmethod
    def create(cls, name: str, outputs: int | None) -> MnistLenet:
        return cls(cls._hidden(name), outputs or 10)

    @property
    def output_layer_names(self) -> list[str]:
        return ["fc.weight", "fc.bias"]

    @staticmethod
    def default_hparams(name: str) -> DefaultHparams:
        """Table 1 of the study (after Frankle & Carbin 2019): Adam 1.2e-3, batch 60, 50K it."""
        return DefaultHparams(
            dataset=DatasetHparams(dataset_name="mnist", batch_size=60),
            model=ModelHparams(
                model_name=name, model_init="kaiming_normal", batchnorm_init="uniform"
            ),
            training=TrainingHparams(optimizer_name="adam", lr=0.0012, training_steps="50000it"),
            pruning=PruningHparams(),
        )
