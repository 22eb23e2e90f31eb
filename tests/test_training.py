"""Training on real MNIST through the CLI: accuracy, reproducibility, resume, locks."""

from __future__ import annotations

import errno
import os
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
