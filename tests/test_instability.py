"""Instability analysis: the barrier's definition, stacked copies, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import DATA, REPO
from open_lth.foundations import paths
from open_lth.foundations.hparams import DatasetHparams, ModelHparams, TrainingHparams
from open_lth.foundations.model import build_model
from open_lth.main import load_plugins
from open_lth.training import interpolation
from open_lth.training.data import DeviceData, load
from open_lth.training.interpolation import barrier, evaluate_path
from open_lth.training.loop import Loop
from open_lth.training.signals import Interrupted
from open_lth.training.trainer import Copy, Seeds, Stage, TrainOptions, train

load_plugins()
CPU = torch.device("cpu")
LENET = "--default_hparams=mnist_lenet_300_100"


def lottery(root: Path, *extra: str) -> list[str]:
    return [
        LENET,
        f"--dataset_root={DATA}",
        f"--root={root}",
        "--subsample_fraction=0.1",
        "--training_steps=200it",
        "--eval_every=100it",
        "--quiet",
        *extra,
    ]


def branch_dir(root: Path, name: str, level: int = 0) -> Path:
    (found,) = root.glob(f"lottery_*/replicate_1/level_{level}/{name}_*")
    return found


def tiny_data(labels: list[int]) -> DeviceData:
    n = len(labels)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    return DeviceData(images, torch.tensor(labels), (0.0,), (1.0,), None, 0, CPU)


def bump_state(w: float, b: float) -> dict[str, torch.Tensor]:
    """mnist_lenet_1 whose class-1 logit is w·relu(b) and class-0 logit 0.5."""
    fc_bias = torch.full((10,), -10.0)
    fc_bias[0], fc_bias[1] = 0.5, 0.0
    fc_weight = torch.zeros(10, 1)
    fc_weight[1, 0] = w
    return {
        "fc_layers.0.weight": torch.zeros(1, 784),
        "fc_layers.0.bias": torch.tensor([b]),
        "fc.weight": fc_weight,
        "fc.bias": fc_bias,
    }


def test_barrier_of_known_paths(tmp_path: Path) -> None:
    template = build_model(ModelHparams("mnist_lenet_1", "kaiming_normal", "uniform"), 10)
    data = tiny_data([0] * 7 + [2] * 3)
    # θ(α) has class-1 logit 4α·relu(4-4α) = 16α(1-α): 0 at the ends, 3, 4, 3 inside,
    # above class 0's 0.5, so the inside predicts 1 (error 1.0), the ends 0 (error 0.3).
    first, second = bump_state(0.0, 4.0), bump_state(4.0, 0.0)
    curve = evaluate_path(
        template, first, second, {"train": data}, 5, "interpolate", tmp_path / "a.csv", 10
    )
    errors = [curve[(a, "train")][0] for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert errors == pytest.approx([0.3, 1.0, 1.0, 1.0, 0.3])
    assert barrier(errors) == pytest.approx(0.7)
    same = evaluate_path(
        template, first, first, {"train": data}, 7, "interpolate", tmp_path / "b.csv", 10
    )
    assert barrier([same[(a, "train")][0] for a in sorted({a for a, _ in same})]) == 0


def test_a_signal_stops_the_interpolation_between_chunks(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM or SIGUSR2 (preemption, Slurm's time limit) while the path is evaluated:
    the chunk in hand is finished and written, the evaluation stops, and run again it
    evaluates only the points still missing."""
    template = build_model(ModelHparams("mnist_lenet_1", "kaiming_normal", "uniform"), 10)
    data = {"train": tiny_data([0] * 7 + [2] * 3)}
    first, second = bump_state(0.0, 4.0), bump_state(4.0, 0.0)
    args = (template, first, second, data, 25, "interpolate")
    straight = evaluate_path(*args, tmp_path / "a.csv", 10)
    chunks, fired = [], []
    real = interpolation._evaluate_chunk

    def signalled(*a: object) -> None:
        chunks.append(len(a[1]))
        real(*a)
        if not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGTERM)  # to this thread, at once

    monkeypatch.setattr(interpolation, "_evaluate_chunk", signalled)
    with pytest.raises(Interrupted, match="interrupted at interpolation point 10"):
        evaluate_path(*args, tmp_path / "b.csv", 10)
    assert len(pd.read_csv(tmp_path / "b.csv")) == 10
    chunks.clear()
    resumed = evaluate_path(*args, tmp_path / "b.csv", 10)
    assert sum(chunks) == 15 and resumed == straight


def test_stacked_copies_train_like_separate_runs(tmp_path: Path) -> None:
    hp = DatasetHparams("mnist", 60, subsample_fraction=0.05)
    train_data, _ = load(hp, DATA, True, CPU)
    test_data, _ = load(hp, DATA, False, CPU)
    training = TrainingHparams("sgd", 0.05, "40it", momentum=0.9)
    model = build_model(ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform"), 10, 1)
    keep = {
        "fc_layers.0.weight": torch.rand(300, 784, generator=torch.Generator().manual_seed(0)) < 0.5
    }
    options = TrainOptions(quiet=True)
    copies = [Copy(tmp_path / "c1", Seeds(1, 1)), Copy(tmp_path / "c2", Seeds(2, 2))]
    for c in copies:
        c.out.mkdir()
    models = [
        build_model(ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform"), 10, 1)
        for _ in copies
    ]
    pair = Stage(training, train_data, test_data, 60, copies, options, tmp_path / "ckpt.pt", keep)
    Loop(models, pair).run()
    for i, seeds in enumerate([Seeds(1, 1), Seeds(2, 2)]):
        alone = tmp_path / f"alone{i}"
        alone.mkdir()
        fresh = build_model(ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform"), 10, 1)
        train(fresh, training, train_data, test_data, 60, alone, seeds, options, keep)
        a = torch.load(paths.weights(alone, 40), weights_only=True)
        b = torch.load(paths.weights(copies[i].out, 40), weights_only=True)
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-5), name
        pruned = ~keep["fc_layers.0.weight"]
        assert torch.equal(b["fc_layers.0.weight"][pruned], torch.zeros(int(pruned.sum())))
    assert not (tmp_path / "ckpt.pt").exists()
    del model


def test_dense_lenet_is_stable_on_real_mnist(cli, tmp_path: Path) -> None:
    flags = [
        LENET,
        f"--dataset_root={DATA}",
        f"--root={tmp_path}",
        "--training_steps=3000it",
        "--quiet",
    ]
    assert cli("lottery", *flags, "--levels=0")[0] == 0
    code, out, err = cli("lottery_branch", "instability", "--levels=0", *flags)
    assert code == 0, err
    run = branch_dir(tmp_path, "instability")
    result = json.loads((run / "instability.json").read_text())
    a = torch.load(paths.weights(run / "copy_1", 3000), weights_only=True)
    b = torch.load(paths.weights(run / "copy_2", 3000), weights_only=True)
    assert not torch.equal(a["fc.weight"], b["fc.weight"])
    start_a = torch.load(paths.weights(run / "copy_1", 0), weights_only=True)
    start_b = torch.load(paths.weights(run / "copy_2", 0), weights_only=True)
    assert all(torch.equal(start_a[k], start_b[k]) for k in start_a)
    assert result["train_instability"] < 0.02  # LeNet is stable at initialization
    # LeNet has no BatchNorm: its line says nothing about BatchNorm statistics.
    assert result["bn_stats"] == "interpolate"
    assert "test instability" in out and "BatchNorm" not in out
    # The barrier, by hand from the saved curve.
    curve = pd.read_csv(run / "curve.csv")
    assert len(curve) == 60 and sorted(curve.split.unique()) == ["test", "train"]
    for split in ("train", "test"):
        errors = curve[curve.split == split].sort_values("alpha").error.tolist()
        assert result[f"{split}_instability"] == pytest.approx(
            max(errors) - (errors[0] + errors[-1]) / 2
        )
        assert result[f"{split}_end_errors"] == pytest.approx([errors[0], errors[-1]])


def test_killed_branch_resumes(cli, tmp_path: Path) -> None:
    # On the CPU, whose promise is a bit-identical resume (tests/test_train_step.py
    # holds the GPU's); a GPU could also finish before the kill.
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for root in (straight, killed):
        assert cli("lottery", *lottery(root, "--device=cpu"), "--levels=1")[0] == 0
    assert (
        cli("lottery_branch", "instability", "--levels=1", *lottery(straight, "--device=cpu"))[0]
        == 0
    )
    argv = [
        sys.executable,
        "main.py",
        "lottery_branch",
        "instability",
        "--levels=1",
        *lottery(killed, "--device=cpu", "--checkpoint_every=10it"),
    ]
    env = {**os.environ, "OPEN_LTH_OFFLINE": "1"}
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(
        killed.glob("lottery_*/replicate_1/level_1/instability_*/checkpoint.pt")
    ):
        assert process.poll() is None, "the branch finished before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (
        cli(
            "lottery_branch",
            "instability",
            "--levels=1",
            *lottery(killed, "--device=cpu", "--checkpoint_every=10it"),
        )[0]
        == 0
    )
    a, b = branch_dir(straight, "instability", 1), branch_dir(killed, "instability", 1)
    for copy in ("copy_1", "copy_2"):
        wa = torch.load(paths.weights(a / copy, 200), weights_only=True)
        wb = torch.load(paths.weights(b / copy, 200), weights_only=True)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), copy
    # The interpolation resumes from the points already written (a cut-off row too).
    full = (b / "curve.csv").read_text().splitlines()
    (b / "curve.csv").write_text("\n".join(full[:21]) + "\n0.9,tra")
    (b / "instability.json").unlink()
    assert (
        cli("lottery_branch", "instability", "--levels=1", *lottery(killed, "--device=cpu"))[0] == 0
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(a / "curve.csv").sort_values(["split", "alpha"]).reset_index(drop=True),
        pd.read_csv(b / "curve.csv").sort_values(["split", "alpha"]).reset_index(drop=True),
    )
    assert json.loads((a / "instability.json").read_text()) == json.loads(
        (b / "instability.json").read_text()
    )


def test_controls(cli, tmp_path: Path) -> None:
    assert cli("lottery", *lottery(tmp_path), "--levels=2")[0] == 0
    level = next(tmp_path.glob("lottery_*/replicate_1/level_2/main"))
    lottery_mask = torch.load(level / "mask.pt", weights_only=True)
    start = torch.load(level.parents[1] / "level_0" / "main" / "weights_it0.pt", weights_only=True)

    assert cli("lottery_branch", "randomly_prune", "--levels=2", *lottery(tmp_path))[0] == 0
    out = branch_dir(tmp_path, "randomly_prune", 2) / "main"
    mask = torch.load(out / "mask.pt", weights_only=True)
    report = json.loads((out / "sparsity_report.json").read_text())
    for name, m in lottery_mask.items():
        assert report["layers"][name]["kept"] == int(m.sum()) == int(mask[name].sum())
        assert not torch.equal(mask[name], m)
    initial = torch.load(paths.weights(out, 0), weights_only=True)
    w, lm = initial["fc_layers.0.weight"], lottery_mask["fc_layers.0.weight"]
    # Weights the lottery pruned but the random mask keeps start at their init values.
    kept_here = w != 0
    assert (kept_here & ~lm).sum() > 1000
    assert torch.equal(w[kept_here], start["fc_layers.0.weight"][kept_here])

    assert cli("lottery_branch", "randomly_reinitialize", "--levels=2", *lottery(tmp_path))[0] == 0
    out = branch_dir(tmp_path, "randomly_reinitialize", 2) / "main"
    fresh = torch.load(paths.weights(out, 0), weights_only=True)["fc_layers.0.weight"]
    kept = lottery_mask["fc_layers.0.weight"]
    assert (fresh[~kept] == 0).all() and (fresh[kept] != start["fc_layers.0.weight"][kept]).all()

    assert (
        cli("lottery_branch", "retrain", "--levels=2", *lottery(tmp_path), "--retrain_lr=0.0005")[0]
        == 0
    )
    metrics = pd.read_csv(branch_dir(tmp_path, "retrain", 2) / "main" / "metrics.csv")
    assert set(metrics[metrics.name == "learning_rate"].value) == {0.0005}


@pytest.mark.parametrize(
    "flags,expected",
    [
        # an empty root: no lottery run at all (issue 19: say so, not "level 3 not trained")
        (["--levels=3"], "no lottery run with these flags under"),
        (["--levels=0", "--noise_seeds=4,4"], "--noise_seeds 4,4: the two seeds must differ"),
        (["--levels=0", "--noise_seeds=4"], "give two integers"),
        (["--levels=0", "--interpolation_points=1"], "--interpolation_points must be at least 2"),
        (["--levels=0", "--bn_stats=freeze"], "--bn_stats must be interpolate or recompute"),
        (["--levels=x"], "--levels 'x': write levels like 0,3-5"),
    ],
)
def test_bad_branch_input(cli, tmp_path: Path, flags: list[str], expected: str) -> None:
    root = tmp_path / "runs"
    code, _, err = cli("lottery_branch", "instability", *lottery(root), *flags)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not root.exists()


def test_untrained_level_says_what_to_run(cli, tmp_path: Path) -> None:
    assert cli("lottery", *lottery(tmp_path), "--levels=1")[0] == 0
    code, _, err = cli("lottery_branch", "instability", "--levels=1-3", *lottery(tmp_path))
    assert code == 2 and "level 2 of" in err and "--levels=3" in err
    assert not list(tmp_path.glob("lottery_*/replicate_1/level_1/instability_*"))
