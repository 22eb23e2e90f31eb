"""Small image folders written with Pillow: an ImageNet-style ImageFolder with real
ImageNet's quirks (experiments/jobs/synthetic_imagenet.py) and the official Tiny ImageNet
layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from open_lth.experiments.jobs.synthetic_imagenet import picture, wnids, write_imagefolder

WNIDS = wnids(3)
__all__ = ["WNIDS", "picture", "write_imagefolder", "truncate", "write_tinyimagenet"]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_tinyimagenet(root: Path, train_per_class: int = 4, val_count: int = 6) -> Path:
    """root/tiny-imagenet-200 in the official layout, 64x64 JPEGs."""
    rng = np.random.default_rng(1)
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(reversed(WNIDS)) + "\n")
    for wnid in WNIDS:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(train_per_class):
            picture(rng, 64, 64).save(images / f"{wnid}_{i}.JPEG", format="JPEG")
    lines = []
    for i in range(val_count):
        wnid = WNIDS[i % len(WNIDS)]
        picture(rng, 64, 64).save(folder / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder
