"""A sweep: many runs of main.py, each an independent, idempotent, resumable command
line, grouped in phases (a phase starts when the one before it has ended, e.g.
instability branches after the lottery runs they hang off).

A run is the argument list of main.py (`["lottery", "--default_hparams=...", ...]`).
A study script builds its phases and hands them to `main`, which gives it these flags:

    --dry_run          print each run's command and output folder (from main.py's
                       --display_output_location), marking those already done
    --print_commands   print the commands still to run, one per line, for any scheduler
                       (Slurm array, GNU parallel, a shell loop); phases are in order
    --jobs=N           run N at a time (default 1, in this terminal); with CUDA, job
                       slot i gets CUDA_VISIBLE_DEVICES = GPU i mod #GPUs; on a CPU each
                       gets OMP_NUM_THREADS = cores / N; logs go to <root>/sweep_logs/
    --root, --dataset_root, --platform   passed to every run
    --executor=local|slurm   local: this machine, as above; slurm: one job array per
                       phase through submitit, each phase after the last succeeded, with
                       --slurm_* flags (experiments/jobs/slurm.py). With Slurm, --jobs is
                       refused (use --slurm_array_parallelism); --dry_run and
                       --print_commands list what would be submitted and submit nothing.

Either executor records job ids (process ids locally) and log paths in
<root>/sweep_jobs.jsonl; `python main.py status --root=<root>` reads them.

A run whose results exist (summary.json; for a lottery every level's) is skipped;
one that was interrupted is simply started again and resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from open_lth.experiments.jobs import packs, slurm, status
from open_lth.foundations import paths

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "main.py"

Run = list[str]
Phases = list[list[Run]]


def add_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Sweep")
    group.add_argument("--root", help="results root (default: the platform's)")
    group.add_argument("--dataset_root", help="where the data sets are (default: <root>/datasets)")
    group.add_argument("--platform", help="local (default) or colab")
    group.add_argument("--quick", action="store_true", help="a small version that runs in minutes")
    group.add_argument(
        "--dry_run", action="store_true", help="print the runs and their folders, run nothing"
    )
    group.add_argument(
        "--print_commands", action="store_true", help="print the commands still to run and exit"
    )
    group.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    group.add_argument("--log_dir", help="logs of --jobs>1 (default: <root>/sweep_logs)")
    group.add_argument("--executor", default="local", help="local (default) or slurm")
    group.add_argument(
        "--pack",
        type=int,
        help="train up to N compatible lottery runs together as one pack (`main.py pack`); "
        "default 8 on CUDA, 1 on a CPU",
    )
    group.add_argument(
        "--pack_streams",
        type=int,
        help="each pack as N networks on N CUDA streams (main.py's --pack_streams)",
    )
    slurm.add_args(parser)


def job_flags(args: argparse.Namespace) -> list[str]:
    """The flags of `args` that every run gets: where results and data live (folders
    made absolute, since the runs start in the repository)."""
    flags = []
    for name in ("root", "dataset_root", "platform", "pack_streams"):
        value = getattr(args, name, None)
        if value and name in ("root", "dataset_root"):
            value = Path(value).expanduser().resolve()
        if value:
            flags.append(f"--{name}={value}")
    return flags


def flag_value(run: Run, flag: str, default: str | None = None) -> str | None:
    """The value of `--flag=value` (or `--flag value`) in a run, the last one winning."""
    value = default
    for i, arg in enumerate(run):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(run):
            value = run[i + 1]
    return value


def replicates(text: str) -> list[int]:
    """A study's --replicates, in main.py's --levels syntax: '1-3,7' -> [1, 2, 3, 7]."""
    from open_lth.lottery.levels import parse_levels

    return parse_levels(str(text), "--replicates")


def settings(args: argparse.Namespace, full: dict, quick: dict, keys: tuple[str, ...]) -> dict:
    """A study's settings: its full or --quick values, with the `keys` given as flags."""
    values = dict(quick if args.quick else full)
    for key in keys:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    return values


def strategy_grid(
    args: argparse.Namespace,
    lottery_run: Callable[[argparse.Namespace, str, list[str], int], Run],
    start_modes: dict[str, list[str]],
    replicates_text: str,
) -> Phases:
    """One phase: a lottery run for every --strategies name x start mode x replicate."""
    strategies = [x.strip() for x in args.strategies.split(",") if x.strip()]
    return [
        [
            lottery_run(args, strategy, start, replicate)
            for strategy in strategies
            for start in start_modes.values()
            for replicate in replicates(replicates_text)
        ]
    ]


def command(run: Run) -> list[str]:
    return [sys.executable, str(MAIN), *run]


def shell(run: Run) -> str:
    return shlex.join(command(run))


def locate(run: Run) -> tuple[Path | None, str | None]:
    """(output folder, None) as main.py --display_output_location prints it (called in
    this process: the same code, without a Python start per run), or (None, error)."""
    from open_lth import cli
    from open_lth.foundations.errors import UserError
    from open_lth.main import load_plugins

    load_plugins()
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            code = cli.run([*run, "--display_output_location"])
    except UserError as e:
        return None, str(e)
    lines = buffer.getvalue().strip().splitlines()
    if code != 0 or not lines:
        return None, f"main.py exited with {code} and printed no folder"
    return Path(lines[-1].strip()), None


def is_done(run: Run, location: Path | None) -> bool:
    """Whether a run's results are all there: a train run's summary.json, every level's
    of a lottery, every level's branch of a lottery_branch (its instability.json or
    main/summary.json). Anything else counts as not done; main.py skips finished work."""
    if location is None:
        return False
    if run and run[0] == "lottery":
        levels = int(flag_value(run, "--levels", "0") or 0)
        strategy = flag_value(run, "--pruning_strategy")
        if strategy:
            from open_lth.foundations import registries
            from open_lth.main import load_plugins

            load_plugins()
            if strategy in registries.strategies and registries.strategies.get(strategy).one_shot:
                levels = min(levels, 1)
        return all(paths.summary(paths.level_main(location, L)).exists() for L in range(levels + 1))
    if run and run[0] == "lottery_branch":
        # The location is the branch folder of the first level; the others have its name.
        replicate_dir = location.parent.parent
        levels = parse_levels(flag_value(run, "--levels", "") or "")
        return bool(levels) and all(
            _stage_done(paths.level(replicate_dir, L) / location.name) for L in levels
        )
    return _stage_done(location)


def _stage_done(folder: Path) -> bool:
    """A stage, an instability branch (instability.json) or a control (main/)."""
    done = (paths.summary(folder), paths.instability(folder), paths.summary(paths.main(folder)))
    return any(path.exists() for path in done)


def parse_levels(text: str) -> list[int]:
    """'0,3-5' -> [0, 3, 4, 5]; [] when malformed (main.py says what is wrong)."""
    from open_lth.foundations.errors import UserError
    from open_lth.lottery.levels import parse_levels as parse

    try:
        return parse(text)
    except UserError:
        return []


def gpu_ids() -> list[str]:
    """The GPUs jobs are spread over: CUDA_VISIBLE_DEVICES's, else all there are."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def job_env(slot: int, jobs: int, gpus: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    elif jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def _log_name(index: int, run: Run, location: Path | None) -> str:
    where = "_".join(location.parts[-3:]) if location else "unknown"
    return f"{index:03d}_{run[0]}_{re.sub(r'[^A-Za-z0-9._-]+', '_', where)}.log"


def run_phase(
    runs: list[tuple[Run, Path | None]],
    jobs: int,
    log_dir: Path | None,
    start: int = 0,
    root: Path | None = None,
) -> list[Run]:
    """Run these (sequentially in this terminal, or `jobs` at a time with logs);
    returns the runs that failed. Ctrl-C stops the children, which checkpoint. With a
    `root`, each start and failure is recorded there for `main.py status`."""
    gpus = gpu_ids()
    failed: list[Run] = []

    def note(run: Run, location: Path | None, **entry: object) -> None:
        if root is not None:
            for member, folder in packs.members(run, location):  # a pack: a line per run
                status.record(root, executor="local", location=str(folder), run=member, **entry)

    if jobs <= 1:
        for i, (run, location) in enumerate(runs):
            print(f"[{start + i + 1}] {shell(run)}", flush=True)
            process = subprocess.Popen(command(run), cwd=REPO, env=job_env(0, 1, gpus))
            note(run, location, job_id=process.pid, log=None)
            try:
                code = process.wait()
            except KeyboardInterrupt:
                process.wait()  # Ctrl-C reached the child too: let it checkpoint
                raise
            if code != 0:
                print(f"[{start + i + 1}] failed with exit status {code}: {location}", flush=True)
                note(run, location, exit=code)
                failed.append(run)
        return failed
    assert log_dir is not None
    log_dir.mkdir(parents=True, exist_ok=True)
    queue = deque(enumerate(runs))
    free = list(range(jobs))
    active: dict[int, tuple] = {}
    try:
        while queue or active:
            while queue and free:
                slot = free.pop(0)
                i, (run, location) = queue.popleft()
                log = log_dir / _log_name(start + i + 1, run, location)
                handle = open(log, "w")  # noqa: SIM115 - closed when the job ends
                process = subprocess.Popen(
                    command(run),
                    cwd=REPO,
                    env=job_env(slot, jobs, gpus),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                )
                device = f" on GPU {gpus[slot % len(gpus)]}" if gpus else ""
                print(f"[{start + i + 1}] started{device}: {location}  (log {log})", flush=True)
                active[slot] = (process, run, handle, start + i + 1, log, location)
                note(run, location, job_id=process.pid, log=str(log))
            time.sleep(0.2)
            for slot, (process, run, handle, number, log, location) in list(active.items()):
                code = process.poll()
                if code is None:
                    continue
                handle.close()
                del active[slot]
                free.append(slot)
                state = "done" if code == 0 else f"FAILED (exit status {code}; see {log})"
                print(f"[{number}] {state}", flush=True)
                if code != 0:
                    note(run, location, exit=code)
                    failed.append(run)
    except KeyboardInterrupt:
        for process, *_ in active.values():
            process.terminate()
        for process, *_ in active.values():
            process.wait()
        raise
    return failed


def execute(phases: Phases, args: argparse.Namespace) -> int:
    """Locate every run, then print (--dry_run, --print_commands), run them here, or
    submit them to Slurm."""
    on_slurm = getattr(args, "executor", "local") == "slurm"
    located = [[(run, *locate(run)) for run in phase] for phase in phases]
    size = getattr(args, "pack", None)
    size = packs.default_size([r for p in phases for r in p]) if size is None else size
    errors = [(run, error) for phase in located for run, _, error in phase if error]
    total = sum(len(p) for p in phases)
    if args.print_commands:
        for number, phase in enumerate(located, 1):
            todo = [(run, loc) for run, loc, _ in phase if not is_done(run, loc)]
            entries = packs.group(todo, size if not errors else 1)
            print(f"# phase {number}: {len(entries)} commands", file=sys.stderr)
            for entry in entries:
                print(shell(entry.run))
        return 2 if errors else 0
    count = 0
    failed: list[Run] = []
    todos: list[list[tuple[Run, Path | None]]] = []  # per phase, for Slurm
    for number, phase in enumerate(located, 1):
        done = [is_done(run, location) for run, location, _ in phase]
        print(
            f"phase {number} of {len(located)}: {len(phase)} runs, {sum(done)} done, "
            f"{len(phase) - sum(done)} to run",
            flush=True,
        )
        if args.dry_run or errors:
            for (run, location, error), finished in zip(phase, done, strict=True):
                state = "done  " if finished else "to run"
                where = location if location else f"(cannot locate: {error})"
                print(f"  {state} {where}\n         {shell(run)}")
            if not errors and size > 1:
                todo = [(r, loc) for (r, loc, _), d in zip(phase, done, strict=True) if not d]
                n = len(packs.group(todo, size))
                print(f"  as {n} commands (compatible runs in packs of up to {size})")
            if on_slurm:
                shape = slurm.run_shape(args)
                print(f"  would submit a job array of {len(phase) - sum(done)} tasks{shape}")
            continue
        todo = [(run, location) for (run, location, _), d in zip(phase, done, strict=True) if not d]
        entries = packs.group(todo, size)
        commands = [(e.run, e.location) for e in entries]
        if on_slurm:
            todos.append(commands)
            continue
        root = results_root(args, todo)
        failed_commands = run_phase(commands, args.jobs, log_dir(args, todo), count, root)
        for entry in entries:
            if entry.run in failed_commands:
                # A pack fails when one of its runs does; the others are done.
                failed += [r for r, loc in entry.members if not is_done(r, loc)] or [entry.run]
        count += len(commands)
        if failed and number < len(located):
            print(f"phase {number} had failures; the later phases, which need it, did not start")
            break
    if errors:
        print(f"error: {len(errors)} of {total} runs cannot be located; nothing was run")
        return 2
    if on_slurm and not args.dry_run:
        root = results_root(args, [t for todo in todos for t in todo])
        slurm.submit(todos, args, root)
        return 0
    if failed:
        print(f"{len(failed)} of {total} runs failed; run the same command again to retry")
        return 1
    if not args.dry_run:
        print(f"all {total} runs done")
    return 0


def log_dir(args: argparse.Namespace, todo: list[tuple[Run, Path | None]]) -> Path | None:
    if args.jobs <= 1:
        return None
    if args.log_dir:
        return Path(args.log_dir).expanduser()
    return (results_root(args, todo) or REPO) / "sweep_logs"


def results_root(args: argparse.Namespace, todo: list[tuple[Run, Path | None]]) -> Path | None:
    """--root, else the folder holding the runs' lottery_*/train_* folders."""
    if args.root:
        return Path(args.root).expanduser().resolve()
    for _, location in todo:
        for folder in location.parents if location else ():
            if folder.name.startswith(("lottery_", "train_")):
                return folder.parent
    return None


def main(
    build: Callable[[argparse.Namespace], Phases],
    description: str | None,
    argv: list[str] | None = None,
    extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse the sweep's flags (and a study's own), build the phases, execute them."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_args(parser)
    if extra_args:
        extra_args(parser)
    args = parser.parse_args(argv)
    for flag in ("jobs", "pack"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            print(f"error: --{flag} must be 1 or more, got {value}", file=sys.stderr)
            return 2
    problem = slurm.check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from open_lth.foundations.errors import UserError

    try:
        phases = build(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return execute(phases, args)
