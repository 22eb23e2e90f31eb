"""`main.py lottery`: iterative pruning. Per level L = 0..levels: prune level L-1's
trained weights into a mask (level 0: dense), set the starting weights (reset,
rewind or re-initialize), evaluate the untrained masked network (the supermask),
train, save. Every stage is skipped when done and resumes when interrupted, and
`--levels` may be raised later on the same run."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from open_lth.foundations import paths, registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DefaultHparams
from open_lth.foundations.masks import Mask, apply_mask
from open_lth.foundations.model import Model
from open_lth.foundations.runner import Runner
from open_lth.lottery.desc import LotteryDesc
from open_lth.lottery.levels import Levels, level_dir, parse_levels, supermask_metrics
from open_lth.lottery.pack import PackRunner
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
        PackRunner([self], alone=True).run()  # a lone run is a pack of one

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
