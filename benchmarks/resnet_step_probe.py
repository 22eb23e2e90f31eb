"""Where a graphed ResNet-20 step spends its time on a GPU: the trainer's rate under each
memory layout, cuDNN autotuning on or off, fp32 or bf16; the graph replay alone on a fixed
batch; and the batch preparation alone (order, crop and flip, normalization).

    python benchmarks/resnet_step_probe.py --dataset_root=<cifar root>
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_speed  # noqa: E402

from open_lth.foundations.model import build_model  # noqa: E402
from open_lth.training import precision  # noqa: E402
from open_lth.training.data import derive_seed  # noqa: E402
from open_lth.training.schedule import build_optimizer  # noqa: E402
from open_lth.training.train_step import EagerStep, StaticStep, StepParts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset_root", required=True)
    parser.add_argument("--model", default="cifar_resnet_20")
    parser.add_argument("--parts", default="grid,replay", help="of grid, replay, profile, compile")
    parser.add_argument(
        "--compile_mode",
        default="default",
        help="torch.compile's mode for the compile part, e.g. max-autotune-no-cudagraphs",
    )
    args = parser.parse_args()
    from open_lth.main import load_plugins

    load_plugins()
    device = torch.device("cuda")
    spec = gpu_speed.load_spec(args.model, Path(args.dataset_root), device)
    gpu_speed.trainer_its(spec, 100, "auto")
    parts = args.parts.split(",")
    if args.compile_mode != "default":
        # The trainer calls torch.compile(net); here with another mode (a probe only).
        plain_compile = torch.compile
        torch.compile = lambda net: plain_compile(net, mode=args.compile_mode)
    if "compile" in parts:
        for bf16 in (False, True):
            start = time.perf_counter()
            rate = gpu_speed.trainer_its(spec, 1000, "auto", bf16=bf16, compile=True)
            print(
                f"graphs + torch.compile ({args.compile_mode}), bf16={bf16}: {rate:7.1f} it/s "
                f"(whole call {time.perf_counter() - start:.0f} s, compiling included)",
                flush=True,
            )
    if "profile" in parts:
        profile(spec, device)
    if "grid" in parts:
        grid(spec)
    if "replay" in parts:
        replay(spec, device)


def profile(spec: dict, device: torch.device) -> None:
    """Kernels of one eager step: how many, and where the GPU time goes."""
    net = build_model(spec["model_hp"], 10, 1).to(device).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(spec["training"], list(net.parameters()))
    sums = torch.zeros(1, dtype=torch.float64, device=device)
    correct = torch.zeros(1, dtype=torch.int64, device=device)
    step = EagerStep(StepParts(net, net, optimizer, [], 1, False, sums, correct))
    x, y = spec["train"].batch(torch.arange(128, device=device))
    gpu_speed.kernel_profile(lambda: step(x, y.unsqueeze(1), 0.1), "eager step", 12)


def grid(spec: dict) -> None:
    for channels_last in (True, False):
        for bench in (False, True):
            for bf16 in (False, True):
                precision.CHANNELS_LAST = channels_last
                torch.backends.cudnn.benchmark = bench
                rate = gpu_speed.trainer_its(spec, 1000, "auto", bf16=bf16)
                print(
                    f"channels_last={channels_last!s:5} cudnn.benchmark={bench!s:5} "
                    f"bf16={bf16!s:5} trainer {rate:7.1f} it/s",
                    flush=True,
                )
    precision.CHANNELS_LAST = True
    torch.backends.cudnn.benchmark = False


def replay(spec: dict, device: torch.device) -> None:
    train = spec["train"]
    generator = torch.Generator(device)
    order = train.order(1, 0)
    step = [0]

    def prepare() -> tuple[torch.Tensor, torch.Tensor]:
        s = step[0] % 30
        step[0] += 1
        generator.manual_seed(derive_seed("augment", 1, s))
        return train.batch(order[s * 128 : (s + 1) * 128], generator)

    print(f"batch preparation alone: {gpu_speed.timed(prepare, 1000):8.1f} batches/s")
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        net = build_model(spec["model_hp"], 10, 1).to(device)
        net = net.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(spec["training"], list(net.parameters()))
        sums = torch.zeros(1, dtype=torch.float64, device=device)
        correct = torch.zeros(1, dtype=torch.int64, device=device)
        parts = StepParts(net, net, optimizer, [], 1, False, sums, correct)
        static = StaticStep(parts, capture=True)
        x, y = prepare()
        for _ in range(5):
            static(x, y.unsqueeze(1), 0.1)
        rate = gpu_speed.timed(static.graph.replay, 1000)
        print(f"graph replay alone (cudnn.benchmark={bench}): {rate:8.1f} it/s", flush=True)


if __name__ == "__main__":
    main()
