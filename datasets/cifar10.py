"""CIFAR-10 from either official layout: the python pickles or the binary records."""

from __future__ import annotations

import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from open_lth.datasets.download import download_allowed, fetch_first, md5sum
from open_lth.foundations import registries
from open_lth.foundations.dataset import Dataset
from open_lth.foundations.errors import UserError

MIRRORS = ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"

PY_DIR = "cifar-10-batches-py"
BIN_DIR = "cifar-10-batches-bin"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS  # binary layout: one label byte, then the R, G and B planes


def _numpy_reconstruct() -> Any:
    # numpy 2 moved numpy.core to numpy._core; resolve the real function directly
    # rather than through the deprecated alias (which warns).
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What python 3 protocol-2 pickles call to rebuild bytes; only latin1 is needed."""
    if encoding not in ("latin1", "latin-1"):
        raise UserError(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles the batches' dicts of numpy arrays and nothing else.

    A pickle can call any importable function; the batches come from the internet,
    so only the globals that numpy array reconstruction needs are resolved.
    """

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise UserError(f"refusing to unpickle {module}.{name} from {self.path}")


def _get(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise UserError(f"{path}: not a CIFAR-10 batch (it has no '{key}' entry)")


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as e:  # any way a corrupt pickle can fail is the user's file's fault
        raise UserError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = _get(batch, "data", path)
    labels = _get(batch, "labels", path)
    if not isinstance(data, np.ndarray):
        raise UserError(f"{path}: 'data' is a {type(data).__name__}, expected a numpy array")
    try:
        labels = np.asarray(labels)
    except Exception as e:
        raise UserError(f"{path}: 'labels' is not a list of integers ({e})") from e
    return data, labels


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e
    if len(raw) == 0 or len(raw) % RECORD:
        raise UserError(
            f"{path}: truncated CIFAR-10 binary file: {len(raw)} bytes is not a positive "
            f"multiple of {RECORD} (1 label byte + {PIXELS} pixel bytes per image)"
        )
    records = np.frombuffer(bytearray(raw), dtype=np.uint8).reshape(-1, RECORD)
    return records[:, 1:], records[:, 0]


def _check(data: np.ndarray, labels: np.ndarray, path: Path) -> None:
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise UserError(
            f"{path}: expected N x {PIXELS} uint8 data, found {data.shape} {data.dtype}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"{path}: expected {len(data)} integer labels, found {labels.shape} {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path}: labels must be in 0..9, found {labels.min()}..{labels.max()}")


LAYOUTS = {
    PY_DIR: (lambda name: name, _read_python_batch),
    BIN_DIR: (lambda name: f"{name}.bin", _read_binary_batch),
}


def _candidates(root: Path) -> list[tuple[Path, str]]:
    """(folder, layout) pairs in search order: under root, root/cifar10, root/cifar-10,
    then root itself when it is a layout folder (recognized by name)."""
    found = [(base / layout, layout) for base in _bases(root) for layout in LAYOUTS]
    found += [(root, root.name)] if root.name in LAYOUTS else []
    return found


def _bases(root: Path) -> list[Path]:
    return [root, root / "cifar10", root / "cifar-10"]


def _missing(folder: Path, layout: str, batches: list[str]) -> list[str]:
    file_name = LAYOUTS[layout][0]
    return [file_name(b) for b in batches if not (folder / file_name(b)).is_file()]


@registries.datasets.register("cifar10")
class CIFAR10(Dataset):
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    augmentation = "crop_flip"

    @classmethod
    def load(cls, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        root = Path(root)
        batches = TRAIN_BATCHES if train else TEST_BATCHES
        found = cls._locate(root, batches)
        if found is None:
            _download(root)
            found = cls._locate(root, batches)
            if found is None:
                raise UserError(
                    f"the archive {MIRRORS[0]} did not hold {PY_DIR}/{', '.join(batches)}"
                )
        folder, layout = found
        file_name, read = LAYOUTS[layout]
        datas, labels = [], []
        for batch in batches:
            path = folder / file_name(batch)
            data, label = read(path)
            _check(data, label, path)
            datas.append(data)
            labels.append(label)
        images = np.concatenate(datas).reshape(-1, 3, 32, 32)
        return (
            torch.from_numpy(np.ascontiguousarray(images)),
            torch.from_numpy(np.concatenate(labels).astype(np.int64)),
        )

    @staticmethod
    def _locate(root: Path, batches: list[str]) -> tuple[Path, str] | None:
        """The first layout folder holding every batch of the split.

        A folder that exists but lacks batches is an error rather than a reason to
        download, because extracting over it could mix two versions of the data.
        """
        partial = []
        for folder, layout in _candidates(root):
            if not folder.is_dir():
                continue
            missing = _missing(folder, layout, batches)
            if not missing:
                return folder, layout
            partial.append(f"{folder} lacks {', '.join(missing)}")
        if partial:
            raise UserError(
                f"incomplete CIFAR-10 folder: {'; '.join(partial)}; restore the files or "
                "delete the folder so that the archive is fetched again"
            )
        return None


def _download(root: Path) -> None:
    """Fetch and extract the python-layout archive into root, or explain what is missing."""
    looked = ", ".join(str(b) for b in _bases(root))
    if not download_allowed():
        raise UserError(
            f"CIFAR-10 not found: no {PY_DIR}/ or {BIN_DIR}/ in {looked} (nor is {root} "
            "one); downloads are off (OPEN_LTH_OFFLINE is set), so put the official "
            "files in one of those folders"
        )
    archive = root / ARCHIVE
    try:
        if not (archive.is_file() and md5sum(archive) == ARCHIVE_MD5):
            fetch_first(MIRRORS, archive, ARCHIVE_MD5)
    except UserError as e:
        raise UserError(
            f"CIFAR-10 not found: no {PY_DIR}/ or {BIN_DIR}/ in {looked}; download failed: {e}"
        ) from e
    _extract(archive, root)


def _extract(archive: Path, root: Path) -> None:
    """Extract into a scratch folder, then move the batches folder into place, so an
    interrupted extraction never leaves a half-filled cifar-10-batches-py behind."""
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=".cifar10-extract."))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # filter="data" refuses absolute paths, links out of the folder and devices.
            tar.extractall(scratch, filter="data")
        extracted = scratch / PY_DIR
        if not extracted.is_dir():
            raise UserError(f"{archive}: the archive holds no {PY_DIR}/ folder")
        extracted.rename(root / PY_DIR)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: cannot extract ({e}); delete it and try again") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
