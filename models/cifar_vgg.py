"""VGG for CIFAR (Simonyan & Zisserman 2015, with BatchNorm): cifar_vgg_11/13/16/19.

The standard configurations A, B, D and E: five max-pools take 32x32 down to 1x1,
so the classifier is a single Linear(512, outputs) as in the lottery-ticket papers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from open_lth.foundations import registries
from open_lth.foundations.hparams import DefaultHparams
from open_lth.foundations.model import Model
from open_lth.models.cifar_resnet import cifar_default_hparams

_M = "M"
_PLANS: dict[str, list[int | str]] = {
    "11": [64, _M, 128, _M, 256, 256, _M, 512, 512, _M, 512, 512, _M],
    "13": [64, 64, _M, 128, 128, _M, 256, 256, _M, 512, 512, _M, 512, 512, _M],
    "16": [64, 64, _M, 128, 128, _M, 256, 256, 256, _M, 512, 512, 512, _M, 512, 512, 512, _M],
    "19": [64, 64, _M, 128, 128, _M, 256, 256, 256, 256, _M]
    + [512, 512, 512, 512, _M, 512, 512, 512, 512, _M],
}
_PREFIX = "cifar_vgg_"


class ConvModule(nn.Module):
    """conv3x3 -> BatchNorm -> ReLU."""

    def __init__(self, f_in: int, f_out: int) -> None:
        super().__init__()
        # No conv bias: the BatchNorm shift that follows makes it redundant.
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


@registries.models.register("cifar_vgg")
class CifarVgg(Model):
    name_examples = ["cifar_vgg_11", "cifar_vgg_16", "cifar_vgg_19"]
    is_convolutional = True

    def __init__(self, plan: list[int | str], outputs: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        f_in = 3
        for spec in plan:
            if spec == _M:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(ConvModule(f_in, int(spec)))
                f_in = int(spec)
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(f_in, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 512, 1, 1) after the fifth pool on 32x32 inputs.
        return self.fc(torch.flatten(self.layers(x), 1))

    @staticmethod
    def is_valid_model_name(name: str) -> bool:
        # The registry asks every family about every name: answer, never raise.
        return isinstance(name, str) and name.startswith(_PREFIX) and name[len(_PREFIX) :] in _PLANS

    @classmethod
    def create(cls, name: str, outputs: int | None) -> CifarVgg:
        if not cls.is_valid_model_name(name):
            raise ValueError(f"not a cifar_vgg name: {name!r}")
        return cls(_PLANS[name[len(_PREFIX) :]], outputs or 10)

    @property
    def output_layer_names(self) -> list[str]:
        return ["fc.weight", "fc.bias"]

    @staticmethod
    def default_hparams(name: str) -> DefaultHparams:
        """The same recipe as the CIFAR ResNets."""
        return cifar_default_hparams(name)
