"""ImageNet ResNet-50 IMP with rewinding, as a sweep (so that it runs on Slurm): one
lottery run per --strategies name x replicate, open_lth's ResNet-50 hparams (SGD,
batch 1024, lr 0.4 with 5 epochs of warm-up, 90 epochs), 20% of the weights pruned a
level (global magnitude by default), the survivors rewound to --rewind (default 6ep,
the rewinding point of Frankle et al.'s linear mode connectivity on ImageNet).

    python experiments/imagenet_lottery.py --root=RESULTS --dataset_root=PREPARED \\
        --executor=slurm --slurm_nodes=1 --slurm_gpus_per_node=8 --slurm_cpus_per_task=12

With --slurm_nodes=N --slurm_gpus_per_node=G each run is one DDP run over N x G GPUs
(the global batch stays --batch_size). --quick is a smoke test on a CPU: ResNet-18 of
width 8 on experiments/jobs/synthetic_imagenet.py's folder, 4 iterations a level, 2 levels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.experiments.jobs import sweep  # noqa: E402

FULL = {
    "model": "imagenet_resnet_50",
    "levels": 10,
    "replicates": "1",
    "rewind": "6ep",
    "extra": [],
}
QUICK = {
    "model": "imagenet_resnet_18_8",
    "levels": 2,
    "replicates": "1",
    "rewind": "2it",
    "extra": ["--batch_size=8", "--training_steps=4it", "--eval_every=2it", "--device=cpu"],
}


def add_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ImageNet study")
    group.add_argument("--model", help="default imagenet_resnet_50; quick imagenet_resnet_18_8")
    group.add_argument("--replicates", help="replicates, e.g. 1-3 (default 1)")
    group.add_argument("--levels", type=int, help="pruning levels (default 10; quick 2)")
    group.add_argument("--strategies", default="magnitude", help="comma-separated")
    group.add_argument("--rewind", metavar="STEP", help="rewinding step (default 6ep)")
    group.add_argument(
        "--fisher_examples",
        type=int,
        default=10000,
        help="training examples for Fisher's F̂ in the fisher runs (default 10000; the "
        "lottery's own default, the whole set, is a pass over 1.28M images a level)",
    )


def settings(args: argparse.Namespace) -> dict:
    return sweep.settings(args, FULL, QUICK, ("model", "replicates", "levels", "rewind"))


def lottery_run(
    args: argparse.Namespace, strategy: str, start: list[str], replicate: int
) -> sweep.Run:
    s = settings(args)
    return [
        "lottery",
        f"--default_hparams={s['model']}",
        "--dataset_name=imagenet",
        f"--pruning_strategy={strategy}",
        *([f"--fisher_examples={args.fisher_examples}"] if strategy == "fisher" else []),
        "--pruning_fraction=0.2",
        "--pruning_scope=global",
        *start,
        f"--levels={s['levels']}",
        f"--replicate={replicate}",
        *s["extra"],
        *sweep.job_flags(args),
    ]


def build(args: argparse.Namespace) -> sweep.Phases:
    start = {"rewind": [f"--rewinding_steps={settings(args)['rewind']}"]}
    return sweep.strategy_grid(args, lottery_run, start, settings(args)["replicates"])


if __name__ == "__main__":
    sys.exit(sweep.main(build, __doc__, extra_args=add_args))
