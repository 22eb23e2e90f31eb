"""Packs against runs one after the other: run-iterations per second of K LeNet-300-100s
(batch 60, MNIST) and K ResNet-20s (batch 128, CIFAR-10) trained as one stacked network,
against the same K runs trained one after the other, all on the same step path (CUDA
graphs on CUDA, eager on a CPU), all in one process.

Each figure is the trainer's own clock (its wall_seconds metric between its evaluations
at steps/2 and steps: the steady state, without evaluations, checkpoints, warm-up or
capture); a run-iteration is one optimizer step of one run, so a pack of K taking one
step does K. Rounds alternate packed and one-after-the-other measurements, and the
median round is printed.

    python benchmarks/pack_speed.py --dataset_root=<folder laid out like ../shared/data>
    python benchmarks/pack_speed.py --device=cpu --lenet_k=1,3 --resnet_k=
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_speed import load_spec, sync_time, trainer_its  # noqa: E402

from open_lth.foundations.model import build_model  # noqa: E402
from open_lth.training import precision as precision_module  # noqa: E402
from open_lth.training.evaluation import evaluate_copies  # noqa: E402
from open_lth.training.stacked import stack  # noqa: E402


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def eval_seconds(spec: dict, k: int) -> float:
    """One evaluation of a pack of K over the test set (median of 3), for estimates."""
    device = spec["test"].device
    models = [build_model(spec["model_hp"], 10, seed=i) for i in range(k)]
    net = (models[0] if k == 1 else stack(models)).to(device)
    evaluate_copies(net, spec["test"], k)
    times = []
    for _ in range(3):
        start = sync_time()
        evaluate_copies(net, spec["test"], k)
        times.append(sync_time() - start)
    return sorted(times)[1]


def measure(
    spec: dict,
    ks: list[int],
    steps: int,
    rounds: int,
    graphs: str,
    bf16: bool = False,
    compile: bool = False,
    pack_streams: int = 1,
) -> list[dict]:
    rows = []
    for k in ks:
        packed, alone = [], []
        for _ in range(rounds):
            options = {"bf16": bf16, "compile": compile}
            rate = trainer_its(spec, steps, graphs, k=k, pack_streams=pack_streams, **options)
            packed.append(k * rate)
            # K runs one after the other: K steady-state windows of the same length.
            seconds = sum(1 / trainer_its(spec, steps, graphs, **options) for _ in range(k))
            alone.append(k / seconds)
        rows.append(
            {
                "k": k,
                "packed": statistics.median(packed),
                "alone": statistics.median(alone),
                "eval_s": eval_seconds(spec, k),
            }
        )
        row = rows[-1]
        print(
            f"  K={k:>2}: packed {row['packed']:>9.0f} run-it/s, one after the other "
            f"{row['alone']:>8.0f}, ratio {row['packed'] / row['alone']:.2f}, "
            f"pack evaluation {row['eval_s'] * 1000:.1f} ms",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(__file__).resolve().parents[2] / "shared/data"
    parser.add_argument("--dataset_root", default=str(default_root))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lenet_k", default=None, help="default 1,2,4,8,16 (CPU: 1,3)")
    parser.add_argument("--resnet_k", default=None, help="default 1,2,4,8 (CPU: none)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lenet_steps", type=int, default=None, help="default 2000 (CPU 400)")
    parser.add_argument("--resnet_steps", type=int, default=300)
    parser.add_argument(
        "--nchw", action="store_true", help="convolutions in NCHW rather than channels_last"
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (packed and alone)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the network (packed and alone)"
    )
    parser.add_argument(
        "--pack_streams", type=int, default=1, help="a pack as N lanes on N CUDA streams"
    )
    args = parser.parse_args()
    from open_lth.main import load_plugins

    load_plugins()
    precision_module.CHANNELS_LAST = not args.nchw
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    graphs = "auto" if cuda else "off"
    lenet_k = numbers(args.lenet_k if args.lenet_k is not None else "1,2,4,8,16" if cuda else "1,3")
    resnet_k = numbers(args.resnet_k if args.resnet_k is not None else "1,2,4,8" if cuda else "")
    name = (
        torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    )
    path = "CUDA graphs" if cuda else "eager"
    layout = "NCHW" if args.nchw or not cuda else "channels_last"
    precision = ("bf16" if args.bf16 else "fp32") + (", torch.compile" if args.compile else "")
    precision += f", packs in {args.pack_streams} lanes" if args.pack_streams > 1 else ""
    print(
        f"{name}, torch {torch.__version__}, step path: {path}, convolutions {layout}, {precision}"
    )
    root = Path(args.dataset_root)
    results = {}
    if lenet_k:
        steps = args.lenet_steps or (2000 if cuda else 400)
        print(f"LeNet-300-100, batch 60, {steps} steps a measurement:")
        spec = load_spec("mnist_lenet_300_100", root, device)
        results["lenet"] = measure(
            spec, lenet_k, steps, args.rounds, graphs, args.bf16, args.compile, args.pack_streams
        )
    if resnet_k:
        print(f"ResNet-20, batch 128, {args.resnet_steps} steps a measurement:")
        spec = load_spec("cifar_resnet_20", root / "cifar10-subset", device)
        results["resnet"] = measure(
            spec,
            resnet_k,
            args.resnet_steps,
            args.rounds,
            graphs,
            args.bf16,
            args.compile,
            args.pack_streams,
        )
    for model, rows in results.items():
        one = next((r["packed"] for r in rows if r["k"] == 1), None)
        for r in rows:
            against = f", {r['packed'] / one:.2f}x one run" if one else ""
            print(f"{model} K={r['k']}: {r['packed']:.0f} run-it/s{against}")


if __name__ == "__main__":
    main()
