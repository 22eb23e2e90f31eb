"""The Python side: open a results root or one run, and rebuild a level's network.

    from open_lth import api
    api.runs("runs")                       # pandas, one row a stage (analysis.load.runs)
    run = api.open_run("runs/lottery_<hash>/replicate_2")
    stage = run.level(8)                   # a lottery level; run.branch(8, "<branch folder>")
    stage.hparams, stage.metrics(), stage.mask(), stage.steps()
    net = stage.network("end", device="cuda")   # the registered model, masked; "start", 2000
    api.evaluate(net, stage, dataset_root="data")   # {"test_loss": ..., "test_accuracy": ...}

Masked weights stay zero under further training: `apply_mask` zeroes them and hooks each
masked weight's gradient to be multiplied by its mask, so plain SGD, momentum, weight
decay, Adam and AdamW never move them (a zero gradient and a zero weight give a zero
update). The network keeps the model's own parameter names (no parametrization).

A folder that is not a run, one made under an older format, a missing or unreadable
file: one `open_lth.foundations.errors.UserError` with a one-line message."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from open_lth.foundations import formats, masks, paths
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DatasetHparams, ModelHparams
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model, build_model

# The formats whose folders the API reads: a format changes what a description computes,
# not where the files are, so a level made under an older format still opens.
READABLE = range(2, formats.FORMAT + 1)
_WEIGHTS = re.compile(r"^weights_it(\d+)\.pt$")


def _plugins() -> None:
    from open_lth.main import load_plugins

    load_plugins()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A weights or mask file, on the CPU; a missing or damaged one is one line."""
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file or a foreign pickle: never a traceback
        raise UserError(f"{path} cannot be read ({type(e).__name__}): it is damaged") from None


def groups_of(record: dict) -> dict[str, Any]:
    """The run's groups; a branch nests the lottery's under "lottery"."""
    nested = record.get("lottery")
    if isinstance(nested, dict) and nested and all(isinstance(v, dict) for v in nested.values()):
        return {**nested, **{k: v for k, v in record.items() if k != "lottery"}}
    return record


@dataclass(frozen=True)
class Stage:
    """One folder that trained: a `train` run, a lottery level, or a branch."""

    path: Path
    hparams: dict[str, Any]  # the parsed hparams.json (groups of fields)
    level: int | None = None

    @classmethod
    def open(cls, path: str | Path, level: int | None = None) -> Stage:
        path = Path(path).expanduser()
        record_path = paths.hparams(path)
        if not record_path.is_file():
            raise UserError(f"{path} is not a run folder: it has no hparams.json")
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{record_path} cannot be read: it is damaged") from None
        made = formats.of(path)
        if made not in READABLE:  # the files' layout is that of format 2 on
            raise UserError(
                f"{path} was made under format {made} of this framework; this version reads "
                f"formats {READABLE[0]} to {READABLE[-1]} (the last of format 1: "
                f"{formats.LAST_OF_FORMAT_1})"
            )
        groups = groups_of(record)
        if "model" not in groups or "dataset" not in groups:
            raise UserError(f"{path} is not a run folder: its hparams.json names no model")
        return cls(path, record, level)

    @property
    def model_hparams(self) -> ModelHparams:
        return ModelHparams.from_dict(groups_of(self.hparams)["model"])

    @property
    def dataset_hparams(self) -> DatasetHparams:
        return DatasetHparams.from_dict(groups_of(self.hparams)["dataset"])

    @property
    def done(self) -> bool:
        return paths.summary(self.path).is_file()

    def metrics(self) -> pd.DataFrame:
        """metrics.csv in long format (iteration, name, value), complete rows only."""
        from open_lth.experiments.analysis.load import read_metrics

        return read_metrics(paths.metrics(self.path))

    def steps(self) -> list[int]:
        """The iterations whose weights are saved, in order."""
        found = (_WEIGHTS.match(p.name) for p in self.path.iterdir())
        return sorted(int(m[1]) for m in found if m)

    def mask(self) -> Mask | None:
        """The level's mask (True = kept); None for a run that prunes nothing."""
        path = paths.mask(self.path)
        return {n: m.bool() for n, m in _tensors(path).items()} if path.exists() else None

    def weights_path(self, weights: str | int = "end") -> Path:
        """The file of "start" (the first saved step), "end" (the last) or a step."""
        steps = self.steps()
        if weights == "end" and not self.done:
            raise UserError(f"{self.path} is still running or crashed: it has no summary.json")
        if isinstance(weights, str) and weights not in ("start", "end"):
            if not weights.isdigit():
                raise UserError(f"weights {weights!r}: use start, end or an iteration")
            weights = int(weights)
        if not steps:
            raise UserError(f"{self.path} holds no saved weights yet")
        step = {"start": steps[0], "end": steps[-1]}.get(weights, weights)
        if step not in steps:
            raise UserError(f"{self.path} has no weights at iteration {step}; saved: {steps}")
        return paths.weights(self.path, step)

    def network(self, weights: str | int = "end", device: str | torch.device = "cpu") -> Model:
        """The registered model with the weights of a saved step, masked (see the top)."""
        _plugins()
        from open_lth.foundations import registries

        outputs = registries.datasets.get(self.dataset_hparams.dataset_name).num_classes
        model = build_model(self.model_hparams, outputs)
        state = _tensors(self.weights_path(weights))
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise UserError(f"{self.weights_path(weights)} does not fit the model: {first}") from e
        mask = self.mask()
        return apply_mask(model, mask).to(device) if mask else model.to(device)


def apply_mask(model: torch.nn.Module, mask: Mask) -> torch.nn.Module:
    """Zero the pruned weights and keep them zero under training (gradient hooks)."""
    params = dict(model.named_parameters())
    unknown = sorted(set(mask) - set(params))
    if unknown:
        raise UserError(f"the mask names weights the model does not have: {unknown[:3]}")
    masks.apply_mask(model, mask)
    for name, keep in mask.items():
        param = params[name]
        keep = keep.to(param.device, param.dtype)
        # the model may move to another device afterwards: the hook follows the gradient
        param.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device))
    return model


@dataclass(frozen=True)
class Run:
    """One replicate of a `train` or `lottery` run (`<kind>_<hash>/replicate_<r>`)."""

    path: Path

    @property
    def kind(self) -> str:
        return self.path.parent.name.split("_")[0]

    def levels(self) -> list[int]:
        return [n for n, _ in paths.numbered(self.path, "level")]

    def level(self, level: int) -> Stage:
        if self.kind != "lottery":
            raise UserError(f"{self.path} is a {self.kind} run: it has no levels")
        if level not in self.levels():
            raise UserError(f"{self.path} has no level {level}; it has {self.levels()}")
        return Stage.open(paths.level_main(self.path, level), level)

    def branches(self, level: int) -> list[str]:
        folder = paths.level(self.path, level)
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and p != paths.main(folder))

    def branch(self, level: int, name: str) -> Stage:
        folder = paths.level(self.path, level) / name
        if not folder.is_dir():
            raise UserError(f"{folder} does not exist; branches: {self.branches(level)}")
        return Stage.open(folder, level)

    def main(self) -> Stage:
        """A `train` run's one stage."""
        return Stage.open(paths.main(self.path))


def open_run(path: str | Path) -> Run | Stage:
    """A replicate folder (`lottery_<hash>/replicate_<r>`, `train_<hash>/replicate_<r>`) as
    a Run, or a folder that trained (a level's `main/`, a branch) as a Stage."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path} does not exist or is not a folder")
    if paths.number(path, "replicate") is not None and path.parent.name.startswith(
        ("lottery_", "train_")
    ):
        return Run(path)
    return Stage.open(path)


def runs(root: str | Path) -> pd.DataFrame:
    """Every stage under a results root, one row each (experiments.analysis.load.runs)."""
    from open_lth.experiments.analysis import load

    return load.runs(root)


def evaluate(
    network: torch.nn.Module, stage: Stage, dataset_root: str | Path, device: str = "cpu"
) -> dict[str, float]:
    """Test loss and accuracy of a network on its stage's data set, as the runs log them."""
    _plugins()
    from open_lth.training import data, evaluation

    test, _ = data.load(stage.dataset_hparams, Path(dataset_root), False, torch.device(device))
    loss, accuracy = evaluation.evaluate(network.to(device), test)
    return {"test_loss": loss, "test_accuracy": accuracy}
