"""The training step's two paths: eager, and static buffers replayed from a CUDA graph.

On a CPU the static-buffer step runs eagerly and must equal the eager step to the bit,
which guards the graph path's logic in CI. The tests marked `cuda` run where a GPU is:
graph against eager, the --fp16 scaled step in a graph, a capture that fails, files that
open without CUDA, and a killed GPU run resumed (bit-identical with --deterministic)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CIFAR, DATA, REPO
from open_lth.foundations import errors, paths
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DatasetHparams, ModelHparams, TrainingHparams
from open_lth.foundations.model import build_model
from open_lth.main import load_plugins
from open_lth.training import loop
from open_lth.training.data import BatchesInStep, load
from open_lth.training.loop import Loop
from open_lth.training.precision import layout
from open_lth.training.schedule import build_optimizer
from open_lth.training.stacked import stack, stack_state
from open_lth.training.train_step import (
    WARMUP_STEPS,
    EagerStep,
    FallbackStep,
    StaticStep,
    StepParts,
    make_step,
)
from open_lth.training.trainer import Copy, Seeds, Stage, TrainOptions

load_plugins()
CPU = torch.device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LENET = ("mnist_lenet_300_100", "mnist", DATA, 60, TrainingHparams("adam", 1.2e-3, "1ep"))
RESNET = (
    "cifar_resnet_8",
    "cifar10",
    CIFAR,
    32,
    TrainingHparams("sgd", 0.1, "1ep", momentum=0.9, weight_decay=1e-4, nesterov_momentum=True),
)


def parts_for(
    spec: tuple, copies: int, device: torch.device, seed: int = 3
) -> tuple[StepParts, torch.nn.Module]:
    """A fresh network (K stacked copies), its optimizer and a random mask, on `device`."""
    name, _, _, _, training = spec
    hp = ModelHparams(name, "kaiming_normal", "uniform")
    models = [build_model(hp, 10, seed + i) for i in range(copies)]
    mask = {}
    g = torch.Generator().manual_seed(0)
    for n in models[0].prunable_layer_names:
        shape = dict(models[0].named_parameters())[n].shape
        mask[n] = (torch.rand(shape, generator=g) < 0.5).float()
    net = models[0] if copies == 1 else stack(models)
    if copies > 1:
        mask = stack_state([mask] * copies, net)
    net = net.to(device)
    if device.type == "cuda" and getattr(net, "is_convolutional", False):
        net = net.to(memory_format=torch.channels_last)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n, m in mask.items():
            params[n].mul_(m.to(device))
    masked = [(params[n], m.to(device)) for n, m in mask.items()]
    optimizer = build_optimizer(training, list(net.parameters()))
    sums = torch.zeros(copies, dtype=torch.float64, device=device)
    correct = torch.zeros(copies, dtype=torch.int64, device=device)
    return StepParts(net, net, optimizer, masked, copies, False, sums, correct), net


def batches(spec: tuple, copies: int, device: torch.device, steps: int) -> list:
    _, dataset, root, batch, _ = spec
    data, _ = load(DatasetHparams(dataset, batch, subsample_fraction=0.1), root, True, device)
    g = torch.Generator(device).manual_seed(1)
    out = []
    for s in range(steps):
        xs, ys = [], []
        for c in range(copies):
            index = data.order(c, 0)[s * batch : (s + 1) * batch]
            x, y = data.batch(index, g)
            xs.append(x)
            ys.append(y)
        # A schedule that changes every step: the static step must follow it. Values that
        # float32 holds exactly, as the static step's lr tensor is float32 (CUDA's fused
        # kernels compute in float32 either way; the CPU's fused Adam uses doubles).
        lr = float(torch.tensor(0.05 / (s + 1), dtype=torch.float32))
        out.append((torch.cat(xs, dim=1), torch.stack(ys, dim=1), lr))
    return out


def run(step: object, data: list) -> None:
    for x, y, lr in data:
        step(x, y, lr)


@pytest.mark.parametrize("spec", [LENET, RESNET], ids=["lenet", "resnet8"])
@pytest.mark.parametrize("copies", [1, 2])
def test_static_step_equals_the_eager_step_on_the_cpu(spec: tuple, copies: int) -> None:
    data = batches(spec, copies, CPU, 6)
    eager_parts, eager_net = parts_for(spec, copies, CPU)
    static_parts, static_net = parts_for(spec, copies, CPU)
    run(EagerStep(eager_parts), data)
    static = StaticStep(static_parts, capture=False)
    run(static, data)
    assert static.graph is None
    for (name, a), b in zip(eager_net.state_dict().items(), static_net.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(eager_parts.loss_sum, static_parts.loss_sum)
    assert torch.equal(eager_parts.correct, static_parts.correct)
    assert eager_parts.loss_sum.gt(0).all() and eager_parts.correct.gt(0).all()
    # The static step really used its tensor learning rate.
    assert static.lr.item() == pytest.approx(data[-1][2])


def in_step_batches(copies: int, device: torch.device, steps: int) -> tuple:
    """MNIST (no augmentation) drawn two ways: by the trainer's slices of the epoch's
    orders, outside the step, and by a BatchesInStep source for the same steps."""
    _, dataset, root, batch, _ = LENET
    data, _ = load(DatasetHparams(dataset, batch, subsample_fraction=0.1), root, True, device)
    orders = torch.stack([data.order(c, 0) for c in range(copies)])
    lrs = [float(torch.tensor(0.05 / (s + 1), dtype=torch.float32)) for s in range(steps)]
    outside = [
        (*data.copies_batch(orders[:, s * batch : (s + 1) * batch]), lrs[s]) for s in range(steps)
    ]
    source = BatchesInStep(data, copies, batch)
    source.set_epoch(orders)
    return outside, source, lrs


def run_in_step(step: object, source: BatchesInStep, lrs: list[float]) -> None:
    for s, lr in enumerate(lrs):
        source.set_step(s * source.span.numel())
        step(None, None, lr)


@pytest.mark.parametrize("copies", [1, 3])
def test_a_batch_drawn_inside_the_step_equals_one_drawn_outside(copies: int) -> None:
    outside, source, lrs = in_step_batches(copies, CPU, 6)
    source.set_step(2 * 60)
    x, y = source()
    assert torch.equal(x, outside[2][0]) and torch.equal(y, outside[2][1])
    eager_parts, eager_net = parts_for(LENET, copies, CPU)
    static_parts, static_net = parts_for(LENET, copies, CPU)
    run(EagerStep(eager_parts), outside)
    static_parts.source = source
    run_in_step(StaticStep(static_parts, capture=False), source, lrs)
    for (name, a), b in zip(eager_net.state_dict().items(), static_net.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(eager_parts.loss_sum, static_parts.loss_sum)
    assert torch.equal(eager_parts.correct, static_parts.correct)
    with pytest.raises(ValueError, match="without augmentation"):
        cifar, _ = load(DatasetHparams("cifar10", 32), CIFAR, True, CPU)
        BatchesInStep(cifar, 1, 32)


def test_the_trainer_draws_inside_a_replayed_step(tmp_path: Path, monkeypatch) -> None:
    """The trainer's own path for a graphed step on data without augmentation (the
    source, its epoch orders and positions, across an epoch boundary), run on a CPU
    with the static step eager: the same weights and metrics, to the bit, as the plain
    eager trainer; and a second run resumed halfway agrees too."""
    hp = DatasetHparams("mnist", 60, subsample_fraction=0.02)  # 1,200 images: 20 it/epoch
    train_data, _ = load(hp, DATA, True, CPU)
    test_data, _ = load(hp, DATA, False, CPU)
    # A rate float32 holds exactly, as the static step's lr tensor is float32.
    training = TrainingHparams("adam", 2**-10, "45it")
    model_hp = ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform")
    used, crash_after = [], [None]

    def static_step(parts, mode, device, name):  # what make_step gives on CUDA
        step = FallbackStep(StaticStep(parts, capture=False), mode, name)
        used.append(step)
        if crash_after[0] is None:
            return step

        def crashing(x, y, lr):  # killed between two checkpoints
            crash_after[0] -= 1
            if crash_after[0] < 0:
                raise RuntimeError("killed")
            step(x, y, lr)

        return crashing

    def fit(out: Path, checkpoint_every: str | None = None) -> dict:
        models = [build_model(model_hp, 10, seed) for seed in (1, 2)]
        copies = [Copy(out / str(j), Seeds(j, j)) for j in range(2)]
        options = TrainOptions(eval_every="15it", checkpoint_every=checkpoint_every, quiet=True)
        Loop(models, Stage(training, train_data, test_data, 60, copies, options)).run()
        return {j: torch.load(paths.weights(out / str(j), 45), weights_only=True) for j in (0, 1)}

    plain = fit(tmp_path / "plain")
    monkeypatch.setattr(loop, "make_step", static_step)
    inside = fit(tmp_path / "inside")
    assert used and used[0].step.parts.source is not None
    crash_after[0] = 27
    with pytest.raises(RuntimeError, match="killed"):
        fit(tmp_path / "resumed", checkpoint_every="10it")
    crash_after[0] = None
    resumed = fit(tmp_path / "resumed", checkpoint_every="10it")  # from iteration 20
    strip = lambda t: [r for r in t.splitlines() if "wall_seconds" not in r]  # noqa: E731
    for j in (0, 1):
        for name, value in plain[j].items():
            assert torch.equal(value, inside[j][name]), (j, name)
            assert torch.equal(value, resumed[j][name]), (j, name)
        a = (tmp_path / "plain" / str(j) / "metrics.csv").read_text()
        for other in ("inside", "resumed"):
            assert strip(a) == strip((tmp_path / other / str(j) / "metrics.csv").read_text())


def test_graphs_are_eager_without_cuda() -> None:
    parts, _ = parts_for(LENET, 1, CPU)
    assert isinstance(make_step(parts, "auto", CPU, "Model"), EagerStep)
    with pytest.raises(UserError, match="--cuda_graphs=on needs a CUDA device"):
        make_step(parts, "on", CPU, "Model")
    with pytest.raises(UserError, match="--cuda_graphs must be one of auto, on, off"):
        make_step(parts, "sometimes", CPU, "Model")


# ------------------------------------------------------------------ on a GPU


@cuda
@pytest.mark.parametrize("spec", [LENET, RESNET], ids=["lenet", "resnet8"])
@pytest.mark.parametrize("copies", [1, 2])
def test_graph_replay_equals_eager_on_the_gpu(spec: tuple, copies: int, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    # cuDNN's default kernels may sum in a different order on every call (atomics), and
    # eight SGD steps through BatchNorm amplify that; its deterministic kernels do not.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    gpu = torch.device("cuda")
    data = batches(spec, copies, gpu, WARMUP_STEPS + 5)
    eager_parts, eager_net = parts_for(spec, copies, gpu)
    graph_parts, graph_net = parts_for(spec, copies, gpu)
    run(EagerStep(eager_parts), data)
    step = make_step(graph_parts, "on", gpu, "Model")
    run(step, data)
    assert step.step.graph is not None  # the last steps were replays
    for (name, a), b in zip(eager_net.state_dict().items(), graph_net.state_dict().values()):
        if a.is_floating_point():
            # Float tolerance, as a whole tensor: a wrong lr, mask or buffer is off by O(1).
            assert (a - b).norm() <= 1e-3 * a.norm() + 1e-6, name
        else:
            assert torch.equal(a, b), name
    torch.testing.assert_close(eager_parts.loss_sum, graph_parts.loss_sum, rtol=1e-4, atol=0)
    x = layout(graph_net, data[0][0])
    assert graph_net(x).isfinite().all()


@cuda
@pytest.mark.parametrize("copies", [1, 2])
def test_a_replayed_graph_draws_its_own_batches(copies: int, monkeypatch) -> None:
    """The graph holds the batch's gather: each replay reads the position the host
    wrote, so it follows the eager steps on the batches drawn outside."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    gpu = torch.device("cuda")
    outside, source, lrs = in_step_batches(copies, gpu, WARMUP_STEPS + 5)
    eager_parts, eager_net = parts_for(LENET, copies, gpu)
    graph_parts, graph_net = parts_for(LENET, copies, gpu)
    run(EagerStep(eager_parts), outside)
    graph_parts.source = source
    step = make_step(graph_parts, "on", gpu, "Model")
    run_in_step(step, source, lrs)
    assert step.step.graph is not None
    for (name, a), b in zip(eager_net.state_dict().items(), graph_net.state_dict().values()):
        assert (a - b).norm() <= 1e-3 * a.norm() + 1e-6, name
    torch.testing.assert_close(eager_parts.correct, graph_parts.correct, rtol=0, atol=2)


@cuda
@pytest.mark.parametrize("spec", [LENET, RESNET], ids=["lenet-adam", "resnet8-sgd"])
@pytest.mark.parametrize("copies", [1, 2])
def test_the_fp16_step_replays_from_a_graph(spec: tuple, copies: int, monkeypatch) -> None:
    """--fp16's scaled step is captured (no fallback) and follows the eager scaled step;
    an infinite gradient injected inside a replay (a device tensor the graph reads)
    skips the step there too: weights unchanged, scale halved."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    gpu = torch.device("cuda")
    data = batches(spec, copies, gpu, WARMUP_STEPS + 5)
    nets, scalers, poison = [], [], torch.zeros((), device=gpu)
    for graphed in (False, True):
        parts, net = parts_for(spec, copies, gpu)
        parts.scaler = torch.amp.GradScaler("cuda")
        next(net.parameters()).register_hook(lambda g: g + poison)
        step = make_step(parts, "on", gpu, "Model") if graphed else EagerStep(parts)
        for i, (x, y, lr) in enumerate(data):
            poison.fill_(torch.inf if i == len(data) - 1 else 0.0)
            before = [p.detach().clone() for p in net.parameters()]
            step(x, y, lr)
        assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
        nets.append(net)
        scalers.append(parts.scaler)
    assert step.step.graph is not None  # replayed, not fallen back to eager
    assert scalers[0].get_scale() == scalers[1].get_scale() == 2.0**15
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        if a.is_floating_point():
            assert (a - b).norm() <= 1e-2 * a.norm() + 1e-5, name  # float16 sums
        else:
            assert torch.equal(a, b), name


class Syncs(torch.nn.Module):
    """A model that reads a value back to the host in its forward: not capturable."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        return out * (1.0 if out.sum().item() > -1e30 else 0.0)


@cuda
@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_model_that_cannot_be_captured(mode: str, capsys, monkeypatch) -> None:
    monkeypatch.setattr(errors, "_NOTED", set())  # the note is once a process
    gpu = torch.device("cuda")
    net = Syncs().to(gpu)
    training = TrainingHparams("sgd", 0.1, "1ep", momentum=0.9)
    sums = torch.zeros(1, dtype=torch.float64, device=gpu)
    correct = torch.zeros(1, dtype=torch.int64, device=gpu)
    parts = StepParts(net, net, build_optimizer(training, list(net.parameters())), [], 1, False,
                      sums, correct)  # fmt: skip
    step = make_step(parts, mode, gpu, "Syncs")
    assert isinstance(step, FallbackStep)
    data = batches(LENET, 1, gpu, WARMUP_STEPS + 3)
    if mode == "on":
        with pytest.raises(UserError, match="Syncs cannot be captured in a CUDA graph"):
            run(step, data)
        return
    run(step, data)
    err = capsys.readouterr().err
    assert err.count("cannot be captured in a CUDA graph") == 1, err
    assert step.eager is not None and sums.item() > 0
    assert net.fc.weight.isfinite().all()


CRASH_AFTER = """
import os, sys
sys.path.insert(0, os.getcwd())
import open_lth.training.loop as loop
real = loop.make_step
def make_step(*args, **kwargs):
    step, count = real(*args, **kwargs), [0]
    def crashing(x, y, lr):
        count[0] += 1
        if count[0] > {after}:
            os._exit(9)  # as SIGKILL: no checkpoint on the way out
        step(x, y, lr)
    return crashing
loop.make_step = make_step
from open_lth.main import main
sys.exit(main(sys.argv[1:]))
"""


def gpu_run(root: Path, spec: tuple, extra: list[str], crash_after: int | None = None) -> None:
    name, _, data_root, _, _ = spec
    family = "cifar_resnet_20" if "resnet" in name else name
    argv = [
        "train",
        f"--default_hparams={family}",
        f"--model_name={name}",
        f"--dataset_root={data_root}",
        f"--root={root}",
        "--training_steps=400it",
        "--eval_every=200it",
        "--checkpoint_every=100it",
        "--device=cuda",
        "--quiet",
        *extra,
    ]
    code = ["-c", CRASH_AFTER.format(after=crash_after)] if crash_after else ["main.py"]
    env = {**os.environ, "OPEN_LTH_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *code, *argv], cwd=REPO, env=env, capture_output=True)
    expected = 9 if crash_after else 0
    assert done.returncode == expected, done.stderr.decode()[-2000:]


@cuda
@pytest.mark.parametrize(
    "spec,extra",
    [(RESNET, ["--deterministic"]), (LENET, []), (RESNET, ["--deterministic", "--fp16"])],
    ids=["resnet8-deterministic", "lenet", "resnet8-fp16-deterministic"],
)
def test_a_killed_gpu_run_resumes(tmp_path: Path, spec: tuple, extra: list[str]) -> None:
    """With --fp16 the loss scaler's state comes back from the checkpoint too."""
    deterministic = "--deterministic" in extra
    gpu_run(tmp_path / "straight", spec, extra)
    gpu_run(tmp_path / "killed", spec, extra, crash_after=250)
    (killed,) = (tmp_path / "killed").glob("train_*/replicate_1/main")
    assert torch.load(paths.checkpoint(killed), weights_only=True)["iteration"] == 200
    gpu_run(tmp_path / "killed", spec, extra)
    (straight,) = (tmp_path / "straight").glob("train_*/replicate_1/main")
    a = torch.load(paths.weights(straight, 400), weights_only=True)
    b = torch.load(paths.weights(killed, 400), weights_only=True)
    for name in a:
        if deterministic:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=name)


@cuda
def test_gpu_results_open_without_cuda(tmp_path: Path) -> None:
    gpu_run(tmp_path, RESNET, [])
    gpu_run(tmp_path / "partial", RESNET, [], crash_after=150)
    (run_dir,) = tmp_path.glob("train_*/replicate_1/main")
    (partial,) = (tmp_path / "partial").glob("train_*/replicate_1/main")
    files = [paths.weights(run_dir, 0), paths.weights(run_dir, 400), paths.checkpoint(partial)]
    script = (
        "import sys, torch\n"
        "assert not torch.cuda.is_available()\n"
        "for f in sys.argv[1:]:\n"
        "    torch.load(f, weights_only=True)\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, files)], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    ckpt = torch.load(paths.checkpoint(partial), weights_only=True, map_location="cpu")
    tensors = [v for v in ckpt["optimizer"]["state"][0].values() if torch.is_tensor(v)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
