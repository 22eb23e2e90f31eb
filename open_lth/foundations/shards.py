"""Prepared shards: a data set packed into a few large tar files in the WebDataset format
(`<key>.jpg` + `<key>.cls` per example), because a million small files are slow on
shared file systems. Beside the shards, `<split>.index.npy` holds each example's shard,
byte offset, size and label, so that an example is read by index (the order of a run is
a function of its seed: a sequential reader would not do), and `shards.json`, written
last, names the data set, its classes and splits: a folder without it is not complete."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from open_lth.foundations.errors import UserError
from open_lth.foundations.images import Source, decode
from open_lth.foundations.store import atomic_write_bytes, atomic_write_json

MARKER = "shards.json"
CHUNK = 1024  # examples decoded ahead of the tar writer
FORMAT = "webdataset"


def shard_path(folder: Path, split: str, number: int) -> Path:
    return folder / f"{split}-{number:06d}.tar"


def index_path(folder: Path, split: str) -> Path:
    return folder / f"{split}.index.npy"


def find(root: Path, dataset_name: str) -> Path | None:
    """The prepared folder of `dataset_name`: `root` or `root/<name>` with a shards.json."""
    for folder in (root, root / dataset_name):
        marker = folder / MARKER
        if marker.is_file():
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"{marker}: not a shards.json of open_lth ({e})") from None
            if info.get("dataset") == dataset_name:
                return folder
    return None


def read_info(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text())


def shrink(data: bytes, name: str, shorter_side: int | None) -> bytes:
    """The bytes as they are, or the image re-encoded as a JPEG (quality 95) with its
    shorter side at most `shorter_side`. The bytes are decoded either way, so that a
    truncated file is found here rather than in a training run."""
    image = decode(data, name)
    if shorter_side is None or min(image.size) <= shorter_side:
        return data
    w, h = image.size
    f = shorter_side / min(w, h)
    image = image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_split(
    source: Source, folder: Path, split: str, shard_bytes: int, shorter_side: int | None
) -> int:
    """Pack one split into `<split>-NNNNNN.tar` shards of about `shard_bytes` each and
    write its index; returns the number of shards. Each shard is written under a
    temporary name and renamed when complete."""
    rows = []
    number, tar, tmp, size = 0, None, None, 0
    keys: list[tuple[int, str]] = []  # (example, member name) of the open shard

    def close() -> None:
        nonlocal tar
        assert tar is not None and tmp is not None
        tar.close()
        tar = None
        # The offsets, as tarfile laid the members out.
        with tarfile.open(tmp) as t:
            offsets = {m.name: (m.offset_data, m.size) for m in t.getmembers()}
        for i, name in keys:
            rows.append((i, number, *offsets[name], int(source.labels[i])))
        os.replace(tmp, shard_path(folder, split, number))

    def prepared(i: int) -> bytes:
        return shrink(source.read(i), source.name(i), shorter_side)

    with ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
        # In chunks, in order: each image is decoded (and resized) by the pool.
        for start in range(0, len(source), CHUNK):
            chunk = range(start, min(start + CHUNK, len(source)))
            for i, data in zip(chunk, pool.map(prepared, chunk), strict=True):
                if tar is None:
                    tmp = folder / f".{split}-{number:06d}.tar.tmp"
                    tar, size, keys = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT), 0, []
                key = f"{i:09d}"
                label = b"%d" % source.labels[i]
                for name, payload in ((f"{key}.jpg", data), (f"{key}.cls", label)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                keys.append((i, f"{key}.jpg"))
                size += len(data)
                if size >= shard_bytes:
                    close()
                    number += 1
    if tar is not None:
        close()
        number += 1
    index = np.array([r[1:] for r in sorted(rows)], dtype=np.int64).reshape(-1, 4)
    buffer = io.BytesIO()
    np.save(buffer, index)
    atomic_write_bytes(index_path(folder, split), buffer.getvalue())
    return number


def write(
    dataset_name: str,
    classes: list[str],
    splits: dict[str, Source],
    out: Path,
    shard_bytes: int,
    shorter_side: int | None,
) -> None:
    """Pack every split into `out`, then write shards.json."""
    if (out / MARKER).exists():
        raise UserError(f"--out {out} already holds prepared shards; remove it or choose another")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, source in splits.items():
        shards = write_split(source, out, split, shard_bytes, shorter_side)
        counts[split] = {"examples": len(source), "shards": shards}
    info = {
        "format": FORMAT,
        "dataset": dataset_name,
        "classes": classes,
        "splits": counts,
        "shorter_side": shorter_side,
    }
    atomic_write_json(out / MARKER, info)


@dataclass
class ShardSource(Source):
    """The examples of one split of a prepared folder, read by index with one `pread`
    each (thread-safe: no shared file position)."""

    folder: Path
    split: str
    index: np.ndarray  # (N, 4): shard, offset, size, label
    labels: np.ndarray = field(init=False)
    _fds: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.labels = self.index[:, 3].copy()

    @classmethod
    def open(cls, folder: Path, split: str) -> ShardSource:
        path = index_path(folder, split)
        try:
            index = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the shard index {path} ({e}); prepare again") from None
        if index.ndim != 2 or index.shape[1] != 4:
            raise UserError(f"{path}: expected an (N, 4) index, found {index.shape}")
        return cls(folder, split, index)

    def _fd(self, shard: int) -> int:
        with self._lock:
            if shard not in self._fds:
                path = shard_path(self.folder, self.split, shard)
                try:
                    self._fds[shard] = os.open(path, os.O_RDONLY)
                except OSError as e:
                    raise UserError(f"cannot open shard {path}: {e.strerror}") from None
            return self._fds[shard]

    def read(self, i: int) -> bytes:
        shard, offset, size, _ = (int(v) for v in self.index[i])
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise UserError(f"{self.name(i)}: truncated shard (prepare the data set again)")
        return data

    def name(self, i: int) -> str:
        shard = int(self.index[i, 0])
        return f"{shard_path(self.folder, self.split, shard)}:{i:09d}.jpg"

    def subset(self, keep: np.ndarray) -> ShardSource:
        return ShardSource(self.folder, self.split, self.index[keep])

    def check(self) -> None:
        """Every shard the index names exists and is long enough."""
        ends = {}
        for shard, offset, size, _ in self.index.tolist():
            ends[shard] = max(ends.get(shard, 0), offset + size)
        for shard, end in sorted(ends.items()):
            path = shard_path(self.folder, self.split, shard)
            if not path.is_file():
                raise UserError(f"shard {path} is missing; prepare the data set again")
            if path.stat().st_size < end:
                raise UserError(f"shard {path} is truncated; prepare the data set again")

    def __del__(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
