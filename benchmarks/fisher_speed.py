"""The empirical Fisher diagonal (`pruning.fisher`) against one plain gradient pass over the
same examples (forward, summed loss, backward into .grad: the floor), on a CPU or a CUDA
GPU, and against the brute-force loop with one backward pass per example (float64, on a
small subset) for the error. For a convolutional model every per-example conv method is
timed too, so one run shows which is fastest on the device.

    python benchmarks/fisher_speed.py --model=mnist_lenet_300_100 --device=cpu
    python benchmarks/fisher_speed.py --model=cifar_resnet_20 --device=cuda --examples=4000

TF32 is off unless --tf32 (for the plain pass, the Fisher pass and the reference alike),
so every variant computes in full float32. Timed calls alternate round by round, after
one warm-up call each, and the median is kept; on CUDA the clock is read after a
synchronize.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.foundations import registries  # noqa: E402
from open_lth.foundations.hparams import DatasetHparams  # noqa: E402
from open_lth.foundations.model import Model, build_model  # noqa: E402
from open_lth.pruning import fisher as fisher_module  # noqa: E402
from open_lth.pruning.fisher import CONV_METHODS, fisher_diagonal  # noqa: E402
from open_lth.training.data import DeviceData, load  # noqa: E402

MODELS = ("mnist_lenet_300_100", "cifar_resnet_20")
SHARED = Path(__file__).resolve().parents[2] / "shared/data"
ROOTS = {"mnist": SHARED, "cifar10": SHARED / "cifar10-subset"}
# A variant whose warm-up takes this many times the plain pass is timed once, not per round.
TOO_SLOW = 20


def plain_gradient(model: Model, data: DeviceData, index: torch.Tensor, batch_size: int) -> None:
    """One ordinary gradient over the examples: forward, summed loss, backward into .grad."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for start in range(0, len(index), batch_size):
        x, y = data.batch(index[start : start + batch_size])
        F.cross_entropy(model(x), y, reduction="sum").backward()


def per_example_loop(
    model: nn.Module, data: DeviceData, index: torch.Tensor, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The textbook way: one backward pass per example, squares summed in float64."""
    model = copy.deepcopy(model).to(dtype).eval()
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    params = dict(model.named_parameters())
    weights = [params[f"{n}.weight"] for n in layers]
    sums = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    x, y = data.batch(index)
    x = x.to(dtype)
    for i in range(len(index)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        for s, g in zip(sums, torch.autograd.grad(loss, weights), strict=True):
            s += g.square()
    return {f"{n}.weight": s / len(index) for n, s in zip(layers, sums, strict=True)}


def max_relative_error(ours: dict, reference: dict) -> float:
    """max |F̂ - F| / |F| over all weights, entries below 1e-7 × their layer's largest
    floored there (float32 cannot resolve them, the tests' atol)."""
    worst = 0.0
    for name, ref in reference.items():
        floor = 1e-7 * ref.abs().max().clamp_min(1e-30)
        error = (ours[name].double() - ref).abs() / ref.abs().clamp_min(floor)
        worst = max(worst, error.max().item())
    return worst


def calibrate_batchnorm(model: nn.Module, data: DeviceData, batch_size: int) -> None:
    """Running statistics from a few training-mode forwards, as a trained model has them
    (the Fisher and the plain pass both run in eval mode)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, min(len(data), 4 * batch_size), batch_size):
            stop = min(len(data), start + batch_size)
            model(data.batch(torch.arange(start, stop, device=data.device))[0])
    model.eval()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device=cuda: no CUDA device is available to this torch")
    return torch.device(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--dataset_root",
        help=f"default: {ROOTS['mnist']} for MNIST, {ROOTS['cifar10']} for CIFAR-10",
    )
    parser.add_argument("--examples", type=int, help="training examples (default: all)")
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument(
        "--loop_examples", type=int, help="brute-force subset (default: 64 for a conv model)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds; median kept")
    parser.add_argument(
        "--conv_methods",
        default=",".join(CONV_METHODS),
        help="per-example conv methods timed beside the default ('' for none)",
    )
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in matmuls and convs")
    args = parser.parse_args()

    device = pick_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    from open_lth.main import load_plugins

    load_plugins()
    family = registries.models.get(args.model)
    defaults = family.default_hparams(args.model)
    dataset_name = defaults.dataset.dataset_name
    root = Path(args.dataset_root) if args.dataset_root else ROOTS[dataset_name]
    hparams = DatasetHparams(dataset_name, args.batch_size, do_not_augment=True)
    data, classes = load(hparams, root, True, device)
    n = len(data) if args.examples is None else min(args.examples, len(data))
    index = torch.arange(n, device=device)
    model = build_model(defaults.model, classes, 1).to(device)
    b = args.batch_size
    calibrate_batchnorm(model, data, b)
    convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
    methods = [m for m in args.conv_methods.split(",") if m] if convolutional else []
    unknown = sorted(set(methods) - set(CONV_METHODS))
    if unknown:
        sys.exit(f"--conv_methods: unknown {unknown}; known: {', '.join(CONV_METHODS)}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def seconds(fn: Callable[[], object]) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    def fisher(method: str | None) -> Callable[..., dict]:
        kwargs = {} if method is None else {"conv_method": method}
        return lambda idx=index: fisher_diagonal(model, data, idx, batch_size=b, **kwargs)

    variants: dict[str, Callable[..., object]] = {
        "plain gradient": lambda: plain_gradient(model, data, index, b),
        "fisher (auto)": fisher(None),
    }
    for method in methods:
        variants[f"fisher ({method})"] = fisher(method)

    variants["plain gradient"]()  # CUDA's and the libraries' start-up, outside every timing
    # Warm-ups: first calls, the allocator, the GPU's choice of conv method. A method that
    # fails here (out of memory, a kernel the device lacks) is reported, not fatal.
    warm, failed = {}, {}
    for name, fn in list(variants.items()):
        try:
            warm[name] = seconds(fn)
        except RuntimeError as error:
            if name == "plain gradient":
                raise
            failed[name] = str(error).strip().splitlines()[0][:70]
            del variants[name]
    # A variant far slower than the plain pass keeps its warm-up as its one timing.
    slow = {name for name, s in warm.items() if s > TOO_SLOW * warm["plain gradient"]}
    times: dict[str, list[float]] = {
        name: [warm[name]] if name in slow else [] for name in variants
    }
    for _ in range(args.repeats):  # alternating, so a noisy neighbour slows all alike
        for name, fn in variants.items():
            if name not in slow:
                times[name].append(seconds(fn))
    median = {name: statistics.median(t) for name, t in times.items()}
    plain = median["plain gradient"]

    loop_n = args.loop_examples or (64 if convolutional else 2000)
    g = torch.Generator().manual_seed(0)
    subset = torch.randperm(n, generator=g)[:loop_n].to(device)
    reference = per_example_loop(model, data, subset, torch.float64)
    looped: dict[str, torch.Tensor] = {}
    loop_s = seconds(lambda: looped.update(per_example_loop(model, data, subset, torch.float32)))
    loop_s *= n / len(subset)
    errors = {name: max_relative_error(fn(subset), reference)
              for name, fn in variants.items() if name != "plain gradient"}  # fmt: skip

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"{args.model} on {where} ({device.type}{threads}), torch {torch.__version__}, "
          f"TF32 {'on' if args.tf32 else 'off'}")  # fmt: skip
    print(f"{n} examples in batches of {b}; median of {args.repeats} alternating rounds "
          f"after a warm-up each; error vs. a float64 loop on {len(subset)} examples")  # fmt: skip
    print(f"{'variant':<22}{'seconds':>10}{'x plain':>9}{'max rel err':>13}")
    for name in variants:
        once = " (1 run: too slow to repeat)" if name in slow else ""
        error = f"{errors[name]:13.1e}" if name in errors else f"{'-':>13}"
        print(f"{name:<22}{median[name]:10.4f}{median[name] / plain:9.2f}{error}{once}")
    for name, message in failed.items():
        print(f"{name:<22}  failed: {message}")
    print(f"{'loop, a backward each':<22}{loop_s:10.4f}{loop_s / plain:9.1f}"
          f"{max_relative_error(looped, reference):13.1e}"
          f"   (float32, extrapolated from {len(subset)} examples)")  # fmt: skip
    # What auto chose on the GPU, per conv shape (its private cache, read for the report).
    for key, method in fisher_module._TUNED.items():
        _, _, a_shape, _, d_shape, _, _, kernel, stride, *_ = key
        print(f"auto on {a_shape[0]} x {a_shape[1]}x{a_shape[2]}x{a_shape[3]} -> {d_shape[1]}, "
              f"{kernel[0]}x{kernel[1]} stride {stride[0]}: {method}")  # fmt: skip


if __name__ == "__main__":
    main()
