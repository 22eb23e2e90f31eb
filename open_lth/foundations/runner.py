"""A subcommand of main.py: `python main.py <name> [--flags]`."""

from __future__ import annotations

import abc
import argparse
from pathlib import Path
from typing import ClassVar

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
