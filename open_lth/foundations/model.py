"""The base class of every model, and how a model is built from its hparams."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import nn

from open_lth.foundations import registries
from open_lth.foundations.hparams import DefaultHparams, ModelHparams


class Model(nn.Module, abc.ABC):
    """A classifier with named prunable weights.

    A family (LeNet, ResNet, VGG) registers under its family name with
    `@registries.models.register("cifar_resnet")` and accepts every name that its
    `is_valid_model_name` says yes to (e.g. `cifar_resnet_56_32`).
    """

    # Names shown when an unknown model is asked for, and in the docs.
    name_examples: ClassVar[list[str]] = []
    # Convolutional models run channels_last on a GPU.
    is_convolutional: ClassVar[bool] = False

    @staticmethod
    @abc.abstractmethod
    def is_valid_model_name(name: str) -> bool: ...

    @classmethod
    @abc.abstractmethod
    def create(cls, name: str, outputs: int | None) -> Model:
        """The model called `name` (valid by `is_valid_model_name`) with `outputs` classes
        (None: the family's usual number). Weights are initialized afterwards."""

    @staticmethod
    @abc.abstractmethod
    def default_hparams(name: str) -> DefaultHparams:
        """The run defaults for this model: data set, optimizer, schedule, pruning."""

    @property
    def prunable_layer_names(self) -> list[str]:
        """The weights that pruning may remove: those of every conv and linear layer."""
        return [
            f"{name}.weight"
            for name, module in self.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))
        ]

    @property
    @abc.abstractmethod
    def output_layer_names(self) -> list[str]:
        """Parameters of the classifier layer (e.g. ['fc.weight', 'fc.bias'])."""

    @property
    def loss_criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss()


def build_model(hparams: ModelHparams, outputs: int | None = None, seed: int = 0) -> Model:
    """Create and initialize a model. The seed alone decides the weights, and the
    global RNG is left as it was."""
    family = registries.models.get(hparams.model_name)
    initializer = registries.initializers.get(hparams.model_init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.create(hparams.model_name, outputs)
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                initializer(module.weight)
                # "pytorch" keeps the biases the constructor drew from the seeded RNG.
                if module.bias is not None and hparams.bias_init == "zeros":
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                if hparams.batchnorm_init == "uniform":
                    nn.init.uniform_(module.weight)
                else:
                    nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    return model
