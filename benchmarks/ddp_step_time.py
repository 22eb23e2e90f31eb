"""A model's time per training step (ResNet-20 on one GPU by default): one process (CUDA
graphs, the default), one process with --cuda_graphs=off, and `torchrun
--nproc_per_node=N` (the DDP path: process group, DDP wrapper, BatchNorm over the global
batch, eager steps). Several GPUs are needed to measure a speed-up; with N=1 this
measures what the DDP path costs per step, and on a CPU with N=2 what the ranks' talk
costs besides the gradients (both ranks share the cores, so N=2 is no speed-up there).

    python benchmarks/ddp_step_time.py --dataset_root=<CIFAR-10 folder> [--steps=600]
    python benchmarks/ddp_step_time.py --dataset_root=<MNIST folder> --device=cpu \
        --model=mnist_lenet_300_100 --nproc_per_node=2

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
    parser.add_argument("--model", default="cifar_resnet_20")
    parser.add_argument("--nproc_per_node", type=int, default=1)
    args = parser.parse_args()
    flags = ["train", f"--default_hparams={args.model}", f"--dataset_root={args.dataset_root}",
             f"--training_steps={args.steps}it", f"--eval_every={args.steps // 2}it",
             f"--checkpoint_every={args.steps}it", f"--device={args.device}",
             "--quiet"]  # fmt: skip
    ranks = f"--nproc_per_node={args.nproc_per_node}"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", ranks]
    modes = {
        "one process (--cuda_graphs=auto)": [sys.executable],
        "one process, --cuda_graphs=off": [sys.executable],
        f"torchrun {ranks} (DDP, eager)": torchrun,
    }
    first = None
    with tempfile.TemporaryDirectory() as scratch:
        for i, (name, launcher) in enumerate(modes.items()):
            root = Path(scratch) / str(i)
            extra = ["--cuda_graphs=off"] if "off" in name else []
            command = [*launcher, str(REPO / "main.py"), *flags, *extra, f"--root={root}"]
            subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            ms = step_ms(root, args.steps)
            first = first or ms
            print(f"{name:<45} {ms:7.3f} ms/step  {ms / first:5.2f}x the first", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
