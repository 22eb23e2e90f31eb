"""The empirical Fisher diagonal of LeNet-300-100 over all of MNIST's 60,000 training
examples (CPU): the batched per-example computation of `pruning.fisher` against one plain
forward+backward pass over the same data (the cost of an ordinary gradient, the floor)
and against the naive loop with one backward pass per example (timed on a subset and
extrapolated), all in this process. Also checks that both give the same F̂.

    python benchmarks/fisher_speed.py [--dataset_root=../shared/data]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from open_lth import registries  # noqa: E402
from open_lth.data import DeviceData, load  # noqa: E402
from open_lth.hparams import DatasetHparams, ModelHparams  # noqa: E402
from open_lth.model_base import Model, build_model  # noqa: E402
from pruning.fisher import fisher_diagonal  # noqa: E402

LENET = ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform")
DEFAULT_BATCH = inspect.signature(fisher_diagonal).parameters["batch_size"].default


def plain_gradient(model: Model, data: DeviceData, batch_size: int) -> None:
    """One ordinary gradient over the data: forward, summed loss, backward into .grad."""
    model.eval()
    model.zero_grad(set_to_none=True)
    index = torch.arange(len(data))
    for start in range(0, len(data), batch_size):
        x, y = data.batch(index[start : start + batch_size])
        F.cross_entropy(model(x), y, reduction="sum").backward()


def per_example_loop(model: Model, data: DeviceData, index: torch.Tensor) -> dict:
    """The textbook way: one backward pass per example, squares summed."""
    model.eval()
    names = model.prunable_layer_names
    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    sums = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    x, y = data.batch(index)
    for i in range(len(index)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        for s, g in zip(sums, torch.autograd.grad(loss, weights), strict=True):
            s += g.square()
    return {n: (s / len(index)).float() for n, s in zip(names, sums, strict=True)}


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def max_relative_error(ours: dict, reference: dict) -> float:
    worst = 0.0
    for name, ref in reference.items():
        error = (ours[name] - ref).abs() / ref.abs().clamp_min(1e-30)
        worst = max(worst, error.max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(__file__).resolve().parents[2] / "shared/data"
    parser.add_argument("--dataset_root", default=str(default_root))
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--loop_examples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="median kept")
    args = parser.parse_args()
    registries.load_plugins()
    device = torch.device("cpu")
    data, classes = load(DatasetHparams("mnist", 60), Path(args.dataset_root), True, device)
    model = build_model(LENET, classes, 1)
    n, b = len(data), args.batch_size

    def fisher() -> object:
        return fisher_diagonal(model, data, batch_size=b)

    def plain() -> None:
        plain_gradient(model, data, b)

    fisher()  # warm-up: first calls, allocator
    plain()
    fisher_s, plain_s = [], []
    for _ in range(args.repeats):  # alternating, so a noisy neighbour slows both alike
        fisher_s.append(seconds(fisher))
        plain_s.append(seconds(plain))
    a, p = statistics.median(fisher_s), statistics.median(plain_s)

    subset = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: args.loop_examples]
    start = time.perf_counter()
    looped = per_example_loop(model, data, subset)
    loop_s = (time.perf_counter() - start) * n / len(subset)
    error = max_relative_error(fisher_diagonal(model, data, subset, b), looped)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {b}, {n} examples")
    print(f"(a) fisher_diagonal, batched:   {a:9.3f} s (median of {len(fisher_s)})")
    print(f"(b) plain forward+backward:     {p:9.3f} s (median of {len(plain_s)})")
    print(f"(c) loop, a backward each:      {loop_s:9.3f} s (from {len(subset)} examples)")
    print(f"(a)/(b) = {a / p:.2f}x (target: at most 2x)")
    print(f"(c)/(a) = {loop_s / a:.0f}x faster than the loop")
    print(f"max relative error against the loop on {len(subset)} examples: {error:.2e}")


if __name__ == "__main__":
    main()
