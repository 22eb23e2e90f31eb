"""`main.py report --root=<results> --out=<folder>`: every figure and table the runs
in a results root allow, one section per setting (what the runs of a figure share),
and an index.md that shows them. A figure the runs do not allow is skipped with a
printed note (and listed in the index); unfinished runs are drawn where they have
data and listed with their last logged iteration.

This module only registers the subcommand; pandas, matplotlib and the drawing are
imported when a report is written (`experiments/analysis/report_writer.py`), so that every
other main.py command starts as fast as before."""

from __future__ import annotations

import argparse
from pathlib import Path

from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DefaultHparams
from open_lth.foundations.runner import Runner


@registries.subcommands.register("report")
class ReportRunner(Runner):
    description = "Figures, tables and an index.md of the runs in a results root."

    def __init__(self, root: Path, out: Path, options: argparse.Namespace) -> None:
        self.root = root
        self.out = out
        self.options = options

    @staticmethod
    def add_args(parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None:
        group = parser.add_argument_group("Report")
        group.add_argument("--root", help="the results root to read (default: the platform's)")
        group.add_argument("--out", help="where the report is written (default: <root>/report)")
        group.add_argument("--platform", default="local", help="whose default root to read")
        group.add_argument(
            "--histogram_level",
            type=int,
            default=1,
            help="the level whose pruned weights Figure 1 shows (default 1)",
        )
        group.add_argument(
            "--table_level", type=int, help="level of the layer-wise table (default: deepest)"
        )
        group.add_argument(
            "--table_percent",
            type=float,
            help="or the level nearest this %% of weights remaining, e.g. 0.3",
        )
        group.add_argument(
            "--percents",
            help="%% remaining of the lines of Figure 3, e.g. 100,51.2,21,7 (default: 6 spread)",
        )
        group.add_argument("--default_hparams", metavar="MODEL", help="accepted and ignored")
        group.add_argument(
            "--display_output_location", action="store_true", help="print --out and exit"
        )
        group.add_argument("--quiet", action="store_true", help="print only notes and the end")

    @classmethod
    def create_from_args(cls, args: argparse.Namespace) -> ReportRunner:
        if args.root:
            root = Path(args.root).expanduser()
        else:
            root = registries.platforms.get(args.platform).default_root()
        if not root.is_dir():
            raise UserError(f"--root {root} does not exist or is not a folder")
        if args.histogram_level < 1:
            raise UserError(f"--histogram_level must be 1 or more, got {args.histogram_level}")
        if args.percents:
            try:
                args.percents = [float(p) for p in args.percents.split(",")]
            except ValueError:
                raise UserError(
                    f"--percents must be numbers like 100,21,7; got {args.percents}"
                ) from None
        out = Path(args.out).expanduser() if args.out else root / "report"
        return cls(root, out, args)

    @property
    def output_location(self) -> Path:
        return self.out

    def run(self) -> None:
        from open_lth.experiments.analysis import load
        from open_lth.experiments.analysis.report_writer import Report

        table = load.runs(self.root)
        if table.empty:
            raise UserError(
                f"no runs in {self.root}: expected train_<hash>/ or lottery_<hash>/ folders"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        report = Report(self.root, self.out, table, self.options)
        report.write()
        print(
            f"report: {report.figure_count} figures, {len(report.skipped)} skipped; "
            f"{self.out / 'index.md'}"
        )
