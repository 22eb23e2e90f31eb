"""Experiment trackers beside metrics.csv (`--loggers=tensorboard,wandb`): each gets exactly
the rows that the CSV gets, as the CSV gets them (open_lth.training.metrics hands them
over), one tracker run per run folder (a level, a packed run, an instability copy).

Each is an optional extra, imported only when asked for. A resumed run must not show a
step twice:
- TensorBoard writes into <run>/tensorboard/ with `purge_step`: its reader drops the
  earlier events past the point the CSV was cut back to, which are logged again.
- W&B resumes the run whose id is kept in <run>/wandb_run_id, logging with
  step=iteration; W&B ignores a step at or below the last one it has, so the steps
  between the last checkpoint and the kill keep their first values (the same numbers on
  a resumed run, bar wall_seconds). W&B is offline (files in <run>/wandb/, for
  `wandb sync`) unless WANDB_MODE is set or the user is logged in.
"""

from __future__ import annotations

import importlib
import json
import netrc
import os
import secrets
import shutil
import string
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from open_lth.foundations import paths
from open_lth.foundations.errors import UserError

# logger name -> (the module it needs, the extra that installs it)
KNOWN = {"tensorboard": "tensorboard", "wandb": "wandb"}


def parse_loggers(text: str | None) -> tuple[str, ...]:
    """`--loggers`' names, checked (known, installed) before anything is written."""
    if not text:
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for name in names:
        if name not in KNOWN:
            raise UserError(f"--loggers: unknown logger {name!r}; known: {', '.join(KNOWN)}")
    for name in names:
        try:
            importlib.import_module(KNOWN[name])
        except ImportError:
            raise UserError(
                f"--loggers={name} needs the {KNOWN[name]} package: pip install -e .[{name}]"
            ) from None
    return names


class Tracker(ABC):
    @abstractmethod
    def log(self, iteration: int, values: dict[str, float]) -> None:
        """One iteration's rows, as metrics.csv just received them."""

    @abstractmethod
    def close(self) -> None: ...


def open_trackers(
    names: tuple[str, ...], out: Path, root: Path | None, after: int, quiet: bool
) -> list[Tracker]:
    """The trackers of the run in `out`, whose metrics.csv keeps rows up to `after`."""
    if not names:
        return []
    hparams = _hparams(out)
    name = _run_name(out, root)
    kinds = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    return [kinds[n](out, name, hparams, after, quiet) for n in names]


class TensorBoardTracker(Tracker):
    def __init__(
        self, out: Path, name: str, hparams: dict[str, Any], after: int, quiet: bool
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = out / "tensorboard"
        if after < 0:
            shutil.rmtree(folder, ignore_errors=True)  # a start from scratch: the CSV is too
        # Events at steps above `after` were cut from the CSV and are logged again.
        self.writer = SummaryWriter(str(folder), purge_step=max(after + 1, 0))
        text = f"```\n{json.dumps(hparams, indent=2)}\n```"  # markdown: keep the layout
        self.writer.add_text("hparams", text, global_step=max(after + 1, 0))
        self.writer.flush()
        self.name = name

    def log(self, iteration: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=iteration)
        self.writer.flush()  # live: TensorBoard sees each evaluation as it happens

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(
        self, out: Path, name: str, hparams: dict[str, Any], after: int, quiet: bool
    ) -> None:
        import wandb

        id_file = out / "wandb_run_id"
        if after >= 0 and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            # W&B's own form of id (8 of [a-z0-9]), chosen here to be kept for a resume
            run_id = "".join(
                secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8)
            )
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "open_lth"),
            name=name,
            id=run_id,
            resume="allow",
            dir=str(out),
            config=hparams,
            mode=_wandb_mode(),
            reinit="create_new",  # a pack holds one run per packed run at once
            settings=wandb.Settings(console="off", silent=quiet),
        )

    def log(self, iteration: int, values: dict[str, float]) -> None:
        self.run.log(values, step=iteration)

    def close(self) -> None:
        self.run.finish()


def _wandb_mode() -> str | None:
    """Offline (clusters have no internet) unless the user set WANDB_MODE or logged in."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None  # wandb reads them itself
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):  # where `wandb login` keeps the key
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def _hparams(out: Path) -> dict[str, Any]:
    """The stage's hparams.json; an instability copy's is its branch folder's."""
    for folder in (out, out.parent):
        if paths.hparams(folder).exists():
            return json.loads(paths.hparams(folder).read_text())
    return {}


def _run_name(out: Path, root: Path | None) -> str:
    """The folder below the root, e.g. lottery_<hash>/replicate_1/level_2."""
    try:
        return out.resolve().relative_to(Path(root).resolve()).as_posix()
    except (TypeError, ValueError):  # no root given: the folder's own name
        return out.name
