"""Sweeps on a Slurm cluster through submitit (`pip install -e .[slurm]`).

Each phase of a sweep becomes one job array, one task per run still to do; a phase
starts only after the one before it succeeded (`afterok`; if that never comes, Slurm
cancels it). A task runs `main.py` in a child process and routes Slurm's signals to it:

- USR2 (`scancel --signal=USR2`, or submitit's warning before the time limit) reaches
  submitit's handler in the task, which calls `RunTask.checkpoint`: the child gets
  SIGTERM, checkpoints and exits, and submitit requeues the task. The child also gets
  the USR2 itself (Slurm signals every process of the step) and treats it like SIGTERM.
- SIGTERM (preemption, `scontrol requeue`, `scancel`) reaches the child, which
  checkpoints and exits; the task waits for Slurm to end it and requeue it.

A requeued task runs the same command again, which resumes from the checkpoint: the
run ends with the weights of an uninterrupted one.

A run on N nodes x G GPUs (--slurm_nodes, --slurm_gpus_per_node) is one job of N·G
tasks, as `srun` launches them: each task runs main.py with torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: `distributed_env`, from
Slurm's variables), so main.py joins one DDP run on its local rank's GPU. Preemption
is as above: task 0 (submitit's only checkpointing task) stops its child, every rank
stops at the same step (open_lth.foundations.distributed.agree_on_stop), rank 0 writes
the checkpoint, and the requeued job's N·G tasks resume from it. Job ids and log paths go to
`<root>/sweep_jobs.jsonl`, which `main.py status` reads.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from open_lth.experiments.jobs import packs, status

FLAGS = (
    "slurm_partition",
    "slurm_time",
    "slurm_gpus_per_task",
    "slurm_cpus_per_task",
    "slurm_nodes",
    "slurm_gpus_per_node",
    "slurm_array_parallelism",
    "slurm_setup",
)
# Exit statuses of a child stopped by a signal: main.py exits 128 + signum after its
# checkpoint; a child killed before it installed its handlers reports -signum.
STOPPED = {sign * s for s in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT) for sign in (-1, 1)}
STOPPED |= {128 + s for s in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)}
# How long a task whose child was stopped waits for Slurm to end it (KillWait is 30 s
# by default) before it reports a failure: the SIGTERM came from somewhere else.
WAIT_FOR_SLURM_S = 300


def add_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Slurm (with --executor=slurm)")
    group.add_argument("--slurm_partition", help="the partition (default: the cluster's)")
    group.add_argument("--slurm_time", help="time limit per task: minutes, HH:MM:SS or D-HH:MM:SS")
    group.add_argument("--slurm_gpus_per_task", type=int, help="GPUs per task (default 0)")
    group.add_argument("--slurm_cpus_per_task", type=int, help="CPUs per task (default 1)")
    group.add_argument(
        "--slurm_nodes", type=int, help="nodes per run (default 1); one DDP run over all"
    )
    group.add_argument(
        "--slurm_gpus_per_node",
        type=int,
        help="GPUs per node, each driven by its own task (process) of one DDP run",
    )
    group.add_argument("--slurm_array_parallelism", type=int, help="tasks of an array at a time")
    group.add_argument("--slurm_setup", help="a shell line run before each task")


def minutes(text: str) -> int | None:
    """'90' -> 90; '1:30:00' -> 90; '1-00:00:00' -> 1440; None when malformed."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        return None
    days, a, b, c = (int(g) if g else 0 for g in match.groups())
    if match.group(3) is None and not days:
        return a  # plain minutes
    hours, mins, secs = (a, b, c) if match.group(4) is not None else (a, b, 0)
    return max(1, days * 1440 + hours * 60 + mins + (secs + 59) // 60)


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with the executor flags, as one line; None when they are fine."""
    executor = args.executor
    if executor not in ("local", "slurm"):
        return f"unknown --executor '{executor}'; known executors: local, slurm"
    given = [f"--{name}" for name in FLAGS if getattr(args, name) is not None]
    if executor != "slurm":
        return f"{', '.join(given)} only go with --executor=slurm" if given else None
    if args.jobs != 1:
        return "--jobs is for the local executor; with Slurm use --slurm_array_parallelism"
    if args.slurm_time is not None and minutes(args.slurm_time) is None:
        return f"malformed --slurm_time '{args.slurm_time}'; write minutes, HH:MM:SS or D-HH:MM:SS"
    for name in ("slurm_gpus_per_task", "slurm_cpus_per_task", "slurm_array_parallelism"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "slurm_gpus_per_task" else 1):
            return f"--{name} must be {'0' if 'gpus' in name else '1'} or more, got {value}"
    for name in ("slurm_nodes", "slurm_gpus_per_node"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"--{name} must be 1 or more, got {value}"
    if args.slurm_gpus_per_node is not None and args.slurm_gpus_per_task is not None:
        return (
            "--slurm_gpus_per_task and --slurm_gpus_per_node do not go together: with "
            "--slurm_gpus_per_node each GPU gets its own task"
        )
    if args.dry_run or args.print_commands:
        return None  # a preview needs no cluster
    if shutil.which("sbatch") is None:
        return "--executor=slurm: sbatch not found; run this on a Slurm cluster's login node"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "--executor=slurm needs submitit: pip install -e .[slurm]"
    return None


class RunTask:
    """One run of main.py as a submitit task (pickled; `self.child` lives only in the task)."""

    def __init__(self, run: list[str], main: str, repo: str) -> None:
        self.run = run
        self.main = main
        self.repo = repo
        self.child: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "child": None}

    def __call__(self) -> int:
        env = dict(os.environ)
        if "SLURM_CPUS_PER_TASK" in env:  # torch would start a thread per core of the node
            env.setdefault("OMP_NUM_THREADS", env["SLURM_CPUS_PER_TASK"])
        env.update(distributed_env(env))
        command = [sys.executable, self.main, *self.run]
        self.child = subprocess.Popen(command, cwd=self.repo, env=env)
        # poll, not wait: wait() holds a lock that submitit's handler (checkpoint) needs.
        while (code := self.child.poll()) is None:
            time.sleep(0.5)
        if code in STOPPED:
            note = f"main.py stopped by a signal (exit status {code}); waiting to be requeued"
            print(note, flush=True)
            time.sleep(WAIT_FOR_SLURM_S)
        if code != 0:
            raise RuntimeError(f"main.py exited with status {code}")
        return code

    def checkpoint(self) -> object:
        """submitit's USR2 handler: let the child checkpoint and exit, then requeue."""
        from submitit.helpers import DelayedSubmission

        child = self.child
        if child is not None and child.returncode is None:
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            _reap(child.pid, 120)
        return DelayedSubmission(RunTask(self.run, self.main, self.repo))


def distributed_env(env: dict[str, str]) -> dict[str, str]:
    """torchrun's variables for this task of a multi-task job, from Slurm's (SLURM_PROCID,
    SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST, SLURM_JOB_ID); none for a job of one
    task, which runs as one process as before. MASTER_ADDR is the job's first node and
    MASTER_PORT a function of the job id (the same in every task, and after a requeue)
    unless the environment sets them."""
    tasks = int(env.get("SLURM_NTASKS", "1"))
    if tasks <= 1:
        return {}
    nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": str(tasks),
        "LOCAL_RANK": env["SLURM_LOCALID"],
        "LOCAL_WORLD_SIZE": str(tasks // nodes),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"]),
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + int(env["SLURM_JOB_ID"]) % 40000),
    }


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[007-010,012],cpu1' -> 'gpu007'."""
    match = re.match(r"([^,\[]*)(?:\[([^\]\-,]+)[^\]]*\]([^,]*))?", nodelist)
    if not match or not match.group(0):
        raise ValueError(f"malformed SLURM_JOB_NODELIST '{nodelist}'")
    prefix, first, suffix = match.groups()
    return prefix + (first or "") + (suffix or "")


def parameters(args: argparse.Namespace, setup: list[str]) -> dict:
    """submitit's SlurmExecutor parameters for each run of the sweep."""
    params = {
        "time": minutes(args.slurm_time) if args.slurm_time else 24 * 60,
        "cpus_per_task": args.slurm_cpus_per_task or 1,
        "setup": setup,
        "stderr_to_stdout": True,  # one log per task, whose last line status shows
    }
    if args.slurm_partition:
        params["partition"] = args.slurm_partition
    if args.slurm_gpus_per_task:
        params["gpus_per_task"] = args.slurm_gpus_per_task
    if args.slurm_nodes or args.slurm_gpus_per_node:
        # One task per GPU (srun starts them; distributed_env makes them one DDP run).
        params["nodes"] = args.slurm_nodes or 1
        params["ntasks_per_node"] = args.slurm_gpus_per_node or 1
        if args.slurm_gpus_per_node:
            params["gpus_per_node"] = args.slurm_gpus_per_node
    if args.slurm_array_parallelism:
        params["array_parallelism"] = args.slurm_array_parallelism
    return params


def run_shape(args: argparse.Namespace) -> str:
    """' of N nodes x G GPUs each' for a run over several tasks; '' for one task a run."""
    if not (args.slurm_nodes or args.slurm_gpus_per_node):
        return ""
    nodes, gpus = args.slurm_nodes or 1, args.slurm_gpus_per_node or 1
    return f", each one DDP run of {nodes} nodes x {gpus} GPUs ({nodes * gpus} processes)"


def _reap(pid: int, seconds: float) -> None:
    """Wait for a child without Popen's lock (this runs inside a signal handler)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def submit(
    phases: list[list[tuple[list[str], Path | None]]], args: argparse.Namespace, root: Path
) -> list[str]:
    """Submit one array per non-empty phase, each after the last; returns the array ids."""
    if not any(phases):
        print("nothing to submit: every run is done")
        return []
    import submitit

    from open_lth.experiments.jobs.sweep import MAIN, REPO

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    # A fresh folder per submission: job ids restart on a new cluster.
    executor = submitit.SlurmExecutor(folder=root / "slurm" / stamp / "%j")
    setup = [f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}"]
    if args.slurm_setup:
        setup.append(args.slurm_setup)
    params = parameters(args, setup)
    arrays: list[str] = []
    for number, todo in enumerate(phases, 1):
        if not todo:
            continue
        # append: a requeued task's log keeps what the attempts before it wrote.
        extra = {"open-mode": "append"}
        if arrays:
            extra["kill-on-invalid-dep"] = "yes"
        executor.update_parameters(
            **params,
            job_name=f"open_lth_phase{number}",
            dependency=f"afterok:{arrays[-1]}" if arrays else None,
            additional_parameters=extra,
        )
        tasks = [RunTask(run, str(MAIN), str(REPO)) for run, _ in todo]
        jobs = executor.submit_array(tasks)
        arrays.append(jobs[0].job_id.split("_")[0])
        for job, (run, location) in zip(jobs, todo, strict=True):
            for member, folder in packs.members(run, location):  # a pack: a line per run
                status.record(
                    root,
                    executor="slurm",
                    phase=number,
                    job_id=job.job_id,
                    log=str(job.paths.stdout),
                    location=str(folder),
                    run=member,
                )
        after = f", after {arrays[-2]}" if len(arrays) > 1 else ""
        print(f"phase {number}: submitted array {arrays[-1]} ({len(jobs)} tasks){after}")
    print(f"logs under {root / 'slurm' / stamp}; progress: python main.py status --root={root}")
    return arrays
