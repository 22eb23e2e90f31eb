"""Sweeps on a real single-node Slurm cluster (.ci/slurm.sh) through submitit: one task
preempted in the middle of its training (USR2, submitit's checkpoint and requeue), one
requeued from outside (`scontrol requeue`: SIGTERM), and all four runs end with the
bits of the same runs made locally. Skipped, with the reason, where Slurm cannot start."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DATA, REPO
from open_lth.experiments.jobs import status
from open_lth.main import main as cli_main

SWEEP = REPO / "tests" / "slurm" / "tiny_sweep.py"
SCRIPT = REPO / ".ci" / "slurm.sh"


def _slurm_env(tmp_dir: Path) -> tuple[dict[str, str], Path | None]:
    """The environment of a running cluster: .ci/run's ($OPEN_LTH_SLURM_DIR), else one
    started here (returned for stopping). Skips with the reason when neither works."""
    env = dict(os.environ)
    folder = os.environ.get("OPEN_LTH_SLURM_DIR")
    started = None
    if not (folder and (Path(folder) / "env").exists()):
        if shutil.which("sbatch") is None or shutil.which("munged") is None:
            pytest.skip("Slurm is not installed (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            pytest.skip("the single-node Slurm cluster needs root")
        folder = str(tmp_dir / "slurm")
        env["OPEN_LTH_SLURM_PORT"] = "16917"  # not the port of a cluster .ci/run started
        result = subprocess.run(
            ["bash", str(SCRIPT), "start", folder], capture_output=True, text=True, env=env
        )
        if result.returncode != 0:
            reason = (result.stderr or result.stdout).strip().splitlines()
            pytest.skip(f"Slurm did not start: {reason[-1] if reason else result.returncode}")
        started = Path(folder)
    for line in (Path(folder) / "env").read_text().splitlines():
        if line.startswith("export SLURM_CONF="):
            env["SLURM_CONF"] = line.split("=", 1)[1]
    env["PATH"] = f"{Path(folder) / 'bin'}:{env['PATH']}"  # the sacct stand-in
    return env, started


@pytest.fixture
def slurm(tmp_path: Path):
    if importlib.util.find_spec("submitit") is None:
        pytest.skip("submitit is not installed (pip install -e .[slurm])")
    env, started = _slurm_env(tmp_path)
    yield env
    if started:
        subprocess.run(["bash", str(SCRIPT), "stop", str(started)], check=False)


def _level0_progress(location: Path) -> int:
    metrics = location / "level_0" / "main" / "metrics.csv"
    rows = metrics.read_text().splitlines()[1:] if metrics.exists() else []
    return max((int(r.split(",")[0]) for r in rows if r), default=-1)


def _reference(root: Path) -> None:
    """The same runs, made locally in this process with the tasks' one thread."""
    spec = importlib.util.spec_from_file_location("tiny_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(root=str(root), dataset_root=str(DATA), platform=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for phase in module.build(args):
            for run in phase:
                assert cli_main(run) == 0
    finally:
        torch.set_num_threads(threads)


def _same_files(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a) for p in a.rglob("*.pt"))
    assert names and names == sorted(p.relative_to(b) for p in b.rglob("*.pt"))
    for name in names:
        x = torch.load(a / name, weights_only=True)
        y = torch.load(b / name, weights_only=True)
        assert x.keys() == y.keys(), name
        for key in x:
            assert torch.equal(x[key], y[key]), f"{name}: {key}"
    for metrics in sorted(a.rglob("metrics.csv")):
        rows = [r for r in metrics.read_text().splitlines() if "wall_seconds" not in r]
        other = b / metrics.relative_to(a)
        assert rows == [r for r in other.read_text().splitlines() if "wall_seconds" not in r]


def test_sweep_on_slurm_survives_preemption_and_requeue(slurm, tmp_path: Path) -> None:
    root = tmp_path / "slurm_runs"
    flags = ["--executor=slurm", "--slurm_time=30", "--slurm_cpus_per_task=1"]
    submit = subprocess.run(
        [sys.executable, str(SWEEP), f"--root={root}", f"--dataset_root={DATA}", *flags],
        capture_output=True, text=True, env=slurm, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout + submit.stderr
    assert "phase 2: submitted array" in submit.stdout and "after" in submit.stdout
    records = list(status.read(root).values())
    assert len(records) == 4 and {r["phase"] for r in records} == {1, 2}
    lotteries = [r for r in records if r["phase"] == 1]

    # Preempt one lottery and requeue the other, each once it is in its dense training.
    actions = {
        lotteries[0]["job_id"]: ["scancel", "--signal=USR2"],
        lotteries[1]["job_id"]: ["scontrol", "requeue"],
    }
    signalled: set[str] = set()
    deadline = time.monotonic() + 120
    while len(signalled) < 2 and time.monotonic() < deadline:
        for r in lotteries:
            if r["job_id"] not in signalled and 50 <= _level0_progress(Path(r["location"])) < 600:
                subprocess.run([*actions[r["job_id"]], r["job_id"]], env=slurm, check=True)
                signalled.add(r["job_id"])
        time.sleep(0.05)
    assert len(signalled) == 2, "the lotteries did not reach their training in time"

    _reference(tmp_path / "local_runs")  # while the cluster resumes and goes on

    deadline = time.monotonic() + 180
    env_before = dict(os.environ)
    os.environ.update(slurm)  # status asks squeue
    try:
        while time.monotonic() < deadline:
            states = [s for s, _, _ in status.states(root)]
            if all(s in ("done", "failed") for s in states):
                break
            time.sleep(1)
        rows = status.states(root)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert [s for s, _, _ in rows] == ["done"] * 4, rows
    while (
        time.monotonic() < deadline
        and subprocess.run(
            ["squeue", "--noheader", "--states=RUNNING,COMPLETING"], env=slurm, capture_output=True
        ).stdout.strip()
    ):
        time.sleep(0.5)  # the tasks end a moment after their run; let the cluster see it
    for r in lotteries:
        log = Path(r["log"]).read_text()
        assert "interrupted at iteration" in log, log[-2000:]
    _same_files(root, tmp_path / "local_runs")


def _tiny_sweep(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("tiny_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from open_lth.experiments.jobs import sweep

    return sweep.main(module.build, None, argv)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--executor=pbs"], "unknown --executor 'pbs'; known executors: local, slurm"),
        (["--slurm_partition=gpu"], "--slurm_partition only go with --executor=slurm"),
        (["--executor=slurm", "--jobs=2"], "--jobs is for the local executor"),
        (["--executor=slurm", "--slurm_time=1h"], "malformed --slurm_time '1h'"),
        (["--executor=slurm"], "--executor=slurm: sbatch not found"),
    ],
)
def test_bad_executor_flags_are_one_line_and_write_nothing(
    tmp_path: Path, capsys, monkeypatch, flags: list[str], message: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch here
    root = tmp_path / "runs"
    code = _tiny_sweep([f"--root={root}", f"--dataset_root={DATA}", *flags])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not root.exists()


def test_slurm_dry_run_lists_the_arrays_without_sbatch(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    root = tmp_path / "runs"
    code = _tiny_sweep(
        [f"--root={root}", f"--dataset_root={DATA}", "--executor=slurm", "--dry_run"]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.count("would submit a job array of 2 tasks") == 2
    assert not root.exists()


def test_slurm_time_in_minutes() -> None:
    from open_lth.experiments.jobs.slurm import minutes

    assert [minutes(t) for t in ("90", "1:30:00", "1-00:00:00", "0:00:30", "2:30")] == [
        90, 90, 1440, 1, 150
    ]  # fmt: skip
    assert minutes("1h") is None


def test_status_reads_the_record(tmp_path: Path, cli) -> None:
    root = tmp_path / "runs"
    done, failed, waiting = (root / f"train_x/replicate_{r}/main" for r in (1, 2, 3))
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    log = tmp_path / "log.txt"
    log.write_text("starting\nerror: the loss became NaN\n")
    status.record(root, executor="local", location=str(done), job_id=None, run=["train"])
    status.record(
        root, executor="local", location=str(failed), job_id=1, log=str(log), run=["train"]
    )
    status.record(root, executor="local", location=str(failed), exit=3)
    status.record(root, executor="local", location=str(waiting), job_id=None, run=["train"])
    code, out, _ = cli("status", f"--root={root}")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("done ") and lines[2].startswith("waiting")
    assert lines[1].startswith("failed") and lines[1].endswith("error: the loss became NaN")
    assert lines[-1] == "1 done, 0 running, 1 waiting, 1 failed"
    code, _, err = cli("status", f"--root={tmp_path / 'nothing'}")
    assert code == 2 and "does not exist or is not a folder" in err
