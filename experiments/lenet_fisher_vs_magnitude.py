"""The study's LeNet-300-100 / MNIST experiment (its Figures 1-4 and Table 2):
iterative pruning with magnitude, Fisher and random pruning, the survivors reset to
their initial values or randomly re-initialized at every level (with --rewind=STEP
also rewound to that step), 3 replicates, 26 levels of 20% (0.30% of the weights
remain), Adam 1.2e-3, batch 60, 50,000 iterations, global pruning (Table 1).

    python experiments/lenet_fisher_vs_magnitude.py --root=RESULTS --dataset_root=../shared/data
    python main.py report --root=RESULTS --out=RESULTS/report

--quick is the same grid, small: real MNIST with a fixed 10% subset of the training
set, 300 iterations (3 epochs) evaluated every 50, 2 replicates, 5 levels of 50%
(3.1% remain, so that the strategies part ways; --pruning_fraction=0.2 for the
study's rate). 12 runs, a few minutes on a laptop CPU. --training_steps shortens (or
lengthens) every level, e.g. `--quick --training_steps=100it` for a smoke test
(experiments/colab.ipynb runs that way in the test suite).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.experiments.jobs import sweep  # noqa: E402

STRATEGIES = ("magnitude", "fisher", "random")
FULL = {
    "training_steps": "50000it",
    "levels": 26,
    "replicates": "1-3",
    "pruning_fraction": 0.2,
    "extra": [],
}
QUICK = {
    "training_steps": "300it",
    "levels": 5,
    "replicates": "1-2",
    "pruning_fraction": 0.5,
    "extra": ["--subsample_fraction=0.1", "--eval_every=50it", "--quiet"],
}


def add_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LeNet study")
    group.add_argument("--replicates", help="replicates, e.g. 1-3,7 (default 1-3; quick 1-2)")
    group.add_argument("--levels", type=int, help="pruning levels (default 26; quick 5)")
    group.add_argument("--pruning_fraction", type=float, help="default 0.2; quick 0.5")
    group.add_argument(
        "--training_steps", help="a level's training, e.g. 100it (default 50000it; quick 300it)"
    )
    group.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    group.add_argument(
        "--rewind", metavar="STEP", help="also rewind the survivors to STEP, e.g. 1000it"
    )


def settings(args: argparse.Namespace) -> dict:
    return sweep.settings(
        args, FULL, QUICK, ("replicates", "levels", "pruning_fraction", "training_steps")
    )


def start_modes(args: argparse.Namespace) -> dict[str, list[str]]:
    modes = {"reset": [], "reinit": ["--reinitialize"]}
    if getattr(args, "rewind", None):
        modes["rewind"] = [f"--rewinding_steps={args.rewind}"]
    return modes


def lottery_run(
    args: argparse.Namespace, strategy: str, start: list[str], replicate: int
) -> sweep.Run:
    """One lottery command of the study (every Table 1 value explicit)."""
    s = settings(args)
    return [
        "lottery",
        "--default_hparams=mnist_lenet_300_100",
        "--dataset_name=mnist",
        "--batch_size=60",
        "--optimizer_name=adam",
        "--lr=0.0012",
        f"--training_steps={s['training_steps']}",
        f"--pruning_strategy={strategy}",
        f"--pruning_fraction={s['pruning_fraction']}",
        "--pruning_scope=global",
        *start,
        f"--levels={s['levels']}",
        f"--replicate={replicate}",
        *s["extra"],
        *sweep.job_flags(args),
    ]


def build(args: argparse.Namespace) -> sweep.Phases:
    return sweep.strategy_grid(args, lottery_run, start_modes(args), settings(args)["replicates"])


if __name__ == "__main__":
    sys.exit(sweep.main(build, __doc__, extra_args=add_args))
