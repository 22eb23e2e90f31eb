"""Run descriptions: the hparams groups of one kind of run, and the name they hash to.

The name is `<prefix>_<md5 of the non-default hparams>`: adding a field with a no-op
default leaves it unchanged (tests pin a few names)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

from open_lth.foundations import formats, paths
from open_lth.foundations.hparams import DefaultHparams, Hparams
from open_lth.foundations.store import atomic_write_json, atomic_write_text


@dataclasses.dataclass
class Desc:
    """A dataclass whose fields are Hparams groups, in the order they are hashed."""

    prefix: ClassVar[str]

    def groups(self) -> list[Hparams]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @classmethod
    def group_types(cls) -> dict[str, type[Hparams]]:
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        return {name: _resolve(cls, t) for name, t in hints.items()}

    @property
    def hashname(self) -> str:
        text = ";".join(str(group) for group in self.groups())
        digest = hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
        return f"{self.prefix}_{digest}"

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None:
        for name, group_type in cls.group_types().items():
            group_type.add_args(parser, defaults=getattr(defaults, name, None))

    @classmethod
    def create_from_args(cls, args: argparse.Namespace) -> Desc:
        return cls(**{n: t.create_from_args(args) for n, t in cls.group_types().items()})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: getattr(self, f.name).to_dict() for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, dict[str, Any]]) -> Desc:
        return cls(**{n: t.from_dict(values[n]) for n, t in cls.group_types().items()})

    @classmethod
    def load(cls, path: Path) -> Desc:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def display(self) -> str:
        return "\n".join(group.display() for group in self.groups())

    def save(self, directory: Path) -> None:
        """hparams.json (the source of truth, with the format of the rules the folder
        is made under) and hparams.txt (for people)."""
        record = {**self.to_dict(), formats.KEY: formats.FORMAT}
        atomic_write_json(paths.hparams(directory), record)
        atomic_write_text(Path(directory) / "hparams.txt", self.display() + "\n")


def _resolve(cls: type, annotation: Any) -> type[Hparams]:
    if isinstance(annotation, str):
        import sys

        return eval(annotation, vars(sys.modules[cls.__module__]))  # noqa: S307
    return annotation
