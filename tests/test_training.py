"""Training on real MNIST through the CLI: accuracy, reproducibility, resume, locks."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import DATA, REPO, lenet_args, lenet_lottery
from open_lth.foundations import errors, paths, store
from open_lth.foundations.store import RunLock
from open_lth.lottery.levels import level_dir


def run_dir(root: Path) -> Path:
    (run,) = root.glob("train_*/replicate_1/main")
    return run


def metrics_without_wall(run: Path) -> pd.DataFrame:
    frame = pd.read_csv(paths.metrics(run))
    return frame[frame.name != "wall_seconds"].reset_index(drop=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_lenet_reaches_97_percent_on_real_mnist(cli, tmp_path: Path) -> None:
    argv = [
        "train",
        "--default_hparams=mnist_lenet_300_100",
        "--training_steps=2000it",
        f"--dataset_root={DATA}",
        f"--root={tmp_path}",
        "--quiet",
    ]
    assert cli(*argv)[0] == 0
    run = run_dir(tmp_path)
    frame = pd.read_csv(paths.metrics(run))
    accuracy = frame[frame.name == "test_accuracy"].set_index("iteration").value
    assert list(accuracy.index) == [0, 1000, 2000]
    assert accuracy[0] < 0.3 and accuracy[2000] >= 0.97
    assert sorted(p.name for p in run.iterdir()) == [
        "hparams.json", "hparams.txt", "metrics.csv", "summary.json",
        "weights_it0.pt", "weights_it2000.pt",
    ]  # fmt: skip
    before = paths.metrics(run).read_bytes()
    code, out, _ = cli(*argv)
    assert code == 0 and "already finished" in out and str(run) in out
    assert paths.metrics(run).read_bytes() == before


def test_same_command_twice_gives_identical_results(cli, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert cli(*lenet_args(tmp_path / name))[0] == 0
    a, b = run_dir(tmp_path / "a"), run_dir(tmp_path / "b")
    pd.testing.assert_frame_equal(metrics_without_wall(a), metrics_without_wall(b))
    assert_same_weights(paths.weights(a, 300), paths.weights(b, 300))
    # A different data order gives a different run.
    assert cli(*lenet_args(tmp_path / "c", "--data_order_seed=7"))[0] == 0
    c = run_dir(tmp_path / "c")
    assert not metrics_without_wall(a).equals(metrics_without_wall(c))


def spawn(root: Path, *extra: str) -> subprocess.Popen:
    # On the CPU: bit-identical resume is the CPU's promise (tests/test_train_step.py
    # holds the GPU's), and a GPU would finish these 300 steps before the kill.
    argv = [
        sys.executable,
        "main.py",
        *lenet_args(root, "--checkpoint_every=25it", "--device=cpu", *extra),
    ]
    env = {**os.environ, "OPEN_LTH_OFFLINE": "1"}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_checkpoint(root: Path, process: subprocess.Popen, min_iteration: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        found = list(root.glob("train_*/replicate_1/main/checkpoint.pt"))
        if found:
            ckpt = torch.load(found[0], weights_only=True)
            if ckpt["iteration"] >= min_iteration:
                return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_identical_weights(cli, tmp_path: Path, sig: int) -> None:
    assert cli(*lenet_args(tmp_path / "straight", "--device=cpu"))[0] == 0
    process = spawn(tmp_path / "killed")
    wait_for_checkpoint(tmp_path / "killed", process, 100)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM
        assert b"checkpoint saved; run the same command again to resume" in err
    killed = run_dir(tmp_path / "killed")
    assert not (killed / "summary.json").exists()
    assert paths.checkpoint(killed).exists()
    assert cli(*lenet_args(tmp_path / "killed", "--checkpoint_every=25it", "--device=cpu"))[0] == 0
    straight = run_dir(tmp_path / "straight")
    assert_same_weights(paths.weights(straight, 300), paths.weights(killed, 300))
    pd.testing.assert_frame_equal(metrics_without_wall(straight), metrics_without_wall(killed))
    assert not paths.checkpoint(killed).exists()


def test_a_locked_run_is_refused(cli, tmp_path: Path) -> None:
    code, out, _ = cli(*lenet_args(tmp_path, "--display_output_location"))
    run = Path(out.strip())
    with RunLock(run.parent):
        code, _, err = cli(*lenet_args(tmp_path))
    assert code == 2
    assert "is in use by another process" in err and len(err.strip().splitlines()) == 1
    assert not (run / "metrics.csv").exists()


def test_a_file_system_without_locks_runs_unlocked_and_says_so(
    cli, tmp_path: Path, monkeypatch
) -> None:
    """Lustre without -o flock refuses flock with ENOSYS: the run goes on, with a note."""

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(store.fcntl, "flock", refuse)
    monkeypatch.setattr(errors, "_NOTED", set())
    code, _, err = cli(*lenet_lottery(tmp_path, "--training_steps=20it", "--levels=1"))
    assert code == 0, err
    notes = [line for line in err.splitlines() if "cannot lock" in line]
    assert len(notes) == 1 and "Function not implemented" in notes[0], err
    (run,) = tmp_path.glob("lottery_*")
    assert (level_dir(run / "replicate_1", 1) / "summary.json").exists()


def test_nan_loss_stops_with_a_clear_error(cli, tmp_path: Path) -> None:
    code, _, err = cli(*lenet_args(tmp_path, "--optimizer_name=sgd", "--lr=1e30"))
    assert code == 3
    assert "NaN or infinite" in err and len(err.strip().splitlines()) == 1
    assert not (run_dir(tmp_path) / "summary.json").exists()


def loud(args: list[str]) -> list[str]:
    """`args` without --quiet: what a user sees."""
    return [a for a in args if a != "--quiet"]


def run_piped(root: Path, *extra: str, quiet: bool = False) -> subprocess.CompletedProcess:
    """main.py with stdout a pipe, as under Slurm, nohup or a notebook's `!python`."""
    args = lenet_args(root, "--device=cpu", *extra)
    argv = [sys.executable, "main.py", *(args if quiet else loud(args))]
    env = {**os.environ, "OPEN_LTH_OFFLINE": "1"}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_without_a_terminal_each_evaluation_prints_one_line(tmp_path: Path) -> None:
    done = run_piped(tmp_path, "--training_steps=200it")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("iteration ")]
    assert lines[0].startswith("iteration 0/200: test accuracy 0.")
    pattern = (
        r"iteration (\d+)/200: train loss \d\.\d{4}, test accuracy (0\.\d{4}), "
        r"[\d.]+ it/s, [\d:]+ left"
    )
    matches = [re.fullmatch(pattern, line) for line in lines[1:]]
    assert all(matches) and [int(m[1]) for m in matches] == [100, 200], lines
    # The last line's accuracy is the run's.
    frame = pd.read_csv(paths.metrics(run_dir(tmp_path)))
    final = frame[(frame.name == "test_accuracy") & (frame.iteration == 200)].value.item()
    assert float(matches[-1][2]) == pytest.approx(final, abs=5e-5)
    assert "\r" not in done.stdout + done.stderr  # no bar drawn into a log
    quiet = run_piped(tmp_path / "quiet", "--training_steps=100it", quiet=True)
    assert quiet.returncode == 0 and quiet.stdout.startswith("done: "), quiet.stdout


def test_a_pack_prints_its_mean_and_spread(capsys: pytest.CaptureFixture) -> None:
    from open_lth.training.progress import Progress

    with Progress(0, 300, quiet=False) as progress:
        progress.evaluated(100, [0.5, 0.7], [0.9, 0.8])
    line = capsys.readouterr().out.strip()
    assert line.startswith(
        "iteration 100/300: train loss 0.6000, test accuracy 0.8500 (mean of 2 runs, "
        "0.8000 to 0.9000), "
    ), line
    assert line.endswith(" left")


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of a run killed (SIGKILL) after its checkpoint at iteration 100 or later;
    each test copies it."""
    root = tmp_path_factory.mktemp("killed")
    process = spawn(root)
    wait_for_checkpoint(root, process, 100)
    process.kill()
    process.communicate(timeout=60)
    return root


def truncate(path: Path) -> None:
    # A new file, not the old one cut in place: a kill just after the previous checkpoint
    # was linked (before the new one replaced it) leaves both names on one file.
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_checkpoint_resumes_from_the_one_before_to_the_bit(
    cli, tmp_path: Path, killed: Path
) -> None:
    assert cli(*lenet_args(tmp_path / "straight", "--device=cpu"))[0] == 0
    shutil.copytree(killed, tmp_path / "killed")
    run = run_dir(tmp_path / "killed")
    previous = torch.load(paths.previous_checkpoint(run), weights_only=True)["iteration"]
    assert previous >= 75
    truncate(paths.checkpoint(run))
    resumed = run_piped(tmp_path / "killed", "--checkpoint_every=25it")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from iteration {previous} ({run})" in resumed.stdout.splitlines()
    notes = [line for line in resumed.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and f"cannot read {paths.checkpoint(run)}" in notes[0], notes
    assert f"from the checkpoint kept before it, at iteration {previous}" in notes[0]
    straight = run_dir(tmp_path / "straight")
    assert_same_weights(paths.weights(straight, 300), paths.weights(run, 300))
    pd.testing.assert_frame_equal(metrics_without_wall(straight), metrics_without_wall(run))
    assert not paths.checkpoint(run).exists() and not paths.previous_checkpoint(run).exists()


def test_both_checkpoints_truncated_is_one_line_naming_the_files(
    cli, tmp_path: Path, killed: Path
) -> None:
    shutil.copytree(killed, tmp_path / "killed")
    run = run_dir(tmp_path / "killed")
    for path in (paths.checkpoint(run), paths.previous_checkpoint(run)):
        truncate(path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, err = cli(*lenet_args(tmp_path / "killed", "--checkpoint_every=25it", "--device=cpu"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: cannot read {paths.checkpoint(run)} (")
    assert f"delete {paths.checkpoint(run)} and {paths.previous_checkpoint(run)} to start" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
