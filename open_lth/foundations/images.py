"""Image files for the data sets that stream (ImageNet): where each example's bytes are,
how they are decoded with Pillow, and the crops, each a function of a seed only.

A `Source` is a list of examples (bytes and label) read by index, from files in folders
or from prepared shards (open_lth/foundations/shards.py); the streaming split
(open_lth/training/streaming.py) asks it for the examples of a batch."""

from __future__ import annotations

import io
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from open_lth.foundations.errors import UserError

# The first bytes of the formats real ImageNet holds: JPEG, and one PNG named .JPEG.
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
# Up to this many files, each file's first bytes are read before training (one small
# read per file); above it (1.28 million ImageNet files on a shared file system) a bad
# file is found when its batch is decoded, still as one line naming the file.
CHECK_UP_TO = 20_000


class Source:
    """Examples by index: `read(i)` gives the i-th example's encoded bytes, `name(i)` what
    an error message calls it, `labels` every label (int64)."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        raise NotImplementedError

    def name(self, i: int) -> str:
        raise NotImplementedError

    def subset(self, keep: np.ndarray) -> Source:
        raise NotImplementedError


@dataclass
class FileSource(Source):
    """One file per example (an ImageFolder)."""

    files: list[Path]
    labels: np.ndarray

    def read(self, i: int) -> bytes:
        try:
            return self.files[i].read_bytes()
        except OSError as e:
            raise UserError(f"cannot read image {self.files[i]}: {e.strerror}") from None

    def name(self, i: int) -> str:
        return str(self.files[i])

    def subset(self, keep: np.ndarray) -> FileSource:
        return FileSource([self.files[i] for i in keep.tolist()], self.labels[keep])

    def check(self) -> None:
        """Each file's first bytes (small folders only: see CHECK_UP_TO)."""
        if len(self.files) > CHECK_UP_TO:
            return
        for path in self.files:
            try:
                with open(path, "rb") as f:
                    head = f.read(8)
            except OSError as e:
                raise UserError(f"cannot read image {path}: {e.strerror}") from None
            if not head.startswith(MAGIC):
                what = "an empty file" if not head else "neither a JPEG nor a PNG file"
                raise UserError(f"image {path} is {what}; delete or replace it")


def decode(data: bytes, name: str) -> Image.Image:
    """An RGB image from JPEG or PNG bytes, whatever their mode (CMYK and grayscale
    JPEGs are in ImageNet); a truncated or undecodable file is one line naming it."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, not later in a crop
        return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot decode image {name} ({reason}); delete or replace it") from None


def crop_box(
    width: int, height: int, seed: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[tuple[int, int, int, int], bool]:
    """RandomResizedCrop's box (left, top, right, bottom) and a horizontal flip, drawn
    as torchvision draws them (10 tries of area and aspect ratio, then the central crop
    of the clamped ratio), from a generator seeded by `seed` alone: the same example at
    the same step gets the same crop in every run, resumed or not."""
    rng = random.Random(seed)
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            box = (left, top, left + w, top + h)
            break
    if box is None:
        aspect = width / height
        if aspect < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif aspect > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        box = (left, top, left + w, top + h)
    return box, rng.random() < 0.5


def train_crop(
    image: Image.Image,
    size: int,
    seed: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> np.ndarray:
    """A random resized crop to size x size and a random flip: (size, size, 3) uint8."""
    box, flip = crop_box(image.width, image.height, seed, scale, ratio)
    out = image.resize((size, size), Image.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def center_crop(image: Image.Image, size: int, resize: int) -> np.ndarray:
    """The shorter side resized to `resize`, then the central size x size: (size, size, 3)."""
    w, h = image.size
    if w <= h:
        new = (resize, max(1, int(resize * h / w)))
    else:
        new = (max(1, int(resize * w / h)), resize)
    image = image.resize(new, Image.BILINEAR)
    left = int(round((new[0] - size) / 2.0))
    top = int(round((new[1] - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def image_files(folder: Path) -> list[Path]:
    """The image files of one class folder in sorted order (ImageNet's are .JPEG)."""
    suffixes = (".jpeg", ".jpg", ".png")
    return sorted(Path(e.path) for e in os.scandir(folder) if e.name.lower().endswith(suffixes))
