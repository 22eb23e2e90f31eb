"""Google Colab: runs and data live on the mounted Google Drive, so that they outlive
the runtime. A disconnected notebook resumes by running the same command again:
every run continues from its last checkpoint on the Drive.

    from google.colab import drive; drive.mount("/content/drive")
    !python main.py lottery --platform=colab --default_hparams=mnist_lenet_300_100

Runs go to /content/drive/MyDrive/open_lth_data, data sets to .../open_lth_data/datasets
(--root and --dataset_root override them; $OPEN_LTH_COLAB_DRIVE moves the Drive).
"""

from __future__ import annotations

import os
from pathlib import Path

from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.platform import Platform

MOUNT = "/content/drive"


def drive() -> Path:
    """The Drive's MyDrive folder (where Colab mounts it unless told otherwise)."""
    return Path(os.environ.get("OPEN_LTH_COLAB_DRIVE", f"{MOUNT}/MyDrive")).expanduser()


def check_mounted(path: Path) -> None:
    if not drive().is_dir():
        raise UserError(
            f"--platform=colab keeps runs on Google Drive, but {drive()} is not there: mount "
            f"the Drive first (from google.colab import drive; drive.mount('{MOUNT}')), "
            f"or give --root and --dataset_root outside it (asked for {path})"
        )


@registries.platforms.register("colab")
class ColabPlatform(Platform):
    def __init__(self, root: str | None, dataset_root: str | None, device: str = "auto") -> None:
        wanted = [Path(p).expanduser() for p in (root, dataset_root) if p]
        if root is None:
            wanted.append(self.default_root())
        for path in wanted:
            if path.is_relative_to(drive()) or path.is_relative_to(MOUNT):
                check_mounted(path)
        super().__init__(root, dataset_root, device)

    @staticmethod
    def default_root() -> Path:
        return drive() / "open_lth_data"
