"""`python main.py <subcommand> [--flags]`: flags are generated from the hparams.

Parsing is two passes: the first finds `--default_hparams` so that the second can
show and use that model's defaults (which is what `--help` then prints)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from open_lth.foundations import distributed, registries
from open_lth.foundations.errors import TrainingDiverged, UserError
from open_lth.foundations.runner import Runner
from open_lth.training.signals import Interrupted


class Parser(argparse.ArgumentParser):
    """No abbreviations, and a mistake is one line (an exception main turns into it)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        if "arguments are required: --" in message:
            message += "; or start from a model's defaults with --default_hparams=MODEL"
        raise UserError(f"{message} (see: {self.prog} --help)")


def usage() -> str:
    lines = ["usage: python main.py <subcommand> [--flags]  (--help after a subcommand)", ""]
    for name in registries.subcommands.names():
        lines.append(f"  {name:<16} {registries.subcommands.get(name).description}")
    return "\n".join(lines)


def parse(argv: list[str]) -> tuple[Runner, argparse.Namespace]:
    """The runner of a command line (`["lottery", "--flags", ...]`), every value checked
    and nothing written yet."""
    runner_type = registries.subcommands.get(argv[0])
    rest = argv[1:]
    prog = f"main.py {argv[0]}"
    if hasattr(runner_type, "select"):  # a subcommand with names of its own (lottery_branch)
        runner_type, rest = runner_type.select(rest)
        prog += f" {argv[1]}"

    pre = Parser(add_help=False)
    pre.add_argument("--default_hparams")
    known, _ = pre.parse_known_args(rest)
    defaults = None
    if known.default_hparams:
        family = registries.models.get(known.default_hparams)
        defaults = family.default_hparams(known.default_hparams)

    parser = Parser(prog=prog, description=runner_type.description)
    runner_type.add_args(parser, defaults)
    args = parser.parse_args(rest)
    return runner_type.create_from_args(args), args


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    runner, args = parse(argv)
    if args.display_output_location:
        for location in runner.output_locations:  # one folder a line (a pack has several)
            print(location)
        return 0
    runner.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a user's mistake is one line on stderr and exit status 2."""
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        if distributed.is_primary():  # under torchrun, one line from rank 0
            print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"{e}; run the same command again to resume", file=sys.stderr)
        return 128 + e.signum
