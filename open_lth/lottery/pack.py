"""`main.py pack`: K lottery runs trained together, level by level, as one stacked
network (open_lth.training.stacked), so that K small steps become one step that fills a GPU.

    python main.py pack 'lottery --default_hparams=mnist_lenet_300_100 --replicate=1' \\
                        'lottery --default_hparams=mnist_lenet_300_100 --replicate=2 \\
                                 --pruning_strategy=fisher'
    python main.py lottery --default_hparams=mnist_lenet_300_100 --replicates=1-8

Each run keeps its own replicate (initialization, data order, augmentation), strategy,
start mode (reset, rewind, re-init), mask and starting weights, and writes exactly the
folder it would write alone: metrics, weights, and its own unstacked checkpoint, so a
run of a killed pack resumes alone or in another pack. The runs must share the model,
the data set, the training hparams, the rewinding step, the number of levels and the
job settings; a pack of runs that cannot share a step is refused, naming the
difference. A run whose loss turns NaN stops alone; the others finish, and the command
then fails naming it.

A packed run is reproducible to the bit as a pack. Against the same run trained alone
it agrees to float tolerance: a stacked layer (grouped convolution, batched matmul)
sums in another order than the plain one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
from pathlib import Path
from typing import Any, Protocol

import torch

from open_lth.foundations import paths, registries
from open_lth.foundations.errors import TrainingDiverged, UserError
from open_lth.foundations.hparams import DefaultHparams
from open_lth.foundations.runner import Runner, parse
from open_lth.foundations.store import RunLock, atomic_write_json
from open_lth.lottery.desc import LotteryDesc
from open_lth.lottery.levels import Levels, check_format, level_dir, summary_table
from open_lth.training import checkpoints, stage
from open_lth.training.job import Job
from open_lth.training.loop import Loop
from open_lth.training.trainer import Copy


class PackMember(Protocol):
    """What a pack asks of each of its runs (open_lth.lottery.runner.LotteryRunner,
    which builds on this module: a lone run is a pack of one)."""

    desc: LotteryDesc
    job: Job
    levels: int
    summary: bool

    @property
    def output_location(self) -> Path: ...

    def finished(self) -> bool: ...

    def start_level(self, levels: Levels, level: int) -> Any: ...


FINISHED = "already finished; results in "


@registries.subcommands.register("pack")
class PackRunner(Runner):
    description = "Train several lottery runs together, level by level, as one stacked network."

    def __init__(self, members: list[PackMember], alone: bool = False) -> None:
        """`alone`: a lone `lottery` run, a pack of one that speaks as a lone run."""
        if not alone:
            check_compatible(members)
        self.members = members
        self.alone = alone

    @staticmethod
    def add_args(parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None:
        parser.add_argument(
            "runs",
            nargs="+",
            metavar="RUN",
            help="one lottery run a quoted argument: 'lottery --default_hparams=... --replicate=2'",
        )
        parser.add_argument(
            "--display_output_location", action="store_true", help="print the run folders and exit"
        )

    @classmethod
    def create_from_args(cls, args: argparse.Namespace) -> PackRunner:
        members: list[PackMember] = []
        for n, text in enumerate(args.runs, 1):
            try:
                argv = shlex.split(text)
            except ValueError as e:  # an unclosed quote
                raise UserError(f"pack: run {n}: {e} in '{text}'") from None
            if not argv or argv[0] != "lottery":
                raise UserError(
                    f"pack: each run is a quoted `lottery ...` command line; got '{text}'"
                )
            try:
                runner, _ = parse(argv)
            except UserError as e:
                raise UserError(f"pack: run {n}: {e}") from None
            members += runner.members if isinstance(runner, PackRunner) else [runner]
        return cls(members)

    @property
    def output_location(self) -> Path:
        return self.members[0].output_location

    @property
    def output_locations(self) -> list[Path]:
        return [m.output_location for m in self.members]

    def run(self) -> None:
        members = self.members
        for m in members:
            check_format(m.desc, m.output_location)
        if any(m.summary for m in members) or all(m.finished() for m in members):
            self.show_results("results in " if any(x.summary for x in members) else FINISHED)
            return
        first = members[0]
        data = stage.load_data(first.desc.dataset, first.job)
        data.end(first.desc.training)  # a user error before anything is written
        quiet, graphs = first.job.options.quiet, first.job.options.cuda_graphs
        levels = [
            Levels(m.desc, m.job.replicate, m.output_location, data, quiet, graphs) for m in members
        ]
        for lv in levels:
            lv.check(lv.new_model())
        in_turn = trains_in_turn(first.desc.model.model_name, data.train.device)
        if not quiet:
            self.announce(in_turn)
        failed: dict[int, str] = {}
        with contextlib.ExitStack() as locks:
            for m in members:
                locks.enter_context(RunLock(m.output_location))
            for level in range(first.levels + 1):
                todo = [
                    i
                    for i, lv in enumerate(levels)
                    if i not in failed and not stage.is_done(level_dir(lv.replicate_dir, level))
                ]
                failed.update(self.run_level(levels, level, todo, in_turn))
        self.show_results(None, skip=failed)
        if failed:
            named = "; ".join(f"{members[i].output_location}: {why}" for i, why in failed.items())
            raise TrainingDiverged(
                f"{len(failed)} of {len(members)} runs of the pack diverged ({named}); "
                "the others finished"
            )

    def announce(self, in_turn: bool) -> None:
        first = self.members[0]
        print(first.desc.display())
        if self.alone:
            print(f"Output location: {first.output_location}")
            return
        how = "one after the other (a convolutional model on a CPU)" if in_turn else None
        print(f"A pack of {len(self.members)} runs, trained {how or 'as one stacked network'}:")
        for m in self.members:
            print(f"  {m.output_location}  ({m.desc.pruning.pruning_strategy})")

    def show_results(self, lead: str | None, skip: dict[int, str] | None = None) -> None:
        """Each run's summary table under `lead` and its folder (None: the folder alone).
        A lone run shows its table alone, unless it had already finished."""
        for i, m in enumerate(self.members):
            if i in (skip or {}):
                continue
            head: str | None = f"{lead or ''}{m.output_location}"
            if self.alone and lead != FINISHED:
                head = None
            table = summary_table(m.output_location)
            print(table if head is None else f"{head}\n{table}")

    def write_summary(self, out: Path, level: int, quiet: bool) -> None:
        summary = stage.summarize(out)
        atomic_write_json(stage.summary_path(out), summary)
        if not quiet:
            run = "" if self.alone else f" {out.parent.parent.name}"
            print(f"level {level}{run}: test accuracy {summary['final_test_accuracy']:.4f}")

    def run_level(
        self, levels: list[Levels], level: int, todo: list[int], in_turn: bool
    ) -> dict[int, str]:
        """Prune, set up and train level `level` of the runs `todo` together (each alone
        when `in_turn`); returns the runs that diverged. Runs resuming from different
        iterations train in turn."""
        first = self.members[0]
        training = first.desc.training
        data = levels[0].data
        groups: dict[tuple, list[tuple[int, Copy, object]]] = {}
        at = align_checkpoints([level_dir(levels[i].replicate_dir, level) for i in todo])
        for i in todo:
            s = self.members[i].start_level(levels[i], level)
            if paths.weights(s.out, levels[i].end).exists() and at[s.out] is None:
                # Trained; killed before its summary (a pack writes it quietly).
                self.write_summary(s.out, level, quiet=not self.alone or first.job.options.quiet)
                continue
            # Runs train together when they are at the same point: fresh from the same
            # start, or resuming from checkpoints at the same iteration.
            key = (at[s.out] is not None, s.start if at[s.out] is None else at[s.out], s.start)
            key += (i,) if in_turn else ()
            groups.setdefault(key, []).append(
                (i, Copy(s.out, s.seeds, s.mask, s.supermask), s.model)
            )
        failed: dict[int, str] = {}
        rewind = levels[0].rewind
        for (_, _, start, *_), group in groups.items():
            # Each run checkpoints into its own folder (no shared checkpoint).
            saves = (rewind,) if level == 0 and rewind else ()
            copies = [c for _, c, _ in group]
            described = stage.describe(
                data, training, copies, first.job, start_iteration=start, save_iterations=saves
            )
            diverged = Loop([model for _, _, model in group], described).run()
            for j, (i, c, _) in enumerate(group):
                if j in diverged:
                    failed[i] = diverged[j]
                else:
                    self.write_summary(c.out, level, first.job.options.quiet)
        return failed


def trains_in_turn(model_name: str, device: torch.device) -> bool:
    """On a CPU a convolutional model's runs train one after the other, each exactly as
    alone: a CPU has no idle units for a stacked network to fill, and K stacked
    ResNet-20s there ran at 0.64x (K=2) and 0.46x (K=4) the rate of the runs in turn
    (their activations, K times larger, spill the caches; benchmarks/pack_speed.py).
    Stacked linear layers do pay on a CPU (16 LeNets 1.4x), and everything pays on a GPU."""
    return device.type == "cpu" and registries.models.get(model_name).is_convolutional


def _iteration(path: Path) -> int | None:
    """The iteration of the checkpoint at `path`, or of the one kept before it where that
    is what the run resumes from (open_lth.training.checkpoints.read)."""
    return int(checkpoints.read(path)[0]["iteration"]) if path.exists() else None


def align_checkpoints(outs: list[Path]) -> dict[Path, int | None]:
    """Put the runs of a killed pack back at one iteration, so that they resume as one
    pack, to the bits of a pack never killed. A pack replaces its K checkpoints one
    after the other; a kill in between leaves some runs one checkpoint ahead, and those
    roll back to the checkpoint they kept before it (`paths.previous_checkpoint`). A kill
    while the first K are written leaves some runs with none: the others drop their
    first (nothing kept before it) and all start the level afresh together. Returns the
    iteration each run then resumes from (None: it starts afresh)."""
    at = {out: _iteration(paths.checkpoint(out)) for out in outs}
    found = {it for it in at.values() if it is not None}
    if len(found) < 2 and not (found and None in at.values()):
        return at
    low = min(found)
    for out, it in at.items():
        if it is not None and it > low:
            previous = paths.previous_checkpoint(out)
            if _iteration(previous) == low:
                os.replace(previous, paths.checkpoint(out))
                at[out] = low
    if None in at.values():
        for out, it in at.items():
            if it is not None and it == low and not paths.previous_checkpoint(out).exists():
                paths.checkpoint(out).unlink()
                at[out] = None
    return at


def _job_settings(m: PackMember) -> dict[str, object]:
    platform, options = m.job.platform, m.job.options
    return {
        "--root": platform.root,
        "--dataset_root": platform.dataset_root,
        "--device": platform.device,
        "--eval_every": options.eval_every,
        "--checkpoint_every": options.checkpoint_every,
        "--cuda_graphs": options.cuda_graphs,
        "--pack_streams": options.pack_streams,
    }


def differences(a: PackMember, b: PackMember) -> str | None:
    """The first thing `a` and `b` must share and do not, as a flag and two values."""
    if a.desc.model.model_name != b.desc.model.model_name:
        return f"--model_name ({a.desc.model.model_name} vs {b.desc.model.model_name})"
    for group in ("dataset", "model", "training"):
        x, y = getattr(a.desc, group), getattr(b.desc, group)
        for field in dataclasses.fields(x):
            if getattr(x, field.name) != getattr(y, field.name):
                return f"--{field.name} ({getattr(x, field.name)} vs {getattr(y, field.name)})"
    rewind = (a.desc.lottery.rewinding_steps, b.desc.lottery.rewinding_steps)
    if rewind[0] != rewind[1]:
        return f"--rewinding_steps ({rewind[0]} vs {rewind[1]})"
    one_shot = [m.desc.strategy_type.one_shot for m in (a, b)]
    if one_shot[0] != one_shot[1]:
        kinds = ["one-shot" if o else "iterative" for o in one_shot]
        return f"the kind of strategy ({kinds[0]} vs {kinds[1]}: one-shot runs pack only together)"
    if a.levels != b.levels:
        return f"--levels ({a.levels} vs {b.levels})"
    for flag, value in _job_settings(a).items():
        if _job_settings(b)[flag] != value:
            return f"{flag} ({value} vs {_job_settings(b)[flag]})"
    return None


def check_compatible(members: list[PackMember]) -> None:
    """Refuse, in one line, a pack whose runs cannot take one step together."""
    if members[0].job.options.pack_streams > 1 and members[0].desc.training.compile:
        raise UserError("--pack_streams does not combine with --compile; leave one out")
    seen: dict[Path, int] = {}
    for n, m in enumerate(members, 1):
        if m.output_location in seen:
            raise UserError(
                f"pack: runs {seen[m.output_location]} and {n} are the same run "
                f"({m.output_location}); give each run once"
            )
        seen[m.output_location] = n
        why = differences(members[0], m)
        if why:
            raise UserError(
                f"pack: run {n} cannot share a step with run 1, they differ in {why}; a pack's "
                "runs share the model, data set, training hparams, rewinding step, levels and "
                "job settings"
            )
