"""Finding the lottery run a branch hangs off: from its folder (`--lottery=<path>`, whose
hparams.json stands for all the lottery's flags), and, where the flags given match no
run, the closest run under the root and the flags that differ."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from open_lth.foundations import formats, paths
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import given
from open_lth.lottery.desc import LotteryDesc
from open_lth.lottery.levels import level_dir

_RUN = re.compile(rf"{LotteryDesc.prefix}_[0-9a-f]{{32}}")


def lottery_flags() -> set[str]:
    """The names of every flag of a lottery's description (its groups and strategies')."""
    parser = argparse.ArgumentParser(add_help=False)
    LotteryDesc.add_args(parser, None)
    return {action.dest for action in parser._actions}


def recorded(run: Path, replicate: int | None = None) -> Path | None:
    """A lottery run's hparams.json: level 0's, saved before anything else of a replicate
    (the given replicate's, else the first replicate's that has one)."""
    replicates = [folder for _, folder in paths.numbered(run, "replicate")]
    if replicate is not None:
        replicates = [paths.replicate(run, replicate)]
    for folder in replicates:
        path = paths.hparams(level_dir(folder, 0))
        if path.is_file():
            return path
    return None


def from_folder(args: argparse.Namespace) -> LotteryDesc:
    """The description in `--lottery`'s hparams.json; sets `args.root` to the folder's
    root and `args.replicate` to a `replicate_<r>` folder's r."""
    mixed = sorted(given(args) & lottery_flags())
    if mixed or args.default_hparams:
        flag = f"--{mixed[0]}" if mixed else "--default_hparams"
        raise UserError(
            f"--lottery reads the lottery's hparams from its folder; drop {flag} (or drop "
            "--lottery and give all the lottery's flags)"
        )
    run = Path(args.lottery).expanduser()
    replicate = None
    if paths.number(run, "replicate") is not None:
        replicate, run = paths.number(run, "replicate"), run.parent
    if not run.is_dir() or not _RUN.fullmatch(run.name):
        raise UserError(
            f"--lottery={args.lottery} is not a lottery run's folder: give its "
            f"{LotteryDesc.prefix}_<hash> folder or its replicate_<r> folder"
        )
    path = recorded(run, replicate)
    if path is None:
        raise UserError(f"{run} has no trained level to branch from (no level 0 hparams.json)")
    try:
        desc = LotteryDesc.load(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if desc.hashname != run.name:
        raise UserError(f"{path} describes {desc.hashname}, not its folder {run.name}")
    if args.root is not None and Path(args.root).expanduser().resolve() != run.parent.resolve():
        raise UserError(f"--root={args.root} is not the root of --lottery={args.lottery}")
    if replicate is not None and args.replicate not in (None, replicate):
        raise UserError(f"--replicate={args.replicate} is not --lottery's replicate_{replicate}")
    args.root = str(run.parent)
    args.replicate = replicate if replicate is not None else args.replicate
    return desc


def differences(mine: dict[str, dict], theirs: dict[str, dict]) -> list[str]:
    """`--flag=theirs (yours: mine)` for each field whose values differ."""
    found = []
    for group in sorted(set(mine) | set(theirs) - {formats.KEY}):
        a, b = mine.get(group) or {}, theirs.get(group) or {}
        for field in sorted(set(a) | set(b)):
            if a.get(field) != b.get(field):
                found.append(f"--{field}={_shown(b.get(field))} (yours: {_shown(a.get(field))})")
    return found


def _shown(value: Any) -> str:
    return "(not set)" if value is None else str(value)


def no_such_run(root: Path, desc: LotteryDesc) -> UserError:
    """The error for flags that match no lottery run under the root: the closest one
    (fewest differing fields) and how it differs."""
    closest: tuple[int, str, list[str]] | None = None
    for run in sorted(p for p in Path(root).glob(f"{LotteryDesc.prefix}_*") if p.is_dir()):
        path = recorded(run)
        try:
            theirs = json.loads(path.read_text()) if path else None
        except (OSError, ValueError):
            continue  # unreadable: not a candidate
        if isinstance(theirs, dict):
            differ = differences(desc.to_dict(), theirs)
            if closest is None or len(differ) < closest[0]:
                closest = (len(differ), run.name, differ)
    message = f"no lottery run with these flags under {root}"
    if closest is None:
        return UserError(
            f"{message}, which holds no lottery run; run the lottery first: python main.py "
            "lottery <the same flags> --levels=<the highest level to branch from>"
        )
    _, name, differ = closest
    shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
    return UserError(
        f"{message}; the closest is {name} (differs in: {shown}); to branch from it, give "
        f"--lottery={Path(root) / name} instead of the lottery's flags"
    )
