"""The base class of every data set: a reader of the official files into uint8 tensors."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:  # Pillow is imported only where images are decoded
    from open_lth.foundations.images import Source


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
    # Training augmentation: None, "crop_flip" (random crop with `pad` pixels of zero
    # padding and a random horizontal flip) or "resized_crop_flip" (RandomResizedCrop
    # with `scale` and `ratio` back to the image's size, and a random horizontal flip).
    augmentation: ClassVar[str | None] = None
    pad: ClassVar[int] = 4
    scale: ClassVar[tuple[float, float]] = (0.08, 1.0)
    ratio: ClassVar[tuple[float, float]] = (3 / 4, 4 / 3)

    @classmethod
    @abc.abstractmethod
    def load(cls, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Read a split from under `root`, downloading the official files (md5-checked)
        when they are absent; raise UserError naming what is missing or corrupt."""


class StreamedDataset(Dataset):
    """A data set too large for the device (ImageNet): `source` lists its examples, and
    `open_lth.training.streaming.StreamData` decodes each batch's from disk. Training
    crops are RandomResizedCrop(`size`, `scale`, `ratio`) and a flip; evaluation resizes
    the shorter side to `resize` and takes the central `size` x `size`."""

    augmentation: ClassVar[str | None] = "resized_crop_flip"
    size: ClassVar[int] = 224
    resize: ClassVar[int] = 256

    @classmethod
    def load(cls, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError(f"{cls.__name__} streams: use `source`")

    @classmethod
    @abc.abstractmethod
    def source(cls, root: Path, train: bool) -> tuple[Source, int]:
        """A split's examples and the number of classes; raise UserError naming what is
        missing or laid out wrongly."""
