"""A ticket: a level's weights with its mask applied, in one file that rebuilds the
network with no run folder present.

`main.py export --run=<lottery replicate folder> --level=L [--weights=end|start|<step>]
--out=<file> [--format=safetensors|torch]`, or `export(stage, out)` in Python.

The file holds the weights under the model's own parameter names (pruned entries
zero), each mask as `mask.<weight name>` (uint8, 1 = kept), and as metadata the model
name, the run's hparams (JSON), the step and the source folder. safetensors (the
default) holds only tensors and a string header, so a ticket from someone else opens
without running any code; `--format=torch` writes the same entries as a plain state
dict for torch.save, with the metadata under `__metadata__` (loaded with
`weights_only=True`, so it runs no code either)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from open_lth.api import Run, Stage, apply_mask, groups_of, open_run
from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DefaultHparams, ModelHparams
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model, build_model
from open_lth.foundations.runner import Runner
from open_lth.foundations.store import atomic_torch_save, atomic_write_bytes

FORMATS = ("safetensors", "torch")
MASK = "mask."
METADATA = "__metadata__"


def _tensors(stage: Stage, weights: str | int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    net = stage.network(weights)
    mask = stage.mask() or {}
    tensors = {n: t.detach().cpu().contiguous() for n, t in net.state_dict().items()}
    tensors.update({MASK + n: m.to(torch.uint8).contiguous() for n, m in mask.items()})
    metadata = {
        "format": "open_lth_ticket_1",
        "model_name": stage.model_hparams.model_name,
        "hparams": json.dumps(stage.hparams, sort_keys=True),
        "step": str(stage.weights_path(weights).stem.removeprefix("weights_it")),
        "source": str(stage.path),
        "num_classes": str(net.state_dict()[net.output_layer_names[0]].shape[0]),
    }
    return tensors, metadata


def export(
    stage: Stage, out: str | Path, weights: str | int = "end", fmt: str = "safetensors"
) -> Path:
    """Write a stage's ticket (atomically: a crash leaves no half file) and return its path."""
    if fmt not in FORMATS:
        raise UserError(f"unknown ticket format '{fmt}'; known formats: {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out, {out.parent}, does not exist")
    tensors, metadata = _tensors(stage, weights)
    if fmt == "safetensors":
        from safetensors.torch import save

        atomic_write_bytes(out, save(tensors, metadata=metadata))
    else:
        atomic_torch_save(out, {**tensors, METADATA: metadata})
    return out


@dataclass(frozen=True)
class Ticket:
    network: Model  # masked; its pruned weights stay zero under training (api.apply_mask)
    mask: Mask
    model_name: str
    hparams: dict[str, Any]
    step: int


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        if path.read_bytes()[:1] == b"P":  # a zip archive: torch.save
            values = torch.load(path, map_location="cpu", weights_only=True)
            return {k: v for k, v in values.items() if k != METADATA}, values[METADATA]
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118
    except Exception as e:  # a damaged or foreign file: one line, never a traceback
        raise UserError(f"{path} is not a readable ticket ({type(e).__name__})") from None


def load_ticket(path: str | Path, device: str | torch.device = "cpu") -> Ticket:
    """Rebuild a ticket's network (the registered model), masked, on `device`."""
    from open_lth.main import load_plugins

    load_plugins()
    path = Path(path).expanduser()
    tensors, metadata = _read(path)
    if metadata.get("format") != "open_lth_ticket_1":
        raise UserError(f"{path} is not an open_lth ticket: its metadata names no ticket format")
    hparams = json.loads(metadata["hparams"])
    model_hparams = ModelHparams.from_dict(groups_of(hparams)["model"])
    model = build_model(model_hparams, int(metadata["num_classes"]))
    mask = {n[len(MASK) :]: t.bool() for n, t in tensors.items() if n.startswith(MASK)}
    model.load_state_dict({n: t for n, t in tensors.items() if not n.startswith(MASK)})
    network = apply_mask(model, mask).to(device)
    return Ticket(network, mask, metadata["model_name"], hparams, int(metadata["step"]))


@registries.subcommands.register("export")
class ExportRunner(Runner):
    description = "Write a lottery level's ticket (masked weights, mask, hparams) to one file."

    def __init__(self, stage: Stage, weights: str, out: Path, fmt: str) -> None:
        self.stage, self.weights, self.out, self.fmt = stage, weights, out, fmt

    @staticmethod
    def add_args(parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None:
        group = parser.add_argument_group("Export")
        group.add_argument("--run", required=True, help="a lottery replicate's folder")
        group.add_argument("--level", type=int, required=True, help="the level to export")
        group.add_argument("--weights", default="end", help="end (default), start or a step")
        group.add_argument("--out", required=True, help="the ticket file to write")
        group.add_argument("--format", default="safetensors", choices=FORMATS)
        group.add_argument("--display_output_location", action="store_true", help="print --out")

    @classmethod
    def create_from_args(cls, args: argparse.Namespace) -> ExportRunner:
        run = open_run(args.run)
        if not isinstance(run, Run) or run.kind != "lottery":
            raise UserError(f"--run={args.run} is not a lottery replicate's folder")
        stage = run.level(args.level)
        stage.weights_path(args.weights)  # refuse a missing step before anything is written
        return cls(stage, args.weights, Path(args.out), args.format)

    @property
    def output_location(self) -> Path:
        return self.out

    def run(self) -> None:
        out = export(self.stage, self.out, self.weights, self.fmt)
        print(f"wrote {out} (level {self.stage.level}, weights {self.weights})")
