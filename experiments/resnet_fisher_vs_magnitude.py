"""The study's ResNet-20 / CIFAR-10 experiment (its Figures 5-7): iterative pruning
with magnitude and Fisher pruning, the survivors reset to their initial values or
rewound to iteration 2000, SGD 0.1 with momentum 0.9, batch 128, 30,000 iterations,
fc.weight never pruned (Table 1), 20 levels of 20% (1.2% remain), one replicate as
in the study (--replicates=1-3 for error bands).

The model's other defaults stay: weight decay 1e-4 and learning-rate drops at 80 and
120 epochs, which come after 30,000 iterations (76.8 epochs), so the rate stays 0.1
throughout, as Table 1 lists no schedule.

    python experiments/resnet_fisher_vs_magnitude.py --root=RESULTS --dataset_root=DATA

--quick is tiny: the CIFAR-10 subset (pass --dataset_root=../shared/data/cifar10-subset),
20 iterations evaluated every 10, 2 levels, rewinding to 5 iterations, one replicate,
Fisher from 512 examples: 4 runs, a pipeline check, not a result (ResNet-20 is slow on a
CPU: 12.5 CPU-minutes on a 2-core machine; seconds on a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.experiments.jobs import sweep  # noqa: E402

STRATEGIES = ("magnitude", "fisher")
FULL = {
    "training_steps": "30000it",
    "levels": 20,
    "replicates": "1",
    "rewind": "2000it",
    "extra": [],
    "fisher": [],
}
QUICK = {
    "training_steps": "20it",
    "levels": 2,
    "replicates": "1",
    "rewind": "5it",
    "extra": ["--eval_every=10it", "--quiet"],
    "fisher": ["--fisher_examples=512"],
}


def add_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ResNet-20 study")
    group.add_argument("--replicates", help="replicates, e.g. 1-3,7 (default 1)")
    group.add_argument("--levels", type=int, help="pruning levels (default 20; quick 2)")
    group.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    group.add_argument("--rewind", metavar="STEP", help="rewinding step (default 2000it)")


def settings(args: argparse.Namespace) -> dict:
    return sweep.settings(args, FULL, QUICK, ("replicates", "levels", "rewind"))


def start_modes(args: argparse.Namespace) -> dict[str, list[str]]:
    return {"reset": [], "rewind": [f"--rewinding_steps={settings(args)['rewind']}"]}


def lottery_run(
    args: argparse.Namespace, strategy: str, start: list[str], replicate: int
) -> sweep.Run:
    s = settings(args)
    return [
        "lottery",
        "--default_hparams=cifar_resnet_20",
        "--dataset_name=cifar10",
        "--batch_size=128",
        "--optimizer_name=sgd",
        "--lr=0.1",
        "--momentum=0.9",
        f"--training_steps={s['training_steps']}",
        f"--pruning_strategy={strategy}",
        "--pruning_fraction=0.2",
        "--pruning_scope=global",
        "--pruning_layers_to_ignore=fc.weight",
        *(s["fisher"] if strategy == "fisher" else []),
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
