"""Pruning at initialization against IMP (after Frankle et al. 2021, "Pruning Neural
Networks at Initialization: Why Are We Missing the Mark?"): test accuracy against
density on LeNet-300-100 / MNIST and ResNet-20 / CIFAR-10 for

  * IMP with reset and with rewinding, Fisher (reset) and random pruning (reset): one
    lottery run each, every level a density (the LeNet and ResNet studies' commands, so
    a root that has them skips them);
  * the one-shot strategies at the level's starting weights, magnitude at init, SNIP,
    GraSP, SynFlow and Gem-Miner: one lottery run per density (--target_density =
    0.8^L, what L levels of IMP keep; --levels=1), each trained like a level;
  * phase 2, the shuffle ablation: `randomly_prune --random_mask_scope=layerwise` (each
    layer keeps its count, placed at random, on the same starting weights) on level 1
    of every one-shot run and on IMP's (reset) levels at the same densities.

Pruning is global; ResNet-20's fc.weight is never pruned by IMP, Fisher, random and
the four score strategies (the ResNet study's rule, counted as IMP counts), while
Gem-Miner scores every layer, as published.

    python experiments/pruning_at_init.py --root=RESULTS --dataset_root=../shared/data \
        --cifar_dataset_root=<CIFAR-10>
    python main.py report --root=RESULTS       # fig_pruning_at_init_<model>.png

--quick, for a CPU: LeNet on 10% of MNIST, 300 iterations, 50% per level, densities
25% and 6.25% (levels 2, 4), one replicate; ResNet-20 on the given CIFAR root, 20
iterations, density 64% (level 2), 6-step Gem-Miner searches: a pipeline check (ResNet
is slow on a CPU; --models=lenet for LeNet alone).
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.experiments import lenet_fisher_vs_magnitude as lenet  # noqa: E402
from open_lth.experiments import resnet_fisher_vs_magnitude as resnet  # noqa: E402
from open_lth.experiments.jobs import sweep  # noqa: E402

AT_INIT = ("magnitude_at_init", "snip", "grasp", "synflow", "gem_miner")
METHODS = ("imp_reset", "imp_rewind", "fisher", "random", *AT_INIT)
FULL = {
    "lenet": {
        "fraction": "0.2",
        "levels": [3, 6, 9, 12, 15, 18],
        "rewind": "500it",
        "gem_miner": ["--gem_miner_steps=4ep", "--gem_miner_prune_every=200it"],
    },
    "resnet": {
        "fraction": "0.2",
        "levels": [4, 8, 12, 16, 20],
        "rewind": "2000it",
        "gem_miner": [],
    },
}
QUICK = {
    "lenet": {
        "fraction": "0.5",
        "levels": [2, 4],
        "rewind": "50it",
        "gem_miner": ["--gem_miner_steps=6it", "--gem_miner_prune_every=2it"],
    },
    "resnet": {
        "fraction": "0.2",
        "levels": [2],
        "rewind": "5it",
        "gem_miner": ["--gem_miner_steps=6it", "--gem_miner_prune_every=2it"],
    },
}


def add_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Pruning at initialization")
    group.add_argument("--models", default="lenet,resnet", help="lenet, resnet or both")
    group.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    group.add_argument("--cifar_dataset_root", help="CIFAR-10's folder (default: --dataset_root)")
    group.add_argument("--replicates", help="replicates, e.g. 1-3,7 (default 1-3; quick 1)")
    group.add_argument("--levels", help="the densities 0.8^L (quick 0.5^L) as levels, e.g. 6,12,18")
    group.add_argument("--training_steps", help="every training this long (default: the studies')")
    group.add_argument("--no_shuffle", action="store_true", help="leave out the shuffle ablation")


def density(fraction: str, level: int) -> str:
    """What `level` levels of `fraction` keep, as the lottery resolves it (exact)."""
    return repr(float((1 - Fraction(fraction)) ** level))


def _plan(args: argparse.Namespace, model: str) -> dict:
    plan = dict((QUICK if args.quick else FULL)[model])
    if args.levels:
        plan["levels"] = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    return plan


def _study_args(args: argparse.Namespace, model: str, plan: dict) -> argparse.Namespace:
    values = dict(vars(args))
    if model == "resnet" and args.cifar_dataset_root:
        values["dataset_root"] = args.cifar_dataset_root
    values.update(levels=max(plan["levels"]), rewind=plan["rewind"], strategies=None)
    values.update(pruning_fraction=float(plan["fraction"]), replicates=args.replicates)
    return argparse.Namespace(**values)


def _with_steps(run: sweep.Run, steps: str | None) -> sweep.Run:
    if not steps:
        return run
    return [f"--training_steps={steps}" if a.startswith("--training_steps=") else a for a in run]


def one_shot_run(base: sweep.Run, strategy: str, target: str, search: list[str]) -> sweep.Run:
    """A study's lottery command turned one-shot: --target_density instead of levels;
    Gem-Miner scores every layer (no --pruning_layers_to_ignore), as published."""
    drop = ("--levels=", "--pruning_scope=")
    if strategy == "gem_miner":
        drop += ("--pruning_layers_to_ignore=",)
    run = [a for a in base if not a.startswith(drop)]
    return [*run, f"--target_density={target}", *(search if strategy == "gem_miner" else [])]


def shuffled(lottery: sweep.Run, levels: str) -> sweep.Run:
    """The shuffle ablation on `levels` of a lottery run."""
    flags = [a for a in lottery[1:] if not a.startswith("--levels=")]
    return ["lottery_branch", "randomly_prune", f"--levels={levels}", *flags,
            "--random_mask_scope=layerwise"]  # fmt: skip


def build(args: argparse.Namespace) -> sweep.Phases:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(
            f"error: unknown --methods {', '.join(unknown)}; known: {', '.join(METHODS)}"
        )
    lotteries: list[sweep.Run] = []
    branches: list[sweep.Run] = []
    for model, study in (("lenet", lenet), ("resnet", resnet)):
        if model not in args.models.split(","):
            continue
        plan = _plan(args, model)
        study_args = _study_args(args, model, plan)
        replicates = args.replicates or ("1" if args.quick else "1-3")
        imp_levels = ",".join(str(L) for L in plan["levels"])
        for replicate in sweep.replicates(replicates):
            iterative = {
                "imp_reset": ("magnitude", []),
                "imp_rewind": ("magnitude", [f"--rewinding_steps={plan['rewind']}"]),
                "fisher": ("fisher", []),
                "random": ("random", []),
            }
            for method, (strategy, start) in iterative.items():
                if method in methods:
                    run = _with_steps(
                        study.lottery_run(study_args, strategy, start, replicate),
                        args.training_steps,
                    )
                    lotteries.append(run)
                    if method == "imp_reset" and not args.no_shuffle:
                        branches.append(shuffled(run, imp_levels))
            for strategy in AT_INIT:
                if strategy not in methods:
                    continue
                base = study.lottery_run(study_args, strategy, [], replicate)
                for level in plan["levels"]:
                    target = density(plan["fraction"], level)
                    run = one_shot_run(base, strategy, target, plan["gem_miner"])
                    run = _with_steps([*run, "--levels=1"], args.training_steps)
                    lotteries.append(run)
                    if not args.no_shuffle:
                        branches.append(shuffled(run, "1"))
    return [lotteries, branches] if branches else [lotteries]


if __name__ == "__main__":
    sys.exit(sweep.main(build, __doc__, extra_args=add_args))
