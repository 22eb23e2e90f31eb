"""Linear interpolation between two trained networks, θ(α) = (1-α)·θ₁ + α·θ₂, evaluated
at many α at once: a chunk of interpolated networks is stacked into one network
(open_lth.training.stacked) and sees each batch once.

The error barrier (instability) is max_α error(α) − mean(error(0), error(1))."""

from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from open_lth.foundations.model import Model
from open_lth.foundations.store import atomic_write_text
from open_lth.training.data import DeviceData
from open_lth.training.evaluation import evaluate_copies
from open_lth.training.precision import layout
from open_lth.training.signals import Interrupted, signals_to_flag
from open_lth.training.stacked import repeat_input, stack

CHUNK = 10  # interpolated networks evaluated together; also the unit of resumption
HEADER = "alpha,split,error,loss\n"


def alphas(points: int) -> list[float]:
    return [i / (points - 1) for i in range(points)]


def interpolate_state(a: dict, b: dict, alpha: float) -> dict:
    """Every floating entry of the state (weights and BatchNorm running statistics)
    interpolated; integer entries (num_batches_tracked) taken from the first."""
    return {
        k: torch.lerp(a[k], b[k], alpha) if a[k].is_floating_point() else a[k].clone() for k in a
    }


def recompute_bn_stats(net: torch.nn.Module, data: DeviceData, copies: int, batch: int) -> None:
    """Re-estimate every BatchNorm's running statistics from the training data (no
    augmentation), as a cumulative average over one pass."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for start in range(0, len(data), batch):
            index = torch.arange(start, min(start + batch, len(data)), device=data.device)
            x, _ = data.batch(index)
            net(layout(net, repeat_input(x, copies)))
    net.eval()


def barrier(errors: list[float]) -> float:
    """max error on the path minus the mean of the two ends' errors."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def read_curve(path: Path) -> dict[tuple[float, str], tuple[float, float]]:
    """(alpha, split) -> (error, loss) for every complete row."""
    rows = {}
    if path.exists():
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    rows[(float(r["alpha"]), r["split"])] = (float(r["error"]), float(r["loss"]))
                except (TypeError, ValueError, KeyError):
                    continue
    return rows


@dataclass
class Ends:
    """What every θ(α) is made of: a network of the right shape, the two states, the
    splits it is evaluated on, and how its BatchNorm statistics are got (--bn_stats,
    and the batch size of a recomputing pass)."""

    template: Model
    first: dict
    second: dict
    splits: dict[str, DeviceData]
    bn_stats: str
    bn_batch: int


def evaluate_path(
    template: Model,
    first: dict,
    second: dict,
    splits: dict[str, DeviceData],
    points: int,
    bn_stats: str,
    curve_path: Path,
    bn_batch: int,
) -> dict[tuple[float, str], tuple[float, float]]:
    """Evaluate θ(α) on every split at `points` α, appending to curve.csv as chunks
    finish and skipping α already there (so an interrupted evaluation resumes)."""
    ends = Ends(template, first, second, splits, bn_stats, bn_batch)
    done = read_curve(curve_path)
    todo = [a for a in alphas(points) if any((a, s) not in done for s in splits)]
    # Rewrite what is complete, so that a row cut short by a kill is not appended to.
    kept = "".join(f"{a!r},{s},{e!r},{loss!r}\n" for (a, s), (e, loss) in sorted(done.items()))
    atomic_write_text(curve_path, HEADER + kept)
    device = next(iter(splits.values())).device
    with signals_to_flag() as stop:
        for i in range(0, len(todo), CHUNK):
            if stop.signum is not None:  # the points so far are in curve.csv already
                raise Interrupted(stop.signum, len(done) // len(splits), "interpolation point")
            _evaluate_chunk(ends, todo[i : i + CHUNK], curve_path, device, done)
    return done


def _evaluate_chunk(
    ends: Ends,
    chunk: list[float],
    curve_path: Path,
    device: torch.device,
    done: dict[tuple[float, str], tuple[float, float]],
) -> None:
    """θ(α) for the α of one chunk, stacked into one network, on every split; the rows
    are appended to curve.csv and to `done`."""
    models = []
    for alpha in chunk:
        model = copy.deepcopy(ends.template)
        model.load_state_dict(interpolate_state(ends.first, ends.second, alpha))
        models.append(model)
    net = (stack(models) if len(models) > 1 else models[0]).to(device)
    if ends.bn_stats == "recompute":
        recompute_bn_stats(net, ends.splits["train"], len(chunk), ends.bn_batch)
    rows = []
    for split, data in ends.splits.items():
        results = evaluate_copies(net, data, len(chunk))
        for alpha, (loss, accuracy) in zip(chunk, results, strict=True):
            done[(alpha, split)] = (1 - accuracy, loss)
            rows.append(f"{alpha!r},{split},{1 - accuracy!r},{loss!r}\n")
    with open(curve_path, "a") as f:
        f.write("".join(rows))
