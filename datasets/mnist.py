"""MNIST from the official IDX files (gzip or plain), as laid out by the usual tools."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from open_lth.datasets.download import download_allowed, fetch_first, md5sum
from open_lth.foundations import registries
from open_lth.foundations.dataset import Dataset
from open_lth.foundations.errors import UserError

MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]

# The md5 of each official .gz file; every mirror serves these exact bytes.
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

SPLITS = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

GZIP_MAGIC = b"\x1f\x8b"
UINT8 = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzip-compressed or not.

    Compression is detected by the gzip magic, not the name, since tools rename
    files freely. The header and the payload length are checked exactly, so a
    truncated download cannot be read as a smaller data set.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except EOFError as e:
            raise UserError(
                f"{path}: truncated gzip stream ({e}); delete it and fetch it again"
            ) from e
        except (gzip.BadGzipFile, zlib.error) as e:
            raise UserError(
                f"{path}: corrupt gzip stream ({e}); delete it and fetch it again"
            ) from e
    if len(data) < 4 or data[:2] != b"\0\0":
        raise UserError(f"{path}: not an IDX file (its first bytes are {data[:4].hex()})")
    if data[2] != UINT8:
        raise UserError(
            f"{path}: IDX data type 0x{data[2]:02x} is not supported; only 0x08 (unsigned byte)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise UserError(f"{path}: bad IDX header ({ndim} dimensions, file of {len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected, found = math.prod(dims), len(data) - header
    if found < expected:
        raise UserError(
            f"{path}: truncated IDX file: expected {expected} bytes of data, found {found}"
        )
    if found > expected:
        raise UserError(
            f"{path}: IDX file too long: expected {expected} bytes of data, found {found}"
        )
    # bytearray makes the array writable, which torch.from_numpy wants.
    return np.frombuffer(bytearray(data[header:]), dtype=np.uint8).reshape(dims)


def _folders(root: Path) -> list[Path]:
    """Where MNIST is found: plain, our download folder, and torchvision's layouts."""
    return [root, root / "mnist", root / "MNIST" / "raw", root / "MNIST"]


def _find(folder: Path, name: str) -> Path | None:
    # The .gz is preferred because its md5 can be checked against the official sum.
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _read_checked(path: Path) -> np.ndarray:
    if path.suffix == ".gz" and path.name in MD5:
        got, expected = md5sum(path), MD5[path.name]
        if got != expected:
            raise UserError(
                f"{path} is corrupt: md5 {got}, expected {expected}; delete it so that "
                "it is fetched again"
            )
    return read_idx(path)


def _missing_error(root: Path, names: tuple[str, ...], reason: str) -> UserError:
    searched = ", ".join(str(f) for f in _folders(root))
    found = {name: [f for f in _folders(root) if _find(f, name)] for name in names}
    missing = [name for name in names if not found[name]]
    if missing:
        what = "MNIST files not found: " + ", ".join(f"{n}[.gz]" for n in missing)
    else:
        # Each file exists, but never both in the same folder.
        where = "; ".join(f"{n} in {', '.join(map(str, found[n]))}" for n in names)
        what = f"MNIST files {' and '.join(names)} must be in the same folder, found {where}"
    return UserError(f"{what} (searched {searched}); {reason}")


@registries.datasets.register("mnist")
class MNIST(Dataset):
    num_classes = 10
    mean = (0.1307,)
    std = (0.3081,)
    augmentation = None

    @classmethod
    def load(cls, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        root = Path(root)
        names = SPLITS[bool(train)]
        paths = cls._locate(root, names)
        if paths is None:
            if not download_allowed():
                raise _missing_error(
                    root,
                    names,
                    "downloads are off (OPEN_LTH_OFFLINE is set), so put "
                    "the official files in one of those folders",
                )
            try:
                for name in names:
                    if _find(root / "mnist", name) is None:
                        gz = f"{name}.gz"
                        fetch_first([m + gz for m in MIRRORS], root / "mnist" / gz, MD5[gz])
            except UserError as e:
                raise _missing_error(root, names, f"download failed: {e}") from e
            paths = cls._locate(root, names)
            assert paths is not None, "the download put both files in root/mnist"
        images_path, labels_path = paths
        images, labels = _read_checked(images_path), _read_checked(labels_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise UserError(f"{images_path}: expected N x 28 x 28 images, found {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise UserError(
                f"{labels_path}: expected {len(images)} labels (one per image of "
                f"{images_path.name}), found shape {labels.shape}"
            )
        if labels.size and labels.max() >= cls.num_classes:
            raise UserError(f"{labels_path}: label {labels.max()} is out of range 0..9")
        return (
            torch.from_numpy(images).unsqueeze(1).contiguous(),
            torch.from_numpy(labels.astype(np.int64)),
        )

    @staticmethod
    def _locate(root: Path, names: tuple[str, ...]) -> tuple[Path, Path] | None:
        """The first folder holding both files of the split wins."""
        for folder in _folders(root):
            images, labels = (_find(folder, name) for name in names)
            if images is not None and labels is not None:
                return images, labels
        return None
