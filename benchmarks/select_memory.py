"""The peak extra memory and the time of one global prune (20% of the survivors) of
ImageNet ResNet-50's 25.5M prunable weights, random float32 scores: the old rule
(`survivors` + `remove_lowest`: every score concatenated into one float64 CPU tensor and
stably sorted) against `lowest_positions` (bisection over the floats, layer by layer).

    python benchmarks/select_memory.py [--device=cpu|cuda] [--model=imagenet_resnet_50]

Each variant runs in a fresh process: the peak RSS (ru_maxrss) over the RSS just before
the prune, with the scores and masks already in memory (tracemalloc does not see torch's
allocations). On CUDA also torch.cuda.max_memory_allocated over what was allocated.
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

sys.path.append(str(Path(__file__).resolve().parents[1]))

from open_lth.foundations import registries  # noqa: E402
from open_lth.main import load_plugins  # noqa: E402
from open_lth.pruning.select import (  # noqa: E402
    count_to_prune,
    lowest_positions,
    remove_lowest,
    survivors,
)

MiB = 2**20


def rss() -> int:
    """The current resident set size in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def shapes(model: str) -> list[torch.Size]:
    """The prunable weights' shapes, from the model built on the meta device (no memory)."""
    load_plugins()
    with torch.device("meta"):
        net = registries.models.get(model).create(model, 1000)
    params = dict(net.named_parameters())
    return [params[n].shape for n in net.prunable_layer_names]


def one(variant: str, model: str, device: str) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    # Layer by layer, so that no temporary raises the peak before the prune.
    scores = [torch.rand(s, generator=g, device=device) for s in shapes(model)]
    masks = [torch.ones(s, dtype=torch.bool, device=device) for s in shapes(model)]
    total = sum(s.numel() for s in scores)
    n = count_to_prune(0.2, total)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gpu_before = torch.cuda.memory_allocated() if device == "cuda" else 0
    before, peak_before = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    if variant == "old":
        gone = remove_lowest(*survivors(scores, masks), n)
    else:
        gone = lowest_positions(scores, masks, n)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert sum(len(p) for p in gone) == n
    return {
        "variant": variant,
        "weights": total,
        "removed": n,
        "seconds": seconds,
        "extra_rss_mib": (peak - before) / MiB,
        "peak_before_mib_over_rss": (peak_before - before) / MiB,
        "scores_mib": sum(s.numel() * s.element_size() for s in scores) / MiB,
        "extra_gpu_mib": (torch.cuda.max_memory_allocated() - gpu_before) / MiB
        if device == "cuda"
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="imagenet_resnet_50")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--variant", choices=("old", "new"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one(args.variant, args.model, args.device)))
        return
    print(f"{args.model}, one global prune of 20%, random float32 scores on {args.device}")
    for variant in ("old", "new"):
        out = subprocess.run(
            [sys.executable, __file__, f"--model={args.model}", f"--device={args.device}",
             f"--variant={variant}"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        r = json.loads(out.splitlines()[-1])
        gpu = "" if r["extra_gpu_mib"] is None else f", GPU +{r['extra_gpu_mib']:.0f} MiB"
        rule = "survivors + remove_lowest" if variant == "old" else "lowest_positions"
        print(
            f"{rule:>26}: {r['weights']:,} weights ({r['scores_mib']:.0f} MiB of scores), "
            f"{r['removed']:,} removed in {r['seconds']:.2f} s, peak RSS "
            f"+{r['extra_rss_mib']:.0f} MiB{gpu}"
        )


if __name__ == "__main__":
    main()
