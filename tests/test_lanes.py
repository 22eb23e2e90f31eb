"""A pack as several networks side by side (Lanes, --pack_streams): each lane a stack of
K/L copies that steps on its own CUDA stream. On a CPU the lanes step in turn, which is
what these tests check: the numbers, the per-run checkpoints and a resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CIFAR, DATA, REPO, lenet_lottery
from open_lth.foundations import paths
from open_lth.foundations.hparams import DatasetHparams, ModelHparams, TrainingHparams
from open_lth.foundations.model import build_model
from open_lth.main import load_plugins
from open_lth.training import loop, trainer
from open_lth.training.data import load
from open_lth.training.loop import Loop
from open_lth.training.schedule import build_optimizer
from open_lth.training.stacked import (
    Lanes,
    stack,
    stack_optimizer_state,
    stack_state,
    unstack_optimizer_state,
    unstack_state,
)
from open_lth.training.trainer import Copy, Seeds, Stage, TrainOptions

load_plugins()
CPU = torch.device("cpu")
LENET = ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform")


def models(k: int) -> list[torch.nn.Module]:
    return [build_model(LENET, 10, seed) for seed in range(1, k + 1)]


def test_lanes_hold_each_copy_where_its_state_says() -> None:
    nets = models(4)
    lanes = stack(nets, lanes=2)
    assert isinstance(lanes, Lanes) and lanes.copies == 4 and lanes.per_lane == 2
    states = [n.state_dict() for n in nets]
    assert stack_state(states, lanes).keys() == lanes.state_dict().keys()
    for a, b in zip(unstack_state(lanes.state_dict(), lanes), states, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    # Each copy's output sits in its own columns, as a network alone computes it.
    x = torch.randn(5, 784)
    out = lanes(x.repeat(1, 4)).view(5, 4, 10)
    for j, net in enumerate(nets):
        torch.testing.assert_close(out[:, j], net(x), rtol=1e-5, atol=1e-6)
    # Adam's state for 4 copies alone, through the lanes' one optimizer, and back.
    training = TrainingHparams("adam", 1e-3, "1it")
    alone = []
    for net in nets:
        optimizer = build_optimizer(training, list(net.parameters()))
        net(x).sum().backward()
        optimizer.step()
        alone.append(optimizer.state_dict())
    optimizer = build_optimizer(training, list(lanes.parameters()))
    optimizer.load_state_dict(stack_optimizer_state(alone, lanes))
    back = unstack_optimizer_state(optimizer.state_dict(), lanes)
    for a, b in zip(back, alone, strict=True):
        assert a["param_groups"] == b["param_groups"]
        for i, entry in b["state"].items():
            assert all(torch.equal(a["state"][i][key], value) for key, value in entry.items())


def test_the_lanes_a_pack_trains_as() -> None:
    options = TrainOptions(pack_streams=4)
    assert trainer.lanes(8, None, options) == 4
    assert trainer.lanes(6, None, options) == 3  # the largest divisor below
    assert trainer.lanes(2, None, options) == 2
    assert trainer.lanes(8, Path("pair.pt"), options) == 1  # one job: one network


BUILT: list[torch.nn.Module] = []  # the network each fit trained


RESNET = ModelHparams("cifar_resnet_8", "kaiming_normal", "uniform")


def fit(
    out: Path,
    streams: int,
    crash_after: int | None = None,
    k: int = 4,
    device: torch.device = CPU,
    graphs: str = "auto",
    resnet: bool = False,
    steps: int = 45,
    lr: float = 0.05,
) -> list[dict]:
    """K LeNets (a pack: a checkpoint each) for 45 iterations on 1,200 MNIST images; or
    K ResNet-8s on 500 augmented CIFAR-10 images."""
    if resnet:
        hp, root = DatasetHparams("cifar10", 32, subsample_fraction=0.1), CIFAR
        training = TrainingHparams("sgd", lr, f"{steps}it", momentum=0.9, weight_decay=1e-4)
    else:
        hp, root = DatasetHparams("mnist", 60, subsample_fraction=0.02), DATA
        training = TrainingHparams("adam", 1.2e-3, f"{steps}it")
    train_data, _ = load(hp, root, True, device)
    test_data, _ = load(hp, root, False, device)
    copies = [Copy(out / str(j), Seeds(j, j)) for j in range(k)]
    every = f"{min(15, steps)}it"
    options = TrainOptions(every, "10it", quiet=True, cuda_graphs=graphs, pack_streams=streams)
    nets = [
        build_model(RESNET if resnet else LENET, 10, seed).to(device) for seed in range(1, k + 1)
    ]
    real = loop.make_step
    calls = [0]

    def crashing(*args: object) -> object:
        step = real(*args)
        BUILT.append(args[0].net)

        def take(x: object, y: object, lr: float) -> None:
            calls[0] += 1
            if crash_after is not None and calls[0] > crash_after:
                raise RuntimeError("killed")
            step(x, y, lr)

        return take

    loop.make_step = crashing
    try:
        stage = Stage(training, train_data, test_data, hp.batch_size, copies, options)
        Loop(nets, stage).run()
    finally:
        loop.make_step = real
    return [torch.load(paths.weights(c.out, steps), weights_only=True) for c in copies]


def same(a: list[dict], b: list[dict], atol: float = 0.0) -> bool:
    return all(
        x.keys() == y.keys() and all(torch.allclose(x[n], y[n], 0, atol) for n in x)
        for x, y in zip(a, b, strict=True)
    )


def test_a_pack_in_lanes_trains_as_stacked_and_resumes(tmp_path: Path) -> None:
    two = fit(tmp_path / "two", streams=2)
    assert isinstance(BUILT[-1], Lanes) and len(BUILT[-1].lanes) == 2
    # One lane a copy: every run steps exactly as alone.
    one_each = fit(tmp_path / "four", streams=4)
    assert isinstance(BUILT[-1], Lanes) and BUILT[-1].per_lane == 1
    alone = fit(tmp_path / "alone", streams=1, k=1)
    assert same(one_each[:1], alone)
    # Lanes of two stacked copies against one stack of four: float tolerance.
    assert same(two, fit(tmp_path / "one", streams=1), atol=1e-5)
    # Killed after 27 steps (its checkpoints at 20), then resumed: to the bit.
    with pytest.raises(RuntimeError, match="killed"):
        fit(tmp_path / "resumed", streams=2, crash_after=27)
    assert paths.checkpoint(tmp_path / "resumed" / "0").exists()
    assert same(fit(tmp_path / "resumed", streams=2), two)
    # The per-run checkpoints are the same whatever the lanes: resumed as one stack.
    with pytest.raises(RuntimeError, match="killed"):
        fit(tmp_path / "restacked", streams=2, crash_after=27)
    assert same(fit(tmp_path / "restacked", streams=1), two, atol=1e-5)


def test_resnet_lanes_with_batchnorm_and_augmentation(tmp_path: Path) -> None:
    """Over the first steps: SGD at 0.05 through BatchNorm on 500 images amplifies any
    rounding about tenfold a step (6e-8 apart after one step, 8e-6 after two, 9e-5 after
    three), as it does a stacked pack's from its runs alone."""
    two = fit(tmp_path / "two", streams=2, resnet=True, steps=2)
    assert isinstance(BUILT[-1], Lanes) and BUILT[-1].is_convolutional
    assert same(two, fit(tmp_path / "one", streams=1, resnet=True, steps=2), atol=2e-5)


def test_pack_streams_on_the_command_line(cli, tmp_path: Path) -> None:
    run = lenet_lottery(tmp_path, "--training_steps=6it", "--levels=1", "--replicates=1-2")
    code, _, err = cli(*run, "--pack_streams=0")
    assert code == 2 and "--pack_streams must be a positive integer, got 0" in err
    code, _, err = cli(*run, "--pack_streams=2", "--compile")
    assert code == 2 and "--pack_streams does not combine with --compile" in err
    assert not any(tmp_path.iterdir())
    code, _, err = cli(*run, "--pack_streams=2")
    assert code == 0, err
    code, out, _ = cli(*run, "--display_output_location")
    assert code == 0 and len(out.split()) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("resnet", [False, True], ids=["lenet", "resnet8"])
def test_lanes_replayed_on_streams_follow_one_eager_stack(
    tmp_path: Path, resnet: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two lanes on two CUDA streams of one replayed graph (3 eager warm-up steps, then
    replays) against one stack of the four copies stepped eagerly: rounding apart (a
    lane or stream mix-up is off by O(0.1)). TF32 off, and a gentler SGD rate for the
    ResNet, so that ten steps do not amplify rounding past the bound."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    gpu, steps = torch.device("cuda"), 10
    kwargs = {"device": gpu, "resnet": resnet, "steps": steps, "lr": 0.01}
    lanes = fit(tmp_path / "lanes", streams=2, graphs="on", **kwargs)  # capture or fail
    assert isinstance(BUILT[-1], Lanes)
    stacked = fit(tmp_path / "stacked", streams=1, graphs="off", **kwargs)
    assert same(lanes, stacked, atol=2e-3)


def test_a_study_passes_pack_streams_to_its_packs(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, str(REPO / "experiments" / "lenet_fisher_vs_magnitude.py"),
            "--quick", f"--root={tmp_path}", f"--dataset_root={DATA}",
            "--pack=6", "--pack_streams=2", "--print_commands",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    packs = [line for line in done.stdout.splitlines() if " pack " in line]
    assert packs and all("--pack_streams=2" in line for line in packs), done.stdout
