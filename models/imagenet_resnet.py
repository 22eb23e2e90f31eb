"""ResNets for ImageNet (He et al. 2016, table 1): `imagenet_resnet_<D>[_<W>]`.

D is 18 or 34 (basic blocks of two 3x3 convs) or 50, 101, 152, 200 (bottleneck blocks
1x1, 3x3, 1x1 with 4x expansion, stride on the 3x3 as torchvision's "v1.5"). W is the
width of the first stage (64 by default; stages W, 2W, 4W, 8W), as upstream open_lth.
The stem is a 7x7 stride-2 conv and a 3x3 stride-2 max-pool.

Parameter names are upstream open_lth's, which wraps torchvision's ResNet in `model`
(`model.conv1.weight`, `model.layer1.0.downsample.0.weight`, `model.fc.weight`), so the
same `--pruning_layers_to_ignore` works and its state dicts load; torchvision is not
needed. At W = 64 the parameter counts are the standard ones: ResNet-18 11,689,512,
-34 21,797,672, -50 25,557,032, -101 44,549,160, -152 60,192,808, -200 64,673,832.
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
_NAME = re.compile(r"imagenet_resnet_([1-9][0-9]*)(?:_([1-9][0-9]*))?")


class BasicBlock(nn.Module):
    """Two 3x3 convs around a shortcut; a 1x1 projection where the shape changes."""

    expansion = 1

    def __init__(self, f_in: int, width: int, stride: int) -> None:
        super().__init__()
        # No conv biases: each conv feeds a BatchNorm, whose shift makes a bias redundant.
        self.conv1 = nn.Conv2d(f_in, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _projection(f_in, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        # In place on BatchNorm outputs only, never on a conv's output (Fisher's hooks
        # read those) or the block's input (the shortcut).
        return F.relu(out.add_(shortcut), inplace=True)


class Bottleneck(nn.Module):
    """1x1 down to `width`, 3x3 (strided), 1x1 up to 4·width, around a shortcut."""

    expansion = 4

    def __init__(self, f_in: int, width: int, stride: int) -> None:
        super().__init__()
        f_out = width * self.expansion
        self.conv1 = nn.Conv2d(f_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, f_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(f_out)
        self.downsample = _projection(f_in, f_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out.add_(shortcut), inplace=True)


def _projection(f_in: int, f_out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and f_in == f_out:
        return None  # identity, with no parameters to prune
    conv = nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(f_out))


# Blocks per stage and block type, by depth (He et al. 2016, table 1; 200 from He et al.
# 2016b, "Identity Mappings", as upstream).
PLANS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
    200: (Bottleneck, (3, 24, 36, 3)),
}


class ResNet(nn.Module):
    """The network, with torchvision's attribute names. `small_stem`: a 3x3 stride-1
    conv and no max-pool, for 64x64 inputs (Tiny ImageNet's modified ResNet)."""

    def __init__(self, depth: int, width: int, outputs: int, small_stem: bool = False) -> None:
        super().__init__()
        block, counts = PLANS[depth]
        if small_stem:
            self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = None
        else:
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        f_in = width
        for stage, count in enumerate(counts):
            blocks = []
            for index in range(count):
                # Stages 2 to 4 halve the resolution in their first block.
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(block(f_in, width * 2**stage, stride))
                f_in = width * 2**stage * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(f_in, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        if self.maxpool is not None:
            out = self.maxpool(out)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def imagenet_default_hparams(name: str) -> DefaultHparams:
    """Upstream open_lth's ImageNet recipe, the same for every depth (76.1% top-1 for
    ResNet-50): SGD 0.4 at batch 1024 (scale both linearly: 256 -> 0.1), 5 epochs of
    warm-up, 10x drops at 30, 60 and 80 of 90 epochs. Upstream prunes every conv and
    linear weight, the classifier included, so nothing is ignored."""
    return DefaultHparams(
        dataset=DatasetHparams(dataset_name="imagenet", batch_size=1024),
        model=ModelHparams(model_name=name, model_init="kaiming_normal", batchnorm_init="uniform"),
        training=TrainingHparams(
            optimizer_name="sgd",
            lr=0.4,
            momentum=0.9,
            weight_decay=1e-4,
            training_steps="90ep",
            milestone_steps="30ep,60ep,80ep",
            gamma=0.1,
            warmup_steps="5ep",
        ),
        pruning=PruningHparams(),
    )


@registries.models.register("imagenet_resnet")
class ImagenetResnet(Model):
    name_examples = ["imagenet_resnet_50", "imagenet_resnet_18_8"]
    is_convolutional = True

    def __init__(self, network: ResNet) -> None:
        super().__init__()
        self.model = network  # upstream's wrapper: its parameter names start with `model.`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @staticmethod
    def is_valid_model_name(name: str) -> bool:
        # The registry asks every family about every name: answer, never raise.
        match = _NAME.fullmatch(name) if isinstance(name, str) else None
        return match is not None and int(match.group(1)) in PLANS

    @classmethod
    def create(cls, name: str, outputs: int | None) -> ImagenetResnet:
        match = _NAME.fullmatch(name)
        if match is None or not cls.is_valid_model_name(name):
            raise ValueError(f"not an imagenet_resnet name: {name!r}")
        depth, width = int(match.group(1)), int(match.group(2) or 64)
        return cls(ResNet(depth, width, outputs or 1000))

    @property
    def output_layer_names(self) -> list[str]:
        return ["model.fc.weight", "model.fc.bias"]

    @staticmethod
    def default_hparams(name: str) -> DefaultHparams:
        return imagenet_default_hparams(name)
