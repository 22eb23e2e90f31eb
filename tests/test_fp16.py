"""--fp16: float16 autocast on a GPU with a dynamic loss scaler (torch.amp.GradScaler).

On a CPU autocast stays off and only the scaler runs, which is what these tests check:
a step with a non-finite gradient is skipped (weights and optimizer state unchanged,
scale halved) without counting as divergence, the scale grows after its interval, and
a killed run resumes with its scaler to the bit. The graphed fp16 step's tests are in
test_train_step.py (they need a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train_step import LENET, RESNET, batches, parts_for

from conftest import DATA, lenet_args, lenet_lottery
from open_lth.foundations import errors, paths
from open_lth.foundations.errors import TrainingDiverged
from open_lth.foundations.hparams import DatasetHparams, ModelHparams, TrainingHparams
from open_lth.foundations.model import build_model
from open_lth.main import load_plugins
from open_lth.training import loop
from open_lth.training.data import load
from open_lth.training.loop import Loop
from open_lth.training.train_step import EagerStep, StaticStep
from open_lth.training.trainer import Copy, Seeds, Stage, TrainOptions, train

load_plugins()
CPU = torch.device("cpu")


def optimizer_state(parts: object) -> list[torch.Tensor]:
    return [v.clone() for s in parts.optimizer.state.values() for v in s.values()]


@pytest.mark.parametrize("spec", [LENET, RESNET], ids=["lenet-adam", "resnet8-sgd-momentum"])
def test_a_non_finite_gradient_skips_the_step(spec: tuple) -> None:
    data = batches(spec, 1, CPU, 4)
    plain, plain_net = parts_for(spec, 1, CPU)
    scaled, scaled_net = parts_for(spec, 1, CPU)
    scaled.scaler = torch.amp.GradScaler("cpu")
    run_plain, run_scaled = EagerStep(plain), StaticStep(scaled, capture=False)
    for x, y, lr in data[:3]:
        run_plain(x, y, lr)
        run_scaled(x, y, lr)
    # The scale is a power of two: with no overflow, scaling and unscaling are exact.
    for (name, a), b in zip(plain_net.state_dict().items(), scaled_net.state_dict().values()):
        assert torch.equal(a, b), name
    assert scaled.scaler.get_scale() == 2.0**16

    weights = [p.detach().clone() for p in scaled_net.parameters()]
    moments = optimizer_state(scaled)
    poison = next(scaled_net.parameters()).register_hook(lambda g: torch.full_like(g, torch.inf))
    x, y, lr = data[3]
    run_scaled(x, y, lr)
    poison.remove()
    assert all(torch.equal(a, b) for a, b in zip(weights, scaled_net.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(moments, optimizer_state(scaled), strict=True))
    assert scaled.scaler.get_scale() == 2.0**15
    assert scaled.loss_sum.isfinite().all()  # the loss was finite: not a divergence


def test_the_scale_grows_after_its_interval() -> None:
    data = batches(LENET, 1, CPU, 5)
    parts, _ = parts_for(LENET, 1, CPU)
    parts.scaler = torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=2)
    step = EagerStep(parts)
    scales = []
    for x, y, lr in data:
        step(x, y, lr)
        scales.append(parts.scaler.get_scale())
    assert scales == [4.0, 8.0, 8.0, 16.0, 16.0]


def test_fp16_and_bf16_are_refused_together(cli, tmp_path: Path) -> None:
    code, out, err = cli(*lenet_args(tmp_path, "--fp16", "--bf16"))
    assert code == 2
    assert err.strip() == "error: --fp16 and --bf16 exclude each other; pick one"
    assert not any(tmp_path.iterdir())


def test_fp16_on_a_cpu_says_so_once(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(errors, "_NOTED", set())
    code, _, err = cli(*lenet_lottery(tmp_path, "--training_steps=20it", "--levels=2", "--fp16"))
    assert code == 0, err
    notes = [line for line in err.splitlines() if "--fp16" in line]
    assert notes == ["note: --fp16 on cpu: autocast is off (float32); only the loss scaler runs"]
    (level,) = tmp_path.glob("lottery_*/replicate_1/level_1/main")
    assert paths.weights(level, 20).exists()


HP = DatasetHparams("mnist", 60, subsample_fraction=0.02)  # 1,200 images: 20 it/epoch
MODEL = ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform")
SKIPPED = {5, 24}  # iterations whose gradients are made infinite
MAKE_STEP = loop.make_step


def poisoned(start: int, crash_at: int | None = None, nan_loss_at: int | None = None):
    """make_step whose step makes one weight's gradient infinite at the SKIPPED
    iterations (counted from `start`), feeds a NaN input at `nan_loss_at`, and raises at
    `crash_at` (a kill between two checkpoints)."""

    def make_step(parts, mode, device, name):  # noqa: ANN001, ANN202
        step, now, flag = MAKE_STEP(parts, mode, device, name), [start], [False]
        next(parts.net.parameters()).register_hook(
            lambda g: torch.full_like(g, torch.inf) if flag[0] else g
        )

        def poisoned_step(x, y, lr):  # noqa: ANN001, ANN202
            if now[0] == crash_at:
                raise RuntimeError("killed")
            flag[0] = now[0] in SKIPPED
            if now[0] == nan_loss_at:
                x = torch.full_like(x, torch.nan)
            step(x, y, lr)
            now[0] += 1

        return poisoned_step

    return make_step


def fit_pack(out: Path, checkpoint_every: str | None = None) -> dict:
    train_data, _ = load(HP, DATA, True, CPU)
    test_data, _ = load(HP, DATA, False, CPU)
    training = TrainingHparams("adam", 2**-10, "45it", fp16=True)
    models = [build_model(MODEL, 10, seed) for seed in (1, 2)]
    copies = [Copy(out / str(j), Seeds(j, j)) for j in range(2)]
    options = TrainOptions(eval_every="15it", checkpoint_every=checkpoint_every, quiet=True)
    assert Loop(models, Stage(training, train_data, test_data, 60, copies, options)).run() == {}
    return {j: torch.load(paths.weights(out / str(j), 45), weights_only=True) for j in (0, 1)}


def test_a_killed_fp16_pack_resumes_with_its_scaler(tmp_path: Path, monkeypatch) -> None:
    """Two skipped steps, one before and one after the checkpoint the killed pack
    resumes from: the same weights and metrics, to the bit, as the pack never killed,
    and each run's checkpoint held the pack's halved scale."""
    monkeypatch.setattr(loop, "make_step", poisoned(0))
    straight = fit_pack(tmp_path / "straight")
    monkeypatch.setattr(loop, "make_step", poisoned(0, crash_at=27))
    with pytest.raises(RuntimeError, match="killed"):
        fit_pack(tmp_path / "resumed", checkpoint_every="10it")
    for j in (0, 1):
        ckpt = torch.load(paths.checkpoint(tmp_path / "resumed" / str(j)), weights_only=True)
        assert ckpt["iteration"] == 20
        assert ckpt["grad_scaler"]["scale"] == 2.0**15  # halved once, at iteration 5
        assert ckpt["grad_scaler"]["_growth_tracker"] == 14  # finite steps since
    monkeypatch.setattr(loop, "make_step", poisoned(20))
    resumed = fit_pack(tmp_path / "resumed", checkpoint_every="10it")
    strip = lambda t: [r for r in t.splitlines() if "wall_seconds" not in r]  # noqa: E731
    for j in (0, 1):
        for name, value in straight[j].items():
            assert torch.equal(value, resumed[j][name]), (j, name)
        a = (tmp_path / "straight" / str(j) / "metrics.csv").read_text()
        assert strip(a) == strip((tmp_path / "resumed" / str(j) / "metrics.csv").read_text())


def test_a_nan_loss_still_diverges_with_fp16(tmp_path: Path, monkeypatch) -> None:
    train_data, _ = load(HP, DATA, True, CPU)
    test_data, _ = load(HP, DATA, False, CPU)
    monkeypatch.setattr(loop, "make_step", poisoned(0, nan_loss_at=7))
    training = TrainingHparams("adam", 2**-10, "20it", fp16=True)
    with pytest.raises(TrainingDiverged, match="NaN or infinite by iteration 8"):
        train(build_model(MODEL, 10, 1), training, train_data, test_data, 60, tmp_path,
              Seeds(1, 1), TrainOptions(quiet=True))  # fmt: skip
