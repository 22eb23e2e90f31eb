"""Tiny ImageNet from the official `tiny-imagenet-200` layout: `wnids.txt`,
`train/<wnid>/images/*.JPEG` and `val/images/*.JPEG` labelled by
`val/val_annotations.txt`; 200 classes of 64x64 images, classes in sorted order.

Its 110,000 images fit on the device as uint8 like CIFAR-10's, so they are decoded once
(Pillow, a pool of threads) and cached beside the data as `open_lth-<split>.pt`, keyed
by the files' names and sizes, so a changed folder is decoded again; where the folder
cannot be written the images are decoded at each start (about a minute).

Augmentation: that of `tinyimagenet` in the fork of open_lth for "Pruning Neural
Networks at Initialization: Why Are We Missing the Mark?", read from the constants of
its compiled datasets/tinyimagenet.py (as vendored, .pyc only, by 123Bailey123/Pruning):
RandomResizedCrop(64, scale=(0.1, 1.0), ratio=(0.8, 1.25)) and a horizontal flip; the
test images as they are. Its normalization, ImageNet's followed by
Normalize((-0.0210, -0.0354, -0.0376), (1.21, 1.20, 1.25)), is one normalization with
the mean and std below. (Its `tinyimagenet2` instead crops with 4 pixels of padding.)
Here the resized crop is bilinear, batched on the device (grid_sample), not Pillow's."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from open_lth.foundations import registries
from open_lth.foundations.dataset import Dataset
from open_lth.foundations.errors import UserError, note_once
from open_lth.foundations.images import FileSource, decode, image_files
from open_lth.foundations.store import Unreadable, atomic_torch_save, torch_load

FOLDER = "tiny-imagenet-200"
SIZE = 64
LAYOUT = (
    f"{FOLDER}/ with wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
    "val/val_annotations.txt"
)


def find_folder(root: Path) -> Path:
    for folder in (root / FOLDER, root / "tinyimagenet" / FOLDER, root):
        if (folder / "wnids.txt").is_file():
            return folder
    raise UserError(
        f"Tiny ImageNet not found: expected {LAYOUT} in {root} (or {root} to be that folder)"
    )


def read_wnids(folder: Path) -> list[str]:
    wnids = sorted({w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()})
    if not wnids:
        raise UserError(f"{folder / 'wnids.txt'} lists no classes; expected {LAYOUT}")
    return wnids


def train_files(folder: Path, wnids: list[str]) -> FileSource:
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise UserError(f"{images} is missing; expected {LAYOUT}")
        found = image_files(images)
        files += found
        labels += [label] * len(found)
    return FileSource(files, np.array(labels, dtype=np.int64))


def val_files(folder: Path, wnids: list[str]) -> FileSource:
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise UserError(f"{annotations} is missing; expected {LAYOUT}")
    label_of = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or fields[1] not in label_of:
            raise UserError(
                f"{annotations} line {number}: expected '<file> <wnid> ...' with a wnid of "
                f"wnids.txt, found {line.strip()!r}"
            )
        files.append(folder / "val" / "images" / fields[0])
        labels.append(label_of[fields[1]])
    order = sorted(range(len(files)), key=lambda i: files[i].name)
    return FileSource([files[i] for i in order], np.array(labels, dtype=np.int64)[order])


def fingerprint(source: FileSource) -> str:
    h = hashlib.sha256()
    for path, label in zip(source.files, source.labels.tolist(), strict=True):
        try:
            size = path.stat().st_size
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e.strerror}") from None
        h.update(f"{path.name}/{size}/{label}\n".encode())
    return h.hexdigest()


def decode_all(source: FileSource) -> torch.Tensor:
    def one(i: int) -> np.ndarray:
        image = decode(source.read(i), source.name(i))
        if image.size != (SIZE, SIZE):
            raise UserError(f"image {source.name(i)} is {image.size[0]}x{image.size[1]}, not 64x64")
        return np.asarray(image)

    with ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(one, range(len(source))))
    if not arrays:
        raise UserError("Tiny ImageNet split holds no images; expected " + LAYOUT)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@registries.datasets.register("tinyimagenet")
class TinyImageNet(Dataset):
    num_classes = 200
    mean = (0.4802, 0.4481, 0.3975)  # 0.485 - 0.0210·0.229, ... (see above)
    std = (0.2771, 0.2688, 0.2813)  # 0.229·1.21, 0.224·1.20, 0.225·1.25
    augmentation = "resized_crop_flip"
    scale = (0.1, 1.0)
    ratio = (0.8, 1.25)

    @classmethod
    def load(cls, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        folder = find_folder(Path(root))
        wnids = read_wnids(folder)
        source = train_files(folder, wnids) if train else val_files(folder, wnids)
        key = fingerprint(source)
        cache = folder / f"open_lth-{'train' if train else 'val'}.pt"
        if cache.is_file():
            try:
                cached = torch_load(cache)
                if cached.get("key") == key:
                    return cached["images"], cached["labels"]
            except (Unreadable, AttributeError, KeyError):
                pass  # a broken cache is decoded again
        source.check()
        images, labels = decode_all(source), torch.from_numpy(source.labels)
        try:
            atomic_torch_save(cache, {"images": images, "labels": labels, "key": key})
        except OSError as e:
            note_once("tinyimagenet-cache", f"cannot cache decoded images in {cache}: {e}")
        return images, labels
