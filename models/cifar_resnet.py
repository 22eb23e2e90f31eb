"""ResNets for CIFAR (He et al. 2016, section 4.2): `cifar_resnet_<D>[_<W>]`.

D = 6n + 2 layers: a 3x3 conv, three stages of n two-conv residual blocks with
widths W, 2W, 4W (W defaults to 16), and the classifier. ResNet-20 is n = 3.
"""

from __future__ import annotations

import re

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

# No leading zeros: one architecture, one name (and so one run name).
_NAME = re.compile(r"cifar_resnet_([1-9][0-9]*)(?:_([1-9][0-9]*))?")


def cifar_default_hparams(name: str) -> DefaultHparams:
    """The CIFAR-10 recipe of the study, shared with the VGGs: SGD 0.1 with momentum,
    160 epochs with 10x drops at 80 and 120, and the classifier kept dense."""
    return DefaultHparams(
        dataset=DatasetHparams(dataset_name="cifar10", batch_size=128),
        model=ModelHparams(model_name=name, model_init="kaiming_normal", batchnorm_init="uniform"),
        training=TrainingHparams(
            optimizer_name="sgd",
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-4,
            training_steps="160ep",
            milestone_steps="80ep,120ep",
            gamma=0.1,
        ),
        pruning=PruningHparams(pruning_layers_to_ignore="fc.weight"),
    )


class Block(nn.Module):
    """Two 3x3 convs around a shortcut; a 1x1 projection where the shape changes."""

    def __init__(self, f_in: int, f_out: int, stride: int) -> None:
        super().__init__()
        # No conv biases: each conv feeds a BatchNorm, whose shift makes a bias redundant.
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        if stride != 1 or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), nn.BatchNorm2d(f_out)
            )
        else:
            self.shortcut = nn.Sequential()  # identity, with no parameters to prune

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@registries.models.register("cifar_resnet")
class CifarResnet(Model):
    name_examples = ["cifar_resnet_20", "cifar_resnet_56", "cifar_resnet_20_64"]
    is_convolutional = True

    def __init__(self, blocks_per_stage: int, width: int, outputs: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, f_in = [], width
        for stage, f_out in enumerate((width, 2 * width, 4 * width)):
            for index in range(blocks_per_stage):
                # Stages 2 and 3 halve the resolution in their first block.
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(Block(f_in, f_out, stride))
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(4 * width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)

    @staticmethod
    def is_valid_model_name(name: str) -> bool:
        # The registry asks every family about every name: answer, never raise.
        match = _NAME.fullmatch(name) if isinstance(name, str) else None
        # D = 6n + 2 with n >= 1 blocks per stage, so cifar_resnet_2 is not a ResNet.
        return match is not None and int(match.group(1)) >= 8 and int(match.group(1)) % 6 == 2

    @classmethod
    def create(cls, name: str, outputs: int | None) -> CifarResnet:
        match = _NAME.fullmatch(name)
        if match is None or not cls.is_valid_model_name(name):
            raise ValueError(f"not a cifar_resnet name: {name!r}")
        depth, width = int(match.group(1)), int(match.group(2) or 16)
        return cls((depth - 2) // 6, width, outputs or 10)

    @property
    def output_layer_names(self) -> list[str]:
        return ["fc.weight", "fc.bias"]

    @staticmethod
    def default_hparams(name: str) -> DefaultHparams:
        return cifar_default_hparams(name)
