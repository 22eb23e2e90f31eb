"""The trainer itself: masks, schedules, and a ResNet learning on real CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import CIFAR, DATA, lenet_lottery
from open_lth.foundations import errors, paths
from open_lth.foundations.hparams import DatasetHparams, ModelHparams, TrainingHparams
from open_lth.foundations.model import build_model
from open_lth.main import load_plugins
from open_lth.training import precision
from open_lth.training.data import load
from open_lth.training.schedule import lr_schedule
from open_lth.training.trainer import Seeds, TrainOptions, train

load_plugins()
CPU = torch.device("cpu")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_pruned_weights_stay_exactly_zero(tmp_path: Path, optimizer: str) -> None:
    hp = DatasetHparams("mnist", 60, subsample_fraction=0.05)
    train_data, _ = load(hp, DATA, True, CPU)
    test_data, _ = load(hp, DATA, False, CPU)
    model = build_model(ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform"), 10, 3)
    keep = torch.rand(300, 784, generator=torch.Generator().manual_seed(0)) < 0.3
    mask = {"fc_layers.0.weight": keep}
    start = model.fc_layers[0].weight.detach().clone()
    training = TrainingHparams(optimizer, 0.01, "60it", momentum=0.9, weight_decay=1e-3)
    train(
        model,
        training,
        train_data,
        test_data,
        60,
        tmp_path,
        Seeds(1, 1),
        TrainOptions(quiet=True),
        mask,
    )
    trained = torch.load(paths.weights(tmp_path, 60), weights_only=True)["fc_layers.0.weight"]
    # The optimizer never re-applies the mask: zero gradients alone keep them at zero,
    # so any momentum, Adam moment or weight decay leaking in would show here.
    assert torch.equal(trained[~keep], torch.zeros_like(trained[~keep]))
    assert (trained[keep] != start[keep]).float().mean() > 0.9
    initial = torch.load(paths.weights(tmp_path, 0), weights_only=True)["fc_layers.0.weight"]
    assert torch.equal(initial[~keep], torch.zeros_like(initial[~keep]))


def test_schedule_milestones_and_warmup() -> None:
    hp = TrainingHparams(
        "sgd", 0.1, "10ep", milestone_steps="2ep,3ep", gamma=0.1, warmup_steps="50it"
    )
    lr = lr_schedule(hp, 100)
    assert lr(0) == pytest.approx(0.1 / 50) and lr(49) == pytest.approx(0.1)
    assert lr(199) == pytest.approx(0.1) and lr(200) == pytest.approx(0.01)
    assert lr(300) == pytest.approx(0.001) and lr(999) == pytest.approx(0.001)


def test_resnet_learns_on_real_cifar10(cli, tmp_path: Path) -> None:
    code, _, _ = cli(
        "train",
        "--default_hparams=cifar_resnet_8",
        "--training_steps=150it",
        "--batch_size=64",
        "--eval_every=50it",
        f"--dataset_root={CIFAR}",
        f"--root={tmp_path}",
        "--quiet",
    )
    assert code == 0
    (run,) = tmp_path.glob("train_*/replicate_1/main")
    frame = pd.read_csv(paths.metrics(run))
    accuracy = frame[frame.name == "test_accuracy"].set_index("iteration").value
    assert accuracy[0] < 0.15 and accuracy[150] > 0.25  # chance is 0.10
    lr = frame[frame.name == "learning_rate"].value
    assert (lr == 0.1).all()


def test_bf16_where_it_does_not_pay_says_so_once(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(errors, "_NOTED", set())
    flags = lenet_lottery(tmp_path, "--training_steps=20it", "--levels=2", "--bf16")
    code, _, err = cli(*flags, "--device=cpu")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "--bf16" in line]
    assert notes == ["note: --bf16 has no effect on cpu: this run trains in float32"]

    # A GPU without bfloat16 tensor cores (Colab's T4), and one with them.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))
    note = precision.bf16_note(torch.device("cuda"))
    assert note is not None and "Tesla T4 (compute capability 7.5) runs emulated" in note
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert precision.bf16_note(torch.device("cuda")) is None
