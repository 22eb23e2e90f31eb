"""The on-disk layout, in one place: every folder and file name a run writes, for the
core that writes them and for the tools that read them (experiments' loading, status
and sweeps).

    <root>/<kind>_<hash>/replicate_<r>/main/                a train run's stage
    <root>/lottery_<hash>/replicate_<r>/level_<L>/main/     a lottery level's stage
    .../level_<L>/<branch>_<hash>/main/ or copy_<i>/        a branch's stage(s)
    a stage: weights_it<i>.pt, mask.pt, metrics.csv, summary.json (written last: done)"""

from __future__ import annotations

import re
from pathlib import Path

# A run's or a branch's folder: `<name>_<md5 of its hparams>`.
HASHED = re.compile(r"^(?P<name>.+)_(?P<hash>[0-9a-f]{32})$")
_NUMBERED = re.compile(r"^(?P<prefix>replicate|level|copy)_(?P<n>\d+)$")


def replicate(run_dir: Path, number: int) -> Path:
    return Path(run_dir) / f"replicate_{number}"


def level(replicate_dir: Path, number: int) -> Path:
    return Path(replicate_dir) / f"level_{number}"


def main(folder: Path) -> Path:
    """The stage of a train run's replicate, of a lottery level, or of a control branch."""
    return Path(folder) / "main"


def level_main(replicate_dir: Path, number: int) -> Path:
    return main(level(replicate_dir, number))


def copy(branch_dir: Path, number: int) -> Path:
    """One of an instability branch's copies (each a stage)."""
    return Path(branch_dir) / f"copy_{number}"


def number(folder: Path, prefix: str) -> int | None:
    """n for a folder named `<prefix>_<n>` (replicate, level or copy), else None."""
    m = _NUMBERED.match(Path(folder).name)
    return int(m["n"]) if m and m["prefix"] == prefix else None


def numbered(folder: Path, prefix: str) -> list[tuple[int, Path]]:
    """The `<prefix>_<n>` folders (replicate, level or copy) in `folder`, by number."""
    found = []
    if Path(folder).is_dir():
        for child in Path(folder).iterdir():
            n = number(child, prefix)
            if child.is_dir() and n is not None:
                found.append((n, child))
    return sorted(found)


def summary(stage_dir: Path) -> Path:
    """A stage's summary, written last: the stage is done."""
    return Path(stage_dir) / "summary.json"


def instability(branch_dir: Path) -> Path:
    """An instability branch's result, written last: the branch is done."""
    return Path(branch_dir) / "instability.json"


def weights(directory: Path, iteration: int) -> Path:
    return Path(directory) / f"weights_it{iteration}.pt"


def checkpoint(directory: Path) -> Path:
    return Path(directory) / "checkpoint.pt"


def previous_checkpoint(directory: Path) -> Path:
    """A pack keeps each run's checkpoint before the last one (see open_lth.lottery.pack)."""
    return previous_of(checkpoint(directory))


def search_checkpoint(directory: Path) -> Path:
    """Gem-Miner's score search, in the folder of the level whose mask it finds (gone
    once the mask is made)."""
    return Path(directory) / "gem_miner_checkpoint.pt"


def previous_of(checkpoint_file: Path) -> Path:
    """The checkpoint kept before `checkpoint_file` (open_lth.training.checkpoints):
    checkpoint.pt -> checkpoint_previous.pt, gem_miner_checkpoint.pt ->
    gem_miner_checkpoint_previous.pt."""
    path = Path(checkpoint_file)
    return path.with_name(f"{path.stem}_previous{path.suffix}")


def metrics(directory: Path) -> Path:
    return Path(directory) / "metrics.csv"


def hparams(directory: Path) -> Path:
    return Path(directory) / "hparams.json"


def mask(directory: Path) -> Path:
    return Path(directory) / "mask.pt"
