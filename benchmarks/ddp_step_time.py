"""ResNet-20's time per training step on one GPU: one process (CUDA graphs, the default),
one process with --cuda_graphs=off, and `torchrun --nproc_per_node=1` (the DDP path:
process group, DDP wrapper, BatchNorm over the global batch, eager steps). Several GPUs
are needed to measure a speed-up; this measures what the DDP path costs per step.

    python benchmarks/ddp_step_time.py --dataset_root=<CIFAR-10 folder> [--steps=600]

Time per step = (wall_seconds at the end - at the middle evaluation) / (steps / 2), so
set-up, capture and the first steps are left out; evaluations are not in wall_seconds.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step_ms(root: Path, steps: int) -> float:
    (metrics,) = root.glob("train_*/replicate_1/main/metrics.csv")
    wall = {int(r["iteration"]): float(r["value"]) for r in csv.DictReader(open(metrics))
            if r["name"] == "wall_seconds"}  # fmt: skip
    return 1000 * (wall[steps] - wall[steps // 2]) / (steps // 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_root", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    flags = ["train", "--default_hparams=cifar_resnet_20", f"--dataset_root={args.dataset_root}",
             f"--training_steps={args.steps}it", f"--eval_every={args.steps // 2}it",
             f"--checkpoint_every={args.steps}it", f"--device={args.device}",
             "--quiet"]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    modes = {
        "one process (CUDA graphs)": [sys.executable],
        "one process, --cuda_graphs=off": [sys.executable],
        "torchrun --nproc_per_node=1 (DDP, eager)": torchrun,
    }
    with tempfile.TemporaryDirectory() as scratch:
        for i, (name, launcher) in enumerate(modes.items()):
            root = Path(scratch) / str(i)
            extra = ["--cuda_graphs=off"] if "off" in name else []
            command = [*launcher, str(REPO / "main.py"), *flags, *extra, f"--root={root}"]
            subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            print(f"{name:<45} {step_ms(root, args.steps):7.3f} ms/step", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
