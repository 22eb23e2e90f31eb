"""ResNet-18 for Tiny ImageNet (64x64 images, 200 classes), as the fork of open_lth that
accompanies "Pruning Neural Networks at Initialization: Why Are We Missing the Mark?"
(Frankle et al. 2021) names them: `tinyimagenet_resnet_18[_<W>]` and
`tinyimagenet_modifiedresnet_18[_<W>]` (W: the first stage's width, 64 by default).

What could be read of the fork (no copy of its model files could be found): its README
lists both names and says `tinyimagenet` is the data set of the paper's main body and
`tinyimagenet2` the one used for the Modified ResNet-18; its data set files
(datasets/tinyimagenet.py and tinyimagenet2.py, as vendored by 123Bailey123/Pruning)
feed 64x64 images of 200 classes. A later open_lth fork's `tinyimagenet_resnet`
(123Bailey123/open_lth) is upstream's ImageNet ResNet with 200 outputs.

What is assumed here:
- `tinyimagenet_resnet_18` is upstream's ImageNet ResNet-18 unchanged (7x7 stride-2 stem
  and max-pool, so 16x16 after the stem), 200 outputs: 11,279,112 parameters.
- `tinyimagenet_modifiedresnet_18` has the stem of the ResNet-18 that SynFlow (Tanaka
  et al. 2020) trained on Tiny ImageNet and the paper compares against: a 3x3 stride-1
  conv and no max-pool (64x64 after the stem), 200 outputs: 11,271,432 parameters.
- Default hparams, both: the paper's Tiny ImageNet recipe as its appendix states it
  (recalled, not read from the fork's code): SGD 0.2 with momentum 0.9, batch 256, 200
  epochs with 10x drops at 100 and 150, weight decay 1e-4, no warm-up. Nothing ignored
  by pruning, as upstream's ImageNet ResNets.
"""

from __future__ import annotations

import re

from open_lth.foundations import registries
from open_lth.foundations.hparams import (
    DatasetHparams,
    DefaultHparams,
    ModelHparams,
    PruningHparams,
    TrainingHparams,
)
from open_lth.models.imagenet_resnet import ImagenetResnet, ResNet

_NAME = re.compile(r"tinyimagenet_(resnet|modifiedresnet)_18(?:_([1-9][0-9]*))?")
CLASSES = 200


@registries.models.register("tinyimagenet_resnet")
class TinyimagenetResnet(ImagenetResnet):
    name_examples = ["tinyimagenet_resnet_18", "tinyimagenet_modifiedresnet_18"]

    @staticmethod
    def is_valid_model_name(name: str) -> bool:
        return isinstance(name, str) and _NAME.fullmatch(name) is not None

    @classmethod
    def create(cls, name: str, outputs: int | None) -> TinyimagenetResnet:
        match = _NAME.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise ValueError(f"not a tinyimagenet_resnet name: {name!r}")
        small_stem = match.group(1) == "modifiedresnet"
        width = int(match.group(2) or 64)
        return cls(ResNet(18, width, outputs or CLASSES, small_stem=small_stem))

    @staticmethod
    def default_hparams(name: str) -> DefaultHparams:
        return DefaultHparams(
            dataset=DatasetHparams(dataset_name="tinyimagenet", batch_size=256),
            model=ModelHparams(
                model_name=name, model_init="kaiming_normal", batchnorm_init="uniform"
            ),
            training=TrainingHparams(
                optimizer_name="sgd",
                lr=0.2,
                momentum=0.9,
                weight_decay=1e-4,
                training_steps="200ep",
                milestone_steps="100ep,150ep",
                gamma=0.1,
            ),
            pruning=PruningHparams(),
        )
