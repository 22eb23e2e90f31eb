"""Small image folders written with Pillow: an ImageNet-style ImageFolder with real
ImageNet's quirks (a CMYK and a grayscale JPEG, a PNG named .JPEG) and the official
Tiny ImageNet layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n01440764", "n01443537", "n01484850"]


def picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random picture (a noise image would make every crop look alike)."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(np.asarray(image) // 2 + noise)


def write_imagefolder(root: Path, train_per_class: int = 8, val_per_class: int = 2) -> Path:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG, 40 to 80 pixels a side."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = (int(v) for v in rng.integers(40, 81, 2))
                image = picture(rng, w, h)
                path = folder / f"{wnid}_{i}.JPEG"
                if split == "train" and c == 0 and i == 1:
                    image.convert("CMYK").save(path, format="JPEG", quality=90)
                elif split == "train" and c == 1 and i == 2:
                    image.convert("L").save(path, format="JPEG", quality=90)
                elif split == "train" and c == 2 and i == 3:
                    image.save(path, format="PNG")  # ImageNet's n02105855_2933.JPEG
                else:
                    image.save(path, format="JPEG", quality=90)
    return root


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


def jpeg_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG")
    return out.getvalue()
