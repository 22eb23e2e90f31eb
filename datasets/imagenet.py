"""ImageNet as open_lth reads it: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (the
validation images sorted into class folders), classes in sorted order, or the shards
that experiments/jobs/prepare_data.py packs it into. It streams: see
open_lth/training/streaming.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from open_lth.foundations import registries, shards
from open_lth.foundations.dataset import StreamedDataset
from open_lth.foundations.errors import UserError
from open_lth.foundations.images import FileSource, Source, image_files

LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"


def find_folder(root: Path) -> Path:
    """`root` or `root/imagenet`, whichever holds train/ (and it must hold val/)."""
    for base in (root, root / "imagenet"):
        if (base / "train").is_dir():
            if not (base / "val").is_dir():
                raise UserError(f"ImageNet folder {base} has train/ but no val/; expected {LAYOUT}")
            return base
    raise UserError(
        f"ImageNet not found: expected {LAYOUT} in {root} or {root / 'imagenet'}, or a folder "
        "prepared by experiments/jobs/prepare_data.py"
    )


def class_folders(split: Path) -> list[str]:
    names = sorted(p.name for p in split.iterdir() if p.is_dir())
    if not names:
        loose = next((p for p in split.iterdir() if p.is_file()), None)
        found = f"images directly in it ({loose.name}, ...)" if loose else "nothing in it"
        raise UserError(
            f"{split} has {found}; expected one folder per class, {split.name}/<wnid>/*.JPEG"
        )
    return names


def folder_source(split: Path, classes: list[str]) -> FileSource:
    files, labels = [], []
    for label, name in enumerate(classes):
        found = image_files(split / name)
        if not found:
            raise UserError(f"class folder {split / name} holds no .JPEG images")
        files += found
        labels += [label] * len(found)
    source = FileSource(files, np.array(labels, dtype=np.int64))
    source.check()
    return source


def same_classes(train: list[str], val: list[str], folder: Path) -> None:
    if train != val:
        only_val = sorted(set(val) - set(train))
        only_train = sorted(set(train) - set(val))
        raise UserError(
            f"{folder / 'val'}'s classes differ from {folder / 'train'}'s: "
            f"{len(only_val)} only in val/ ({', '.join(only_val[:3]) or '-'}), "
            f"{len(only_train)} only in train/ ({', '.join(only_train[:3]) or '-'})"
        )


@registries.datasets.register("imagenet")
class ImageNet(StreamedDataset):
    num_classes = 1000  # of the real data set; a folder's own count is what trains
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    # open_lth's training crops.
    scale = (0.1, 1.0)
    ratio = (0.8, 1.25)

    @classmethod
    def source(cls, root: Path, train: bool) -> tuple[Source, int]:
        root = Path(root)
        prepared = shards.find(root, "imagenet")
        split = "train" if train else "val"
        if prepared is not None:
            info = shards.read_info(prepared)
            if split not in info.get("splits", {}):
                raise UserError(f"{prepared} holds no {split} shards; prepare the data set again")
            source = shards.ShardSource.open(prepared, split)
            source.check()
            return source, len(info["classes"])
        folder = find_folder(root)
        classes = class_folders(folder / "train")
        if not train:
            same_classes(classes, class_folders(folder / "val"), folder)
        return folder_source(folder / split, classes), len(classes)

    @classmethod
    def splits(cls, root: Path) -> tuple[list[str], dict[str, Source]]:
        """The classes and both splits' files, for experiments/jobs/prepare_data.py."""
        folder = find_folder(Path(root))
        classes = class_folders(folder / "train")
        same_classes(classes, class_folders(folder / "val"), folder)
        return classes, {s: folder_source(folder / s, classes) for s in ("train", "val")}
