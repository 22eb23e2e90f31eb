"""`main.py lottery_branch <name> --levels=0,3-5 <the lottery's flags> <the branch's
flags>`: run a branch on trained levels of a lottery run. `--lottery=<its folder>` reads
the lottery's hparams.json instead of its flags (open_lth.lottery.branches.find)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import ClassVar

from open_lth.foundations import formats, paths, registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DefaultHparams
from open_lth.foundations.runner import Runner
from open_lth.foundations.store import RunLock, atomic_write_json
from open_lth.lottery.branches import find
from open_lth.lottery.branches.base import Branch, BranchContext
from open_lth.lottery.desc import LotteryDesc
from open_lth.lottery.levels import Levels, check_format, level_dir, parse_levels
from open_lth.lottery.runner import check_names
from open_lth.training import stage
from open_lth.training.job import Job, add_job_args, create_job


def branch_list() -> str:
    lines = ["branches (python main.py lottery_branch <name> --help):"]
    for name in registries.branches.names():
        lines.append(f"  {name:<22} {registries.branches.get(name).description}")
    return "\n".join(lines)


@registries.subcommands.register("lottery_branch")
class BranchRunner(Runner):
    description = "Run a branch (e.g. instability analysis) on levels of a lottery run."
    branch_name: ClassVar[str] = ""
    from_folder: ClassVar[bool] = False  # --lottery given: no lottery flag is required

    def __init__(self, desc: LotteryDesc, branch: Branch, job: Job, levels: list[int]) -> None:
        self.desc, self.branch, self.job, self.levels = desc, branch, job, levels

    @classmethod
    def select(cls, argv: list[str]) -> tuple[type[BranchRunner], list[str]]:
        """The branch is named right after the subcommand."""
        if not argv or argv[0].startswith("-"):
            raise UserError("name a branch after lottery_branch; " + branch_list())
        if argv[0] not in registries.branches:
            raise UserError(f"unknown branch '{argv[0]}'; " + branch_list())
        from_folder = any(a == "--lottery" or a.startswith("--lottery=") for a in argv)
        attributes = {"branch_name": argv[0], "from_folder": from_folder}
        return type(f"{argv[0]}_runner", (cls,), attributes), argv[1:]

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None:
        add_job_args(parser)
        parser.add_argument(
            "--levels", required=True, help="the lottery levels to branch from, e.g. 0,3-5"
        )
        parser.add_argument(
            "--lottery",
            metavar="PATH",
            help="the lottery's folder (lottery_<hash> or its replicate_<r>) instead of its flags",
        )
        before = len(parser._actions)
        LotteryDesc.add_args(parser, defaults)
        if cls.from_folder:  # the values come from the folder's hparams.json
            for action in parser._actions[before:]:
                action.required = False
        registries.branches.get(cls.branch_name).hparams_type.add_args(parser)

    @classmethod
    def create_from_args(cls, args: argparse.Namespace) -> BranchRunner:
        if args.lottery is not None:
            desc = find.from_folder(args)  # it also sets args.root and args.replicate
        else:
            desc = LotteryDesc.create_from_args(args)
        check_names(desc)
        strategy = desc.strategy_type
        levels = parse_levels(args.levels)
        # The lottery resolved its strategy's level-dependent defaults from its own
        # --levels, which a branch does not know: it must be told them.
        resolved = strategy.resolve(desc.strategy, max(levels), desc.pruning)
        if resolved != desc.strategy:
            given = desc.strategy.to_dict()
            missing = [f"--{k}" for k, v in resolved.to_dict().items() if given[k] != v]
            raise UserError(
                f"give the lottery's {', '.join(missing)} (see its hparams.json): a branch "
                f"cannot derive it from --levels"
            )
        branch_type = registries.branches.get(cls.branch_name)
        branch = branch_type(branch_type.hparams_type.create_from_args(args))
        return cls(desc, branch, create_job(args), levels)

    @property
    def replicate_dir(self) -> Path:
        return paths.replicate(self.job.platform.root / self.desc.hashname, self.job.replicate)

    def branch_dir(self, level: int) -> Path:
        text = str(self.branch.hparams)
        digest = hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
        return level_dir(self.replicate_dir, level).parent / f"{self.branch_name}_{digest}"

    @property
    def output_location(self) -> Path:
        return self.branch_dir(self.levels[0])

    def run(self) -> None:
        missing = [L for L in self.levels if not stage.is_done(level_dir(self.replicate_dir, L))]
        if missing and not self.replicate_dir.parent.exists():
            raise find.no_such_run(self.job.platform.root, self.desc)
        if missing:
            raise UserError(
                f"level {missing[0]} of {self.replicate_dir} is not trained yet; run the lottery "
                f"first: python main.py lottery <the same flags> --levels={max(self.levels)}"
            )
        check_format(self.desc, self.replicate_dir)
        data = stage.load_data(self.desc.dataset, self.job)
        options = self.job.options
        levels = Levels(
            self.desc, self.job.replicate, self.replicate_dir, data, options.quiet,
            options.cuda_graphs,
        )  # fmt: skip
        contexts = [BranchContext(levels, L, self.branch_dir(L), self.job) for L in self.levels]
        for ctx in contexts:
            self.branch.check(ctx)
            made = formats.of(ctx.out)
            if made is not None and made < formats.FORMAT:
                what = self.branch.changed_since(made, ctx)
                if what:
                    raise formats.refuse(ctx.out, made, what)
        for ctx in contexts:
            if self.branch.is_done(ctx.out):
                print(f"level {ctx.level}: already finished; results in {ctx.out}")
                continue
            with RunLock(ctx.out):
                record = {
                    "branch_name": self.branch_name,
                    "branch": self.branch.hparams.to_dict(),
                    "lottery": self.desc.to_dict(),
                    "level": ctx.level,
                    "replicate": self.job.replicate,
                    # In iterations, whatever unit the flags used: a loader knows k for
                    # a branch still running.
                    "start_iteration": self.branch.start_iteration(ctx),
                    formats.KEY: formats.FORMAT,
                }
                atomic_write_json(paths.hparams(ctx.out), record)
                line = self.branch.run(ctx)
            print(f"level {ctx.level}: {line}; results in {ctx.out}")
