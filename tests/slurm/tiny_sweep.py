"""A 4-run sweep in two phases for the Slurm test: two short LeNet lotteries (phase 1),
then a `retrain` branch on level 1 of each (phase 2, after the lotteries).

    python tests/slurm/tiny_sweep.py --root=R --dataset_root=D [--executor=slurm ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))

from open_lth.experiments.jobs import sweep  # noqa: E402

LOTTERY = [
    "--default_hparams=mnist_lenet_300_100",
    "--subsample_fraction=0.1",
    "--training_steps=600it",
    "--eval_every=100it",
    "--checkpoint_every=50it",
    "--levels=1",
    "--quiet",
]


def build(args: argparse.Namespace) -> sweep.Phases:
    lotteries = [["lottery", *LOTTERY, f"--replicate={r}", *sweep.job_flags(args)] for r in (1, 2)]
    branches = [
        ["lottery_branch", "retrain", "--levels=1", *run[1:], "--retrain_lr=0.0006"]
        for run in lotteries
    ]
    return [lotteries, branches]


if __name__ == "__main__":
    sys.exit(sweep.main(build, __doc__))
