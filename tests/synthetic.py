"""A small results root written by hand in the on-disk layout of the runs (no
training): for the tests of the loaders, figures and report, and to try them.

    make_results_root(path)   # -> a Layout that says what was written where

It holds a tiny "LeNet" (three prunable layers), lottery runs with magnitude, Fisher
and random pruning reset to init, magnitude re-initialized, 2 replicates, levels
0-3 of 20%; a train run; one crashed level (no summary.json, a checkpoint, the last
metrics row cut short); instability branches (done, at several k, and one in
progress with a partial curve); a randomly_prune control branch.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from open_lth.foundations import formats

LAYERS = {"fc_layers.0.weight": (24, 16), "fc_layers.1.weight": (12, 24), "fc.weight": (10, 12)}
END = 300
EVALS = (0, 100, 200, 300)


def name_hash(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - a folder name


def hparams(strategy: str | None, start: str | None) -> dict:
    values = {
        "dataset": {
            "dataset_name": "mnist",
            "batch_size": 60,
            "do_not_augment": False,
            "subsample_fraction": None,
        },
        "model": {
            "model_name": "mnist_lenet_24_12",
            "model_init": "kaiming_normal",
            "batchnorm_init": "uniform",
        },
        "training": {
            "optimizer_name": "adam",
            "lr": 0.0012,
            "training_steps": f"{END}it",
            "momentum": 0.0,
            "milestone_steps": None,
        },
    }
    if strategy is not None:
        values["pruning"] = {
            "pruning_strategy": strategy,
            "pruning_fraction": 0.2,
            "pruning_scope": "global",
            "pruning_layers_to_ignore": None,
        }
        values["lottery"] = {
            "rewinding_steps": "100it" if start == "rewind" else None,
            "reinitialize": start == "reinit",
        }
    return values


@dataclass
class Layout:
    root: Path
    lotteries: dict[tuple[str, str], str] = field(default_factory=dict)  # (strategy, start)
    levels: int = 3
    replicates: tuple[int, ...] = (1, 2)
    crashed: Path | None = None  # the level folder without summary.json
    train: str = ""
    instability_done: list[Path] = field(default_factory=list)
    instability_running: Path | None = None
    control: Path | None = None

    def level(self, strategy: str, start: str, replicate: int, level: int) -> Path:
        run = self.lotteries[(strategy, start)]
        return self.root / run / f"replicate_{replicate}" / f"level_{level}" / "main"


def write_json(path: Path, value: dict) -> None:
    """A JSON file; an hparams.json records the format, as a run's does."""
    if path.name == "hparams.json":
        value = {**value, formats.KEY: formats.FORMAT}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True))


def accuracy(density: float, it: int, strategy: str, replicate: int) -> float:
    """A made-up curve: learning with the iteration, a penalty for random pruning."""
    penalty = 0.15 * (1 - density) if strategy == "random" else 0.02 * (1 - density)
    return round(0.1 + (0.85 - penalty) * (1 - math.exp(-it / 80)) + 0.002 * replicate, 4)


def write_metrics(path: Path, density: float, strategy: str, replicate: int, start: int) -> None:
    lines = ["iteration,name,value"]
    for it in EVALS:
        if it < start:
            continue
        acc = accuracy(density, it, strategy, replicate)
        if it == start:
            lines.append(f"{it},supermask_test_accuracy,{acc}")
        else:
            lines.append(f"{it},train_loss,{1 - acc}")
            lines.append(f"{it},train_accuracy,{acc + 0.01}")
        lines.append(f"{it},test_loss,{1.5 * (1 - acc)}")
        lines.append(f"{it},test_accuracy,{acc}")
        lines.append(f"{it},learning_rate,0.0012")
        lines.append(f"{it},wall_seconds,{it / 100}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def summary(density: float, strategy: str, replicate: int, start: int = 0) -> dict:
    final = accuracy(density, END, strategy, replicate)
    return {
        "end_iteration": END,
        "final_test_accuracy": final,
        "best_test_accuracy": final,
        "final_test_loss": 1.5 * (1 - final),
        "wall_seconds": 3.0,
        "supermask_test_accuracy": accuracy(density, start, strategy, replicate),
    }


def prune(weights: dict, mask: dict, strategy: str, seed: int) -> dict:
    """20% of the survivors, globally: smallest |w|, smallest made-up 'Fisher' score, or random."""
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for n, w in weights.items():
        if strategy == "magnitude":
            scores[n] = w.abs()
        elif strategy == "fisher":
            scores[n] = w.square() * torch.rand(w.shape, generator=g)
        else:
            scores[n] = torch.rand(w.shape, generator=g)
    alive = torch.cat([scores[n][mask[n]] for n in mask])
    k = round(0.2 * alive.numel())
    threshold = alive.kthvalue(k).values
    return {n: mask[n] & (scores[n] > threshold) for n in mask}


def report(mask: dict) -> dict:
    layers = {
        n: {"kept": int(m.sum()), "total": m.numel(), "density": int(m.sum()) / m.numel()}
        for n, m in mask.items()
    }
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["total"] for v in layers.values())
    return {"kept": kept, "total": total, "density": kept / total, "ignored": [], "layers": layers}


def write_lottery(layout: Layout, strategy: str, start: str) -> None:
    desc = hparams(strategy, start)
    run = f"lottery_{name_hash(json.dumps(desc, sort_keys=True))}"
    layout.lotteries[(strategy, start)] = run
    for replicate in layout.replicates:
        g = torch.Generator().manual_seed(replicate)
        init = {n: torch.randn(s, generator=g) * 0.3 for n, s in LAYERS.items()}
        mask = {n: torch.ones(s, dtype=torch.bool) for n, s in LAYERS.items()}
        trained = None
        for level in range(layout.levels + 1):
            out = layout.level(strategy, start, replicate, level)
            out.mkdir(parents=True, exist_ok=True)
            if level > 0:
                mask = prune(trained, mask, strategy, seed=100 * replicate + level)
            torch.save({n: m.clone() for n, m in mask.items()}, out / "mask.pt")
            write_json(out / "sparsity_report.json", report(mask))
            write_json(out / "hparams.json", desc)
            density = report(mask)["density"]
            start_weights = {n: (init[n] * mask[n]) for n in init}
            torch.save(start_weights, out / "weights_it0.pt")
            gen = torch.Generator().manual_seed(1000 * replicate + level)
            trained = {
                n: (w * 1.5 + 0.05 * torch.randn(w.shape, generator=gen)) * mask[n]
                for n, w in init.items()
            }
            torch.save(trained, out / f"weights_it{END}.pt")
            write_metrics(out / "metrics.csv", density, strategy, replicate, 0)
            crashed = (strategy, start, replicate, level) == ("fisher", "reset", 2, layout.levels)
            if crashed:
                layout.crashed = out
                (out / f"weights_it{END}.pt").unlink()
                torch.save({"step": 200}, out / "checkpoint.pt")
                text = (out / "metrics.csv").read_text()
                cut = text.index("\n300,test_loss")  # keep 0-200 and the start of 300
                (out / "metrics.csv").write_text(text[: cut + 1] + "300,test_loss,0.0")
            else:
                write_json(out / "summary.json", summary(density, strategy, replicate))


def curve_rows(barrier: float, points: int = 11) -> list[str]:
    rows = ["alpha,split,error,loss"]
    for i in range(points):
        alpha = i / (points - 1)
        bump = barrier * math.sin(math.pi * alpha)
        rows.append(f"{alpha},train,{0.02 + bump},{0.1 + bump}")
        rows.append(f"{alpha},test,{0.03 + bump},{0.12 + bump}")
    return rows


def write_instability(
    layout: Layout, replicate: int, level: int, k: int, done: bool = True
) -> Path:
    lottery = hparams("magnitude", "reset")
    branch = {"noise_seeds": "1,2", "interpolation_points": 11, "bn_stats": "interpolate"}
    branch["branch_rewinding_steps"] = f"{k}it" if k else None
    folder = layout.level("magnitude", "reset", replicate, level).parent
    out = folder / f"instability_{name_hash(json.dumps([branch, k], sort_keys=True))}"
    write_json(
        out / "hparams.json", {"lottery": lottery, "branch": branch, "branch_name": "instability"}
    )
    barrier = round(0.3 / (1 + k / 50) + 0.01 * replicate, 4)
    rows = curve_rows(barrier)
    density = json.loads((folder / "main" / "sparsity_report.json").read_text())["density"]
    for copy in (1, 2):
        write_metrics(out / f"copy_{copy}" / "metrics.csv", density, "magnitude", replicate, k)
        if done:
            write_json(
                out / f"copy_{copy}" / "summary.json", summary(density, "magnitude", replicate, k)
            )
    if done:
        (out / "curve.csv").write_text("\n".join(rows) + "\n")
        info = {
            "train_instability": barrier,
            "test_instability": barrier,
            "train_end_errors": [0.02, 0.02],
            "test_end_errors": [0.03, 0.03],
            "bn_stats": "interpolate",
            "interpolation_points": 11,
            "start_iteration": k,
            "level": level,
            "density": density,
        }
        write_json(out / "instability.json", info)
    else:
        # 7 of 11 train rows, the last one cut short
        (out / "curve.csv").write_text("\n".join(rows[:15]) + "\n" + rows[15][:6])
    return out


def make_results_root(root: str | Path) -> Layout:
    layout = Layout(Path(root))
    layout.root.mkdir(parents=True, exist_ok=True)
    for strategy, start in (
        ("magnitude", "reset"),
        ("fisher", "reset"),
        ("random", "reset"),
        ("magnitude", "reinit"),
    ):
        write_lottery(layout, strategy, start)
    train_desc = hparams(None, None)
    layout.train = f"train_{name_hash(json.dumps(train_desc, sort_keys=True))}"
    main = layout.root / layout.train / "replicate_1" / "main"
    write_json(main / "hparams.json", train_desc)
    write_metrics(main / "metrics.csv", 1.0, "magnitude", 1, 0)
    write_json(main / "summary.json", summary(1.0, "magnitude", 1))
    for replicate in layout.replicates:
        for k in (0, 100, 200):
            layout.instability_done.append(write_instability(layout, replicate, 0, k))
    layout.instability_done.append(write_instability(layout, 1, 2, 0))
    layout.instability_running = write_instability(layout, 1, 1, 0, done=False)
    level = layout.level("magnitude", "reset", 1, 2).parent
    control = level / f"randomly_prune_{name_hash('randomly_prune')}"
    lottery = hparams("magnitude", "reset")
    write_json(
        control / "hparams.json",
        {"lottery": lottery, "branch": {"seed": 7}, "branch_name": "randomly_prune"},
    )
    density = json.loads((level / "main" / "sparsity_report.json").read_text())["density"]
    write_metrics(control / "main" / "metrics.csv", density, "random", 1, 0)
    write_json(control / "main" / "summary.json", summary(density, "random", 1))
    layout.control = control / "main"
    return layout
