"""The rules a run folder was made under: `format` in its hparams.json.

A run's name hashes its description, not the code that computes it. When a fix makes
an unchanged description compute something else, the format goes up, every folder
records the format it is made under, and a command that finds a folder of an older
format refuses it where the change touches what that folder holds (a strategy or a
branch says what changed for its description in `changed_since`). Folders that the
change does not touch are used as before.

    1   (no `format` recorded) this framework up to commit 64ffa90
    2   global pruning counts all surviving prunable weights, ignored layers included
        (open_lth's sparse_global); randomly_reinitialize starts at the level's start
        step k (open_lth); Gem-Miner's search as published (BatchNorm without affine
        parameters, the output layer scored, the released schedule and λ)
    3   SNIP scores with BatchNorm in eval mode (its authors' code; --snip_batchnorm=train
        for the old mode); GraSP's Hessian-gradient product runs over every conv and
        linear weight, the ignored layers' included (its released code)
"""

from __future__ import annotations

import json
from pathlib import Path

from open_lth.foundations import paths
from open_lth.foundations.errors import UserError

FORMAT = 3
KEY = "format"
LAST_OF_FORMAT_1 = "64ffa90"
LAST_OF_FORMAT_2 = "55d265f"


def of(directory: Path) -> int | None:
    """The format a folder was made under: its hparams.json's `format`; 1 for a folder
    with files but no `format` (made before formats were recorded); None for a folder
    that holds nothing yet."""
    directory = Path(directory)
    path = paths.hparams(directory)
    if path.exists():
        try:
            value = json.loads(path.read_text()).get(KEY)
        except (OSError, ValueError, AttributeError):
            value = None
        return value if isinstance(value, int) else 1
    if directory.is_dir() and any(
        p.is_file() and not p.name.startswith(".") for p in directory.iterdir()
    ):
        return 1
    return None


def refuse(directory: Path, made: int, what: str) -> UserError:
    """The one line that refuses a folder made under format `made`."""
    return UserError(
        f"{directory} was made under format {made} of this framework, and format {FORMAT} "
        f"computes its description differently: {what}; nothing in it was changed"
    )
