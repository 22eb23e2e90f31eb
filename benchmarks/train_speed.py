"""LeNet-300-100 training throughput on real MNIST (CPU, batch 60): the framework's
trainer against a conventional per-example Dataset + DataLoader loop (PIL image ->
tensor -> normalize, as open_lth feeds data), both in this process, and both against
the physical limit (the model's FLOPs per step over this CPU's measured matmul rate).

    python benchmarks/train_speed.py [--dataset_root=../shared/data] [--steps=1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.foundations.hparams import DatasetHparams, ModelHparams, TrainingHparams  # noqa: E402
from open_lth.foundations.model import build_model  # noqa: E402
from open_lth.training.data import DeviceData, load  # noqa: E402
from open_lth.training.metrics import read_rows  # noqa: E402
from open_lth.training.trainer import Seeds, TrainOptions, train  # noqa: E402

MEAN, STD = 0.1307, 0.3081
BATCH = 60
LENET = ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform")


class PilMnist(torch.utils.data.Dataset):
    """The conventional pipeline, step for step what open_lth runs through torchvision:
    Image.fromarray, then ToTensor and Normalize (re-implemented here with the same
    operations, because torchvision does not install on this machine)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images[:, 0].numpy()
        self.labels = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        pic = Image.fromarray(self.images[i], mode="L")
        # ToTensor
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
        img = img.permute((2, 0, 1)).contiguous().to(dtype=torch.float32).div(255)
        # Normalize
        mean = torch.as_tensor([MEAN], dtype=img.dtype, device=img.device)
        std = torch.as_tensor([STD], dtype=img.dtype, device=img.device)
        if (std == 0).any():
            raise ValueError("std evaluated to zero")
        return img.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1)), self.labels[i]


def baseline_its(images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """open_lth's loop: DataLoader (shuffle, batch 60, no workers), Adam."""
    model = build_model(LENET, 10, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    loader = torch.utils.data.DataLoader(PilMnist(images, labels), batch_size=BATCH, shuffle=True)
    batches = iter(loader)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def framework_its(data: tuple[DeviceData, DeviceData], steps: int) -> float:
    """The real trainer; its wall_seconds metric leaves out the evaluations."""
    training = TrainingHparams("adam", 1.2e-3, f"{steps}it")
    model = build_model(LENET, 10, seed=1)
    with tempfile.TemporaryDirectory() as out:
        options = TrainOptions(f"{steps}it", f"{steps}it", quiet=True)
        train(model, training, *data, BATCH, Path(out), Seeds(1, 1), options)
        seconds = [
            v for _, name, v in read_rows(Path(out) / "metrics.csv") if name == "wall_seconds"
        ]
    return steps / seconds[-1]


def matmul_gflops() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    n, start = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    return n * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


def lenet_flops_per_step() -> float:
    """Forward 2·B·Σ(in·out); backward twice that (input and weight gradients)."""
    layers = [(784, 300), (300, 100), (100, 10)]
    forward = 2 * BATCH * sum(i * o for i, o in layers)
    return 3 * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(__file__).resolve().parents[2] / "shared/data"
    parser.add_argument("--dataset_root", default=str(default_root))
    parser.add_argument("--steps", type=int, default=500, help="steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; median kept")
    args = parser.parse_args()
    from open_lth.main import load_plugins

    load_plugins()
    torch.manual_seed(0)
    root = Path(args.dataset_root)
    hp = DatasetHparams("mnist", BATCH)
    device = torch.device("cpu")
    data = (load(hp, root, True, device)[0], load(hp, root, False, device)[0])
    images, labels = data[0].images, data[0].labels

    framework_its(data, 50)  # warm-up: lazy imports and first calls
    baseline_its(images, labels, 50)
    # Alternating rounds, so that a noisy neighbour slows both sides alike.
    ours, base = [], []
    for _ in range(args.rounds):
        base.append(baseline_its(images, labels, args.steps))
        ours.append(framework_its(data, args.steps))
    ratio = statistics.median(o / b for o, b in zip(ours, base, strict=True))
    o, b = statistics.median(ours), statistics.median(base)
    gflops = matmul_gflops()
    limit = gflops * 1e9 / lenet_flops_per_step()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"baseline (PIL + ToTensor + Normalize, DataLoader): {b:8.1f} it/s")
    print(f"framework (device-resident batches, trainer):      {o:8.1f} it/s")
    print(f"speed-up: {ratio:.2f}x (median of rounds; target: at least 3x)")
    print(
        f"physical limit: {lenet_flops_per_step() / 1e6:.1f} MFLOP/step at {gflops:.1f} GFLOP/s "
        f"(1024^3 sgemm) = {limit:.0f} it/s; the framework reaches {o / limit:.0%} of it"
    )


if __name__ == "__main__":
    main()
