"""A small synthetic ImageNet-style folder, to try the ImageNet commands on a CPU:

    python experiments/jobs/synthetic_imagenet.py --out=<folder> [--classes=3] [--per_class=8]

writes <folder>/train/<wnid>/*.JPEG (per_class images a class) and <folder>/val/<wnid>/
(a quarter as many), smooth random pictures of 40 to 80 pixels a side, with real
ImageNet's quirks: a CMYK and a grayscale JPEG and a PNG file named .JPEG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random picture (a noise image would make every crop look alike)."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(np.asarray(image) // 2 + noise)


def wnids(classes: int) -> list[str]:
    return [f"n{1440764 + 2773 * c:08d}" for c in range(classes)]


def write_imagefolder(
    root: Path, train_per_class: int = 8, val_per_class: int = 2, classes: int = 3
) -> Path:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG; the CMYK, grayscale and PNG
    files are training images 1, 2 and 3 of the first three classes."""
    rng = np.random.default_rng(0)
    quirks = {(0, 1): "CMYK", (1, 2): "L", (2, 3): "PNG"}
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(wnids(classes)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = (int(v) for v in rng.integers(40, 81, 2))
                image = picture(rng, w, h)
                path = folder / f"{wnid}_{i}.JPEG"
                quirk = quirks.get((c, i)) if split == "train" else None
                if quirk == "PNG":
                    image.save(path, format="PNG")  # as ImageNet's n02105855_2933.JPEG
                elif quirk:
                    image.convert(quirk).save(path, format="JPEG", quality=90)
                else:
                    image.save(path, format="JPEG", quality=90)
    return root


def write_sized(
    root: Path, train_images: int, classes: int, size: tuple[int, int] = (500, 375)
) -> Path:
    """root/train and root/val as ImageNet's typical files for a benchmark: `size`
    pictures (portrait for one in four, as ImageNet mixes both), JPEG quality 90,
    `train_images` spread over `classes` folders, one validation image a class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_images), ("val", classes)):
        for i in range(count):
            wnid = wnids(classes)[i % classes]
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            w, h = size if i % 4 else size[::-1]
            picture(rng, w, h).save(folder / f"{wnid}_{i}.JPEG", format="JPEG", quality=90)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", required=True, help="a folder that does not exist yet")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per_class", type=int, default=8, help="training images a class")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"error: --out {out} exists; give a new folder", file=sys.stderr)
        return 2
    if args.classes < 3 or args.per_class < 4:
        print("error: --classes must be at least 3 and --per_class at least 4", file=sys.stderr)
        return 2
    write_imagefolder(out, args.per_class, max(1, args.per_class // 4), args.classes)
    print(f"wrote {args.classes} classes of {args.per_class} training images in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
