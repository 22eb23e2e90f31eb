"""The study's instability analysis (its Figures 9 and 10, after Frankle et al. 2020):
two copies of a lottery level trained from the same weights with different SGD noise
(data order), the error along the linear path between them, and the barrier.

Phase 1 trains the lottery runs the branches hang off: the same commands as the
LeNet and ResNet-20 studies (magnitude and Fisher pruning, reset), so a root that has
them already skips them. Phase 2 runs `main.py lottery_branch instability`:

  * sparse levels with k = 0 (the level's start): LeNet levels 0, 8, 15 (100%, 16.8%,
    3.5% remaining), ResNet-20 levels 0, 8 (16.8%, the study's Fisher comparison); the
    Fisher runs skip level 0, which is the same dense network as the magnitude run's;
  * instability vs the step k the copies start from, on the dense network (level 0)
    of the magnitude run: LeNet k = 25..2000, ResNet-20 k = 100..5000 iterations.

  * Gem-Miner on ResNet-20 (the study's Figure 10a): the mask found at initialization
    at 16.8% (--target_density=0.16777216, every layer scored, the published search),
    trained like a lottery level; its level 1 with k = 0.

Every branch: --noise_seeds=1,2 --interpolation_points=30, and for ResNet-20
--bn_stats=interpolate (LeNet has no BatchNorm); k = 0 is the default, not a flag.

    python experiments/instability.py --root=RESULTS --dataset_root=DATA \
        --cifar_dataset_root=DATA/cifar-10      # if CIFAR-10 lives elsewhere

--quick: the quick LeNet and ResNet-20 lotteries of the two studies, branches at
levels 0 and 2 (LeNet) or 0 and 1 (ResNet-20), k in {50, 100} (LeNet) and {5}
(ResNet-20), 11 interpolation points; Gem-Miner with a 6-step search pruning after
steps 3 and 5 (--gem_miner_steps=6it --gem_miner_prune_every=2it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.experiments import lenet_fisher_vs_magnitude as lenet  # noqa: E402
from open_lth.experiments import resnet_fisher_vs_magnitude as resnet  # noqa: E402
from open_lth.experiments.jobs import sweep  # noqa: E402

FULL = {
    "lenet": {"levels": "0,8,15", "ks": [25, 100, 500, 2000]},
    "resnet": {"levels": "0,8", "ks": [100, 500, 2000, 5000]},
    "points": 30,
}
QUICK = {
    "lenet": {"levels": "0,2", "ks": [50, 100]},
    "resnet": {"levels": "0,1", "ks": [5]},
    "points": 11,
    "gem_miner": ["--gem_miner_steps=6it", "--gem_miner_prune_every=2it"],
}
GEM_MINER_DENSITY = "0.16777216"  # 0.8^8, the study's 16.8%
STRATEGIES = ("magnitude", "fisher")
BRANCH_FLAGS = (
    "--noise_seeds=",
    "--interpolation_points=",
    "--bn_stats=",
    "--branch_rewinding_steps=",
)


def add_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Instability study")
    group.add_argument("--models", default="lenet,resnet", help="lenet, resnet or both")
    group.add_argument("--cifar_dataset_root", help="CIFAR-10's folder (default: --dataset_root)")
    group.add_argument("--replicates", help="replicates, e.g. 1-3,7 (default: the studies')")


def _study_args(args: argparse.Namespace, model: str) -> argparse.Namespace:
    """The arguments the LeNet or ResNet study would get for the same lotteries."""
    values = dict(vars(args))
    if model == "resnet" and args.cifar_dataset_root:
        values["dataset_root"] = args.cifar_dataset_root
    values.update(levels=None, rewind=None, pruning_fraction=None)
    return argparse.Namespace(**values)


def branch(lottery: sweep.Run, levels: str, k: int, points: int, bn: bool) -> sweep.Run:
    """The instability branch of a lottery command: its flags without `--levels=N`."""
    flags = [a for a in lottery[1:] if not a.startswith("--levels=")]
    run = ["lottery_branch", "instability", f"--levels={levels}", *flags]
    run += ["--noise_seeds=1,2", f"--interpolation_points={points}"]
    if bn:
        run.append("--bn_stats=interpolate")
    if k:
        run.append(f"--branch_rewinding_steps={k}it")
    return run


def gem_miner_run(study_args: argparse.Namespace, replicate: int, search: list[str]) -> sweep.Run:
    """The ResNet-20 study's lottery command with Gem-Miner's mask at 16.8%: IMP's
    pruning flags (the fraction, the scope, fc.weight ignored) give way to the target
    density, and every layer is scored, as published."""
    base = resnet.lottery_run(study_args, "gem_miner", [], replicate)
    imp_only = ("--pruning_fraction=", "--pruning_scope=", "--pruning_layers_to_ignore=")
    run = [a for a in base if not a.startswith((*imp_only, "--levels="))]
    return [*run, f"--target_density={GEM_MINER_DENSITY}", *search, "--levels=1"]


def build(args: argparse.Namespace) -> sweep.Phases:
    plan = QUICK if args.quick else FULL
    lotteries: list[sweep.Run] = []
    branches: list[sweep.Run] = []
    for model, study in (("lenet", lenet), ("resnet", resnet)):
        if model not in args.models.split(","):
            continue
        study_args = _study_args(args, model)
        replicates = args.replicates or study.settings(study_args)["replicates"]
        reset = study.start_modes(study_args)["reset"]
        for strategy in STRATEGIES:
            for replicate in sweep.replicates(replicates):
                run = study.lottery_run(study_args, strategy, reset, replicate)
                lotteries.append(run)
                bn = model == "resnet"
                levels = plan[model]["levels"]
                if strategy != "magnitude":  # level 0, the dense network, is the same run
                    levels = ",".join(x for x in levels.split(",") if x.strip() != "0")
                branches.append(branch(run, levels, 0, plan["points"], bn))
                if strategy == "magnitude":
                    for k in plan[model]["ks"]:
                        branches.append(branch(run, "0", k, plan["points"], bn))
        if model == "resnet":
            for replicate in sweep.replicates(replicates):
                run = gem_miner_run(study_args, replicate, plan.get("gem_miner", []))
                lotteries.append(run)
                branches.append(branch(run, "1", 0, plan["points"], True))
    return [lotteries, branches]


if __name__ == "__main__":
    sys.exit(sweep.main(build, __doc__, extra_args=add_args))
