"""A sweep's lottery runs grouped into packs (`main.py pack`), so that the runs of one
GPU train K at a time as one stacked network instead of one after the other.

Runs that can share a step (the same model, data, training, rewinding step, levels and
job settings; see open_lth.lottery.pack) are grouped in the sweep's order, and each group
is cut into as few packs of at most `size` as it takes, of sizes as equal as they can
be (18 runs, size 8: 6, 6, 6 rather than 8, 8, 2, which would leave the GPU a small
last pack); every other run stays as it is. A pack's command is

    main.py pack 'lottery --flags of run 1' 'lottery --flags of run 2' ...
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

Run = list[str]


@dataclass
class Entry:
    """One command of a phase: a run alone, or a pack of `members`."""

    run: Run
    location: Path | None
    members: list[tuple[Run, Path | None]]


# The run folders of each pack command made in this process, so that what the executors
# record (experiments/jobs/status.py) is per run, not per pack.
_MEMBERS: dict[tuple[str, ...], list[tuple[Run, Path | None]]] = {}


def members(run: Run, location: Path | None) -> list[tuple[Run, Path | None]]:
    """The runs (and their folders) a command trains: a pack's, else itself."""
    return _MEMBERS.get(tuple(run), [(run, location)])


def default_size(runs: list[Run]) -> int:
    """8 runs a pack on CUDA, where one small run leaves the GPU idle; 1 on a CPU, which
    a single run already keeps busy."""
    import torch

    on_cpu = any(arg in ("--device=cpu", "cpu") for run in runs for arg in run)
    return 8 if torch.cuda.is_available() and not on_cpu else 1


def pack_command(runs: list[Run]) -> Run:
    return ["pack", *(shlex.join(run) for run in runs)]


def group(todo: list[tuple[Run, Path | None]], size: int) -> list[Entry]:
    """The phase's runs as commands: compatible lottery runs in packs of up to `size`."""
    if size <= 1:
        return [Entry(run, location, [(run, location)]) for run, location in todo]
    from open_lth import cli
    from open_lth.foundations.errors import UserError
    from open_lth.lottery import pack as pack_runner
    from open_lth.main import load_plugins

    load_plugins()

    groups: list[tuple[object, list[tuple[Run, Path | None]]]] = []
    alone: list[Entry] = []
    for run, location in todo:
        runner = None
        if run and run[0] == "lottery" and location is not None:
            try:
                runner, _ = cli.parse(run)
            except UserError:
                runner = None  # main.py will say what is wrong when the run starts
        if runner is None or not hasattr(runner, "desc"):
            alone.append(Entry(run, location, [(run, location)]))
            continue
        for first, members in groups:
            if pack_runner.differences(first, runner) is None:
                members.append((run, location))
                break
        else:
            groups.append((runner, [(run, location)]))
    entries = []
    for _, members in groups:
        count = -(-len(members) // size)
        for i in range(count):
            part = members[i * len(members) // count : (i + 1) * len(members) // count]
            run = part[0][0] if len(part) == 1 else pack_command([r for r, _ in part])
            _MEMBERS[tuple(run)] = part
            entries.append(Entry(run, part[0][1], part))
    return entries + alone
