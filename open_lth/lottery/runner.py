"""`main.py lottery`: iterative pruning. Per level L = 0..levels: prune level L-1's
trained weights into a mask (level 0: dense), set the starting weights (reset,
rewind or re-initialize), evaluate the untrained masked network (the supermask),
train, save. Every stage is skipped when done and resumes when interrupted, and
`--levels` may be raised later on the same run."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from open_lth.foundations import paths, registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DefaultHparams
from open_lth.foundations.masks import Mask, apply_mask
from open_lth.foundations.model import Model
from open_lth.foundations.runner import Runner
from open_lth.foundations.store import RunLock
from open_lth.lottery.desc import LotteryDesc
from open_lth.lottery.levels import Levels, check_format, level_dir, parse_levels, supermask_metrics
from open_lth.training import stage
from open_lth.training.job import Job, add_job_args, create_job
from open_lth.training.trainer import Seeds


@registries.subcommands.register("lottery")
class LotteryRunner(Runner):
    description = "Iterative pruning (IMP): train, prune, reset or rewind, repeat."

    def __init__(self, desc: LotteryDesc, job: Job, levels: int, summary: bool) -> None:
        self.desc = desc
        self.job = job
        self.levels = levels
        self.summary = summary

    @staticmethod
    def add_args(parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None:
        add_job_args(parser)
        group = parser.add_argument_group("Lottery job")
        group.add_argument(
            "--levels", type=int, default=0, help="prune this many times (default 0)"
        )
        group.add_argument("--summary", action="store_true", help="print the run's table and exit")
        group.add_argument(
            "--replicates",
            help="train these replicates together as one pack, e.g. 1-8 or 1-3,7 (see `pack`)",
        )
        LotteryDesc.add_args(parser, defaults)

    @classmethod
    def create_from_args(cls, args: argparse.Namespace) -> Runner:
        if args.replicates is not None:
            return cls.create_pack(args)
        desc = LotteryDesc.create_from_args(args)
        check_names(desc)
        if args.levels < 0:
            raise UserError(f"--levels must be a non-negative integer, got {args.levels}")
        strategy = desc.strategy_type
        desc.strategy = strategy.resolve(desc.strategy, args.levels, desc.pruning)
        levels = min(args.levels, 1) if strategy.one_shot else args.levels
        return cls(desc, create_job(args), levels, args.summary)

    @classmethod
    def create_pack(cls, args: argparse.Namespace) -> Runner:
        """--replicates: one run per replicate, trained together (open_lth.lottery.pack)."""
        from open_lth.lottery.pack import PackRunner  # it builds on this module

        if args.replicate is not None:
            raise UserError(
                "--replicates and --replicate: give one of them (--replicates=1-3,7 trains "
                "those replicates together as a pack)"
            )
        replicates = parse_levels(args.replicates, "--replicates")
        runs = [
            argparse.Namespace(**{**vars(args), "replicates": None, "replicate": r})
            for r in replicates
        ]
        return PackRunner([cls.create_from_args(run) for run in runs])

    @property
    def output_location(self) -> Path:
        return paths.replicate(self.job.platform.root / self.desc.hashname, self.job.replicate)

    def run(self) -> None:
        out = self.output_location
        check_format(self.desc, out)
        if self.summary:
            print(summary_table(out))
            return
        if self.finished():
            print(f"already finished; results in {out}")
            print(summary_table(out))
            return
        levels = Levels(
            self.desc, self.job.replicate, out, stage.load_data(self.desc.dataset, self.job)
        )
        stage.check_training_steps(self.desc.training, levels.data)
        levels.check(levels.new_model())
        if not self.job.options.quiet:
            print(self.desc.display())
            print(f"Output location: {out}")
        with RunLock(out):
            for level in range(self.levels + 1):
                self.run_level(levels, level)
        print(summary_table(out))

    def finished(self) -> bool:
        out = self.output_location
        return all(stage.is_done(level_dir(out, L)) for L in range(self.levels + 1))

    def start_level(self, levels: Levels, level: int) -> LevelStart:
        """Level `level` set up to train (alone or in a pack): its description saved
        first, so that the folder records the rules (format) it is made under; its mask;
        its starting weights, masked, on the device; the supermask accuracy; the seeds."""
        out = level_dir(levels.replicate_dir, level)
        self.desc.save(out)
        mask = levels.mask(level)
        model, start = levels.starting_model(level)
        model.to(self.job.platform.device)
        apply_mask(model, mask)
        supermask = supermask_metrics(model, levels.data, self.desc.training.bf16)
        seeds = stage.default_seeds(self.desc.training, self.job.replicate)
        return LevelStart(out, model, start, mask, supermask, seeds)

    def run_level(self, levels: Levels, level: int) -> None:
        if stage.is_done(level_dir(levels.replicate_dir, level)):
            return
        s = self.start_level(levels, level)
        rewind = levels.rewind
        stage.run_stage(
            s.out,
            s.model,
            self.desc.training,
            levels.data,
            s.seeds,
            self.job,
            mask=s.mask,
            start_iteration=s.start,
            save_iterations=(rewind,) if level == 0 and rewind else (),
            start_metrics=s.supermask,
        )
        if not self.job.options.quiet:
            done = stage.read_summary(s.out)
            print(f"level {level}: test accuracy {done['final_test_accuracy']:.4f}")


@dataclass
class LevelStart:
    out: Path
    model: Model
    start: int  # the iteration its training starts at
    mask: Mask
    supermask: dict[str, float]
    seeds: Seeds


def check_names(desc: LotteryDesc) -> None:
    registries.models.get(desc.model.model_name)
    registries.datasets.get(desc.dataset.dataset_name)
    registries.initializers.get(desc.model.model_init)


def summary_table(replicate_dir: Path) -> str:
    """Level, % of weights remaining, best and final test accuracy, supermask accuracy
    (with re-estimated BatchNorm statistics too where the model has BatchNorm)."""
    rows, bn, rewound = [], False, set()
    level = 0
    while (level_dir(replicate_dir, level) / "sparsity_report.json").exists():
        out = level_dir(replicate_dir, level)
        density = json.loads((out / "sparsity_report.json").read_text())["density"]
        s = stage.read_summary(out) if stage.is_done(out) else None
        if s is not None:
            bn |= "supermask_test_accuracy_bn_recomputed" in s
            if s.get("start_iteration"):
                rewound.add(s["start_iteration"])
        rows.append((level, density, s))
        level += 1
    if level == 0:
        return f"no levels yet in {replicate_dir}"
    keys = ["best_test_accuracy", "final_test_accuracy", "supermask_test_accuracy"]
    header = f"{'level':>5} {'remaining %':>12} {'best acc':>9} {'final acc':>9} {'supermask':>9}"
    if bn:
        keys.append("supermask_test_accuracy_bn_recomputed")
        header += f" {'supermask (BN re-estimated)':>27}"
    lines = [header]
    for level, density, s in rows:
        if s is None:
            cells = f"{'(not finished)':>29}"
        else:
            cells = " ".join(f"{s.get(k, float('nan')):>9.4f}" for k in keys[:3])
            if bn:
                cells += f" {s.get(keys[3], float('nan')):>27.4f}"
        lines.append(f"{level:>5} {100 * density:>12.2f} {cells}")
    if rewound:
        k = ", ".join(f"{i}it" for i in sorted(rewound))
        lines.append(
            f"(levels past 0 start from the dense run's weights at step {k}: their supermask "
            "is the masked network with those weights, not an untrained one)"
        )
    return "\n".join(lines)
