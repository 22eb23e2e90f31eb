"""The base class of every data set: a reader of the official files into uint8 tensors."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar

import torch


class Dataset(abc.ABC):
    """A registered data set (`@registries.datasets.register("mnist")`).

    It only reads files: `load` returns every image of a split as one uint8 tensor
    (N, C, H, W) and the labels as int64 (N,). Batching, normalization and
    augmentation are done on the device by `open_lth.training.data.DeviceData`.
    """

    num_classes: ClassVar[int]
    # Per-channel mean and std of the training images, pixels scaled to [0, 1].
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    # Training augmentation: None, or "crop_flip" (random crop with `pad` pixels
    # of zero padding and a random horizontal flip).
    augmentation: ClassVar[str | None] = None
    pad: ClassVar[int] = 4

    @classmethod
    @abc.abstractmethod
    def load(cls, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Read a split from under `root`, downloading the official files (md5-checked)
        when they are absent; raise UserError naming what is missing or corrupt."""
