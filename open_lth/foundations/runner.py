"""A subcommand of main.py: `python main.py <name> [--flags]`, and the parsing of its
command line into a runner (here, not in the CLI, so that a pack parses each of its
runs' command lines without the core importing open_lth.cli).

Parsing is two passes: the first finds `--default_hparams` so that the second can
show and use that model's defaults (which is what `--help` then prints)."""

from __future__ import annotations

import abc
import argparse
from pathlib import Path
from typing import ClassVar, NoReturn

from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DefaultHparams


class Runner(abc.ABC):
    """Registered with `@registries.subcommands.register(name)`."""

    description: ClassVar[str]

    @staticmethod
    @abc.abstractmethod
    def add_args(parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None: ...

    @classmethod
    @abc.abstractmethod
    def create_from_args(cls, args: argparse.Namespace) -> Runner:
        """Build the runner and check every value; nothing is written yet."""

    @property
    @abc.abstractmethod
    def output_location(self) -> Path: ...

    @property
    def output_locations(self) -> list[Path]:
        """What --display_output_location prints, one folder a line."""
        return [self.output_location]

    @abc.abstractmethod
    def run(self) -> None: ...


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
