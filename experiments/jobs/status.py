"""`main.py status --root=<results>`: per run of the sweeps started on that root, done,
running, waiting or failed (with the last line of its log), from what the executors
recorded in `<root>/sweep_jobs.jsonl` and, for Slurm, what `squeue` says now. A root
that no sweep started is read from its folders (open_lth.experiments.jobs.folder_status).

The record is append-only, one JSON object a line (like metrics.csv: a crash loses at
most the line being written); the newest line about a run folder wins."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from open_lth.foundations import registries
from open_lth.foundations.hparams import DefaultHparams
from open_lth.foundations.runner import Runner

RECORD = "sweep_jobs.jsonl"
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED",
           "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}  # fmt: skip
RUNNING = {"RUNNING", "COMPLETING"}


def record(root: Path, **entry: object) -> None:
    """Append one line about a run to the root's record."""
    root.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), **entry}) + "\n"
    # O_APPEND: concurrent writers' lines do not interleave.
    fd = os.open(root / RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(root: Path) -> dict[str, dict]:
    """The newest record of each run folder, in the order the runs were first recorded."""
    latest: dict[str, dict] = {}
    path = root / RECORD
    if not path.exists():
        return latest
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        latest[entry["location"]] = {**latest.get(entry["location"], {}), **entry}
    return latest


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job id ("12_3"); empty where squeue is missing."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    result = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--array", "--format=%i|%T",
         f"--jobs={','.join(arrays)}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    states = {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        states[job_id] = state
    return states


def last_line(log: str | None) -> str:
    if not log or not Path(log).exists():
        return "(no log)"
    lines = [x for x in Path(log).read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1].strip() if lines else "(empty log)"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def states(root: Path) -> list[tuple[str, dict, str]]:
    """(state, record, detail) per recorded run: done, running, waiting or failed."""
    from open_lth.experiments.jobs import sweep

    entries = read(root)
    queue = slurm_states([e["job_id"] for e in entries.values() if e["executor"] == "slurm"])
    rows = []
    for location, e in entries.items():
        detail = f"job {e.get('job_id')}"
        if sweep.is_done(e["run"], Path(location)):
            state = "done"
        elif e["executor"] == "slurm":
            slurm = queue.get(e["job_id"])
            if slurm in RUNNING:
                state = "running"
            elif slurm in WAITING:
                state = "waiting"
            else:
                state = "failed"
                detail += f" ({slurm or 'not in the queue'}): {last_line(e.get('log'))}"
        elif "exit" in e:  # local: the sweep recorded the exit status
            state = "failed"
            detail += f" (exit status {e['exit']}): {last_line(e.get('log'))}"
        elif e.get("job_id") is not None:
            state = "running" if pid_alive(int(e["job_id"])) else "failed"
            if state == "failed":
                detail += f" (the process is gone): {last_line(e.get('log'))}"
        else:
            state = "waiting"
        rows.append((state, e, detail))
    return rows


@registries.subcommands.register("status")
class StatusRunner(Runner):
    description = "Done, running, crashed or waiting, per run on a results root."

    def __init__(self, root: Path, folders: str | None = None) -> None:
        self.root = root
        self.folders = folders  # the table read from the folders where no sweep was started

    @staticmethod
    def add_args(parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None:
        group = parser.add_argument_group("Status")
        group.add_argument("--root", help="the results root (default: the platform's)")
        group.add_argument("--platform", default="local", help="whose default root to read")
        group.add_argument("--default_hparams", metavar="MODEL", help="accepted and ignored")
        group.add_argument(
            "--display_output_location", action="store_true", help="print the root and exit"
        )

    @classmethod
    def create_from_args(cls, args: argparse.Namespace) -> StatusRunner:
        root = Path(args.root).expanduser() if args.root else None
        root = root or registries.platforms.get(args.platform).default_root()
        # Imported here: pandas would slow every other subcommand's start (plugins load all).
        from open_lth.experiments.analysis import load
        from open_lth.experiments.jobs import folder_status

        root = load.check_root(root)
        if (root / RECORD).exists():
            return cls(root)
        return cls(root, folder_status.table(root))  # no runs there: the error, before run()

    @property
    def output_location(self) -> Path:
        return self.root

    def run(self) -> None:
        if self.folders is not None:
            print(self.folders)
            return
        rows = states(self.root)
        for state, e, detail in rows:
            where = os.path.relpath(e["location"], self.root)
            print(f"{state:<8} {where}  {detail}")
        counts = {s: sum(r[0] == s for r in rows) for s in ("done", "running", "waiting", "failed")}
        print(", ".join(f"{n} {s}" for s, n in counts.items()))
