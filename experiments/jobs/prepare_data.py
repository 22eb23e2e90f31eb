"""Pack ImageNet's folders into a few large WebDataset tar shards for a shared file
system (a million small files are slow there), optionally with each image's shorter side
resized to at most N pixels:

    python experiments/jobs/prepare_data.py --dataset_name=imagenet --dataset_root=<folders> \\
        --out=<prepared> [--shorter_side=256] [--shard_size_mb=1024]

Then `--dataset_root=<prepared>` (or a folder holding it as `imagenet/`) reads the
shards in place of the folders. Without --shorter_side the shards hold each file's own
bytes, so training reads the very same images. See open_lth/foundations/shards.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))

from open_lth.foundations.errors import UserError  # noqa: E402

DATASETS = ("imagenet",)


def prepare(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--dataset_name", default="imagenet", help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--dataset_root", required=True, help="the folder with train/ and val/")
    parser.add_argument("--out", required=True, help="the folder the shards go to")
    parser.add_argument("--shorter_side", type=int, default=None, help="resize to at most this")
    parser.add_argument("--shard_size_mb", type=float, default=1024, help="bytes of images a shard")
    args = parser.parse_args(argv)
    if args.dataset_name not in DATASETS:
        raise UserError(f"--dataset_name {args.dataset_name}: prepare_data packs {DATASETS}")
    if args.shorter_side is not None and args.shorter_side <= 0:
        raise UserError(f"--shorter_side must be a positive number of pixels: {args.shorter_side}")
    if args.shard_size_mb <= 0:
        raise UserError(f"--shard_size_mb must be positive: {args.shard_size_mb}")
    from open_lth.datasets.imagenet import ImageNet
    from open_lth.foundations import shards

    root, out = Path(args.dataset_root), Path(args.out)
    if not root.is_dir():
        raise UserError(f"--dataset_root {root} does not exist")
    classes, splits = ImageNet.splits(root)
    shard_bytes = int(args.shard_size_mb * 2**20)
    shards.write(args.dataset_name, classes, splits, out, shard_bytes, args.shorter_side)
    counts = ", ".join(f"{s} {len(src)}" for s, src in splits.items())
    print(f"prepared {args.dataset_name} ({counts} images, {len(classes)} classes) in {out}")


def main(argv: list[str] | None = None) -> int:
    try:
        prepare(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
