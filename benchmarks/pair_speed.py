"""Instability analysis trains two copies of a network. This measures the two copies
trained together (stacked into one network, open_lth.training.stacked) against the same two
trained one after the other, in one process, through the real trainer.

    python benchmarks/pair_speed.py                       # LeNet-300-100, MNIST, CPU
    python benchmarks/pair_speed.py --model=cifar_resnet_20 --dataset=cifar10 \\
        --dataset_root=../shared/data/cifar10-subset --device=cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.foundations import registries  # noqa: E402
from open_lth.foundations.hparams import DatasetHparams, ModelHparams  # noqa: E402
from open_lth.foundations.model import build_model  # noqa: E402
from open_lth.training.data import load  # noqa: E402
from open_lth.training.loop import Loop  # noqa: E402
from open_lth.training.metrics import read_rows  # noqa: E402
from open_lth.training.trainer import Copy, Seeds, Stage, TrainOptions  # noqa: E402


def seconds(folder: Path) -> float:
    """The trainer's own wall clock, which leaves out its evaluations."""
    return [v for _, name, v in read_rows(folder / "metrics.csv") if name == "wall_seconds"][-1]


def run(args: argparse.Namespace, data: tuple, together: bool) -> float:
    """Iterations per second of the pair (2 × steps iterations in all)."""
    family = registries.models.get(args.model)
    defaults = family.default_hparams(args.model)
    training = defaults.training
    training = type(training)(**{**training.to_dict(), "training_steps": f"{args.steps}it"})
    model_hp = ModelHparams(args.model, "kaiming_normal", "uniform")
    models = [build_model(model_hp, 10, seed=1).to(args.device) for _ in range(2)]
    options = TrainOptions(f"{args.steps}it", f"{args.steps}it", quiet=True)
    batch = defaults.dataset.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        copies = [Copy(Path(tmp) / f"c{i}", Seeds(i, i)) for i in (1, 2)]
        for c in copies:
            c.out.mkdir()
        if together:
            Loop(models, Stage(training, *data, batch, copies, options, Path(tmp) / "ck.pt")).run()
        else:
            for m, c in zip(models, copies, strict=True):
                Loop([m], Stage(training, *data, batch, [c], options, c.out / "ck.pt")).run()
        total = sum(seconds(c.out) for c in copies) if not together else seconds(copies[0].out)
    return 2 * args.steps / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_lenet_300_100")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument(
        "--dataset_root", default=str(Path(__file__).resolve().parents[2] / "shared/data")
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.device = torch.device(args.device)
    from open_lth.main import load_plugins

    load_plugins()
    batch = registries.models.get(args.model).default_hparams(args.model).dataset.batch_size
    hp = DatasetHparams(args.dataset, batch)
    data = (
        load(hp, Path(args.dataset_root), True, args.device)[0],
        load(hp, Path(args.dataset_root), False, args.device)[0],
    )
    run(args, data, True)  # warm-up
    run(args, data, False)
    pairs, sequential = [], []
    for _ in range(args.rounds):  # alternating, so a noisy neighbour slows both alike
        sequential.append(run(args, data, False))
        pairs.append(run(args, data, True))
    ratio = statistics.median(p / s for p, s in zip(pairs, sequential, strict=True))
    print(f"{args.model} on {args.device}, batch {batch}, {args.steps} steps a copy")
    print(f"two copies one after the other: {statistics.median(sequential):8.1f} copy-it/s")
    print(f"two copies stacked together:    {statistics.median(pairs):8.1f} copy-it/s")
    print(f"speed-up of the pair: {ratio:.2f}x")


if __name__ == "__main__":
    main()
