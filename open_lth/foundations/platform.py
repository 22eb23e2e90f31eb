"""Where runs and data live and which device runs them."""

from __future__ import annotations

import abc
import os
from pathlib import Path

import torch

from open_lth.foundations import distributed
from open_lth.foundations.errors import UserError


class Platform(abc.ABC):
    """A registered platform (`@registries.platforms.register("local")`)."""

    def __init__(self, root: str | None, dataset_root: str | None, device: str = "auto") -> None:
        self.root = Path(root).expanduser() if root else self.default_root()
        self.dataset_root = (
            Path(dataset_root).expanduser() if dataset_root else self.root / "datasets"
        )
        # A given --dataset_root must exist (see `check_dataset_root`); the default one
        # is ours to create when a data set is downloaded into it.
        self.dataset_root_given = bool(dataset_root)
        check_not_file(self.root, "--root")
        check_not_file(self.dataset_root, "--dataset_root")
        # Under torchrun: join the process group; a GPU becomes the local rank's.
        self.device = distributed.join(resolve_device(device))

    @staticmethod
    @abc.abstractmethod
    def default_root() -> Path:
        """Where runs go when --root is not given."""

    @property
    def rank(self) -> int:
        return distributed.rank()

    @property
    def world_size(self) -> int:
        return distributed.world_size()

    @property
    def is_primary(self) -> bool:
        """Only the primary process writes files."""
        return self.rank == 0


def check_not_file(path: Path, flag: str) -> None:
    """A folder that is, or lies under, a file can never be made: say so before anything
    is written, rather than fail with NotADirectoryError halfway through a run."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == path else f" (its parent {folder} is a file)"
                raise UserError(f"{flag} {path} is not a folder{where}; give a folder")
            return


def check_dataset_root(platform: Platform) -> None:
    """Download only into a folder that exists: a mistyped --dataset_root is named as
    missing instead of filled with a fresh download (or left an empty folder when the
    download fails). The default <root>/datasets is created when data is downloaded."""
    if platform.dataset_root_given and not platform.dataset_root.is_dir():
        raise UserError(
            f"--dataset_root {platform.dataset_root} does not exist; give the folder that "
            "holds the data sets, or create it to have them downloaded into it"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device '{name}' is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available here; use auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    return device


def env_root(default: Path) -> Path:
    return Path(os.environ.get("OPEN_LTH_ROOT", str(default))).expanduser()
