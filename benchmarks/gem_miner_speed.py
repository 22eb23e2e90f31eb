"""Gem-Miner's released ResNet-20 search (CIFAR-10, batch 128, 150 epochs, pruning after
epochs 6, 11, ..., 146, so 146 epochs = 56,940 steps are run) eager against replayed
from a CUDA graph, all in one process on the same device.

Each figure is the search's steady state: two searches of different lengths (the
short one's steps, then the long one's), the difference of their wall times over the
difference of their steps, so the data loading, the warm-up and the capture cancel.
The training set is the CIFAR-10 folder's, tiled to CIFAR-10's 50,000 images (390
steps an epoch), so the epochs, the data order and the events are the released ones.

    python benchmarks/gem_miner_speed.py --dataset_root=<folder laid out like ../shared/data>
    python benchmarks/gem_miner_speed.py --device=cpu --model=cifar_resnet_8_4 --steps=6,12
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_speed import load_spec, sync_time, tiled  # noqa: E402

from open_lth.foundations import masks  # noqa: E402
from open_lth.foundations.hparams import PruningHparams  # noqa: E402
from open_lth.foundations.model import build_model  # noqa: E402
from open_lth.lottery.strategy import PruneContext  # noqa: E402
from open_lth.pruning.gem_miner import (  # noqa: E402
    GemMinerHparams,
    GemMinerStrategy,
    prune_events,
)

RELEASED_STEPS = (29 * 5 + 1) * 390  # to the last prune event, after epoch index 146


def search_seconds(spec: dict, model: str, steps: int, graphs: str) -> tuple[float, int]:
    """Wall seconds of one search of `steps` steps (its events every steps/4), and the
    steps it ran: it stops at its last event."""
    device = spec["train"].device
    model_hp = dataclasses.replace(spec["model_hp"], model_name=model)
    net = build_model(model_hp, 10, seed=1).to(device)
    hparams = GemMinerHparams(
        target_density=0.8**8, gem_miner_steps=f"{steps}it", gem_miner_prune_every=f"{steps // 4}it"
    )
    with tempfile.TemporaryDirectory() as tmp:
        ctx = PruneContext(
            net, masks.dense(net), spec["train"], PruningHparams("gem_miner"), 0, 1, net,
            spec["batch"], Path(tmp), quiet=True, cuda_graphs=graphs,
        )  # fmt: skip
        start = sync_time()
        GemMinerStrategy(hparams).prune(ctx, [])
        seconds = sync_time() - start
    ipe = len(spec["train"]) // spec["batch"]
    return seconds, prune_events(steps, steps // 4, ipe)[-1]


def steady_rate(spec: dict, model: str, lengths: tuple[int, int], graphs: str) -> float:
    (short, a), (long, b) = (search_seconds(spec, model, n, graphs) for n in lengths)
    return (b - a) / (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(__file__).resolve().parents[2] / "shared/data"
    parser.add_argument("--dataset_root", default=str(default_root))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="cifar_resnet_20")
    parser.add_argument("--steps", default="400,1600", help="the two search lengths")
    args = parser.parse_args()
    from open_lth.main import load_plugins

    load_plugins()
    device = torch.device(args.device)
    lengths = tuple(int(n) for n in args.steps.split(","))
    spec = load_spec("cifar_resnet_20", Path(args.dataset_root) / "cifar10-subset", device)
    spec["train"] = tiled(spec["train"], 50_000)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.model}, batch {spec['batch']}")
    modes = ["off", "auto"] if device.type == "cuda" else ["off"]
    rates = {}
    search_seconds(spec, args.model, lengths[0], modes[-1])  # warm-up: cuDNN, allocator
    for graphs in modes:
        rates[graphs] = steady_rate(spec, args.model, lengths, graphs)
        minutes = RELEASED_STEPS / rates[graphs] / 60
        label = "eager" if graphs == "off" else "CUDA graphs"
        print(
            f"  {label:<12} {rates[graphs]:8.1f} steps/s; the released search "
            f"({RELEASED_STEPS} steps): {minutes:6.1f} min",
            flush=True,
        )
    if "auto" in rates:
        print(f"  graphs / eager: {rates['auto'] / rates['off']:.2f}x (target: under 4 min)")


if __name__ == "__main__":
    main()
