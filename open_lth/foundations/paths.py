"""The names of the files in a run directory, in one place."""

from pathlib import Path


def weights(directory: Path, iteration: int) -> Path:
    return Path(directory) / f"weights_it{iteration}.pt"


def checkpoint(directory: Path) -> Path:
    return Path(directory) / "checkpoint.pt"


def previous_checkpoint(directory: Path) -> Path:
    """A pack keeps each run's checkpoint before the last one (see open_lth.lottery.pack)."""
    return Path(directory) / "checkpoint_previous.pt"


def metrics(directory: Path) -> Path:
    return Path(directory) / "metrics.csv"


def hparams(directory: Path) -> Path:
    return Path(directory) / "hparams.json"


def mask(directory: Path) -> Path:
    return Path(directory) / "mask.pt"
