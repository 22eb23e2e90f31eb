"""The peak memory of Fisher scoring a full ImageNet ResNet-50 (224x224, random images and
labels) against the peak of one training step on the same batch: per-example squares are
chunked by `pruning.fisher.MEMORY_BUDGET`, so Fisher should peak near a step.

    python benchmarks/fisher_memory.py [--examples=8] [--device=cpu|cuda]

Each variant runs in a fresh process: `step` is one forward and backward (train mode,
gradients into .grad) of the N examples; `fisher` is `fisher_diagonal` over them as the
fisher strategy calls it (one batch: N ≤ its batch of 1000) and the ½·w²·F̂ scores. Printed:
the peak RSS over the RSS with the model and data loaded (ru_maxrss), the time, and on CUDA
torch.cuda.max_memory_allocated over what was allocated before.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.foundations import registries  # noqa: E402
from open_lth.main import load_plugins  # noqa: E402
from open_lth.pruning.fisher import MEMORY_BUDGET, fisher_diagonal  # noqa: E402
from open_lth.training.data import DeviceData  # noqa: E402

MiB = 2**20


def rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def one(variant: str, model_name: str, examples: int, size: int, device: str) -> dict:
    load_plugins()
    torch.manual_seed(0)
    model = registries.models.get(model_name).create(model_name, 1000).to(device)
    images = torch.randint(0, 256, (examples, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 1000, (examples,))
    data = DeviceData(images, labels, (0.5,) * 3, (0.25,) * 3, None, 0, torch.device(device))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gpu_before = torch.cuda.memory_allocated() if device == "cuda" else 0
    before = rss()
    start = time.perf_counter()
    if variant == "step":
        x, y = data.batch(torch.arange(examples, device=device))
        F.cross_entropy(model.train()(x), y).backward()
    else:
        fisher = fisher_diagonal(model, data)
        weights = dict(model.named_parameters())
        scores = {n: 0.5 * weights[n].detach().square() * fisher[n] for n in fisher}
        assert all(torch.isfinite(s).all() for s in scores.values())
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = torch.cuda.max_memory_allocated() - gpu_before if device == "cuda" else None
    return {
        "seconds": seconds,
        "rss_mib": (peak - before) / MiB,
        "gpu_mib": None if gpu is None else gpu / MiB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="imagenet_resnet_50")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--variant", choices=("step", "fisher"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        r = one(args.variant, args.model, args.examples, args.size, args.device)
        print(json.dumps(r))
        return
    print(
        f"{args.model}, {args.examples} examples of {args.size}x{args.size} on {args.device}, "
        f"MEMORY_BUDGET {MEMORY_BUDGET // MiB} MiB, {torch.get_num_threads()} threads"
    )
    for variant in ("step", "fisher"):
        out = subprocess.run(
            [sys.executable, __file__, f"--model={args.model}", f"--examples={args.examples}",
             f"--size={args.size}", f"--device={args.device}", f"--variant={variant}"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        r = json.loads(out.splitlines()[-1])
        what = "training step (forward+backward)" if variant == "step" else "Fisher scores"
        gpu = "" if r["gpu_mib"] is None else f", GPU peak +{r['gpu_mib']:.0f} MiB"
        print(f"{what:>33}: {r['seconds']:.1f} s, peak RSS +{r['rss_mib']:.0f} MiB{gpu}")


if __name__ == "__main__":
    main()
