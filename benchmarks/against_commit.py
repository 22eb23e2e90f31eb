"""A benchmark of this checkout against the same benchmark of an earlier commit: the
commit is unpacked (`git archive`) into a temporary folder, and the two run in
alternating rounds, each in a fresh process with its own tree first on the path, so a
noisy neighbour slows both alike. Each round's figure for a --metric (a regular
expression with one group; give several to read several figures of one run) is the
group of the first output line it matches; the medians and their ratio are printed.

    python benchmarks/against_commit.py --ref=b13712e --rounds=5 \\
        --metric='lenet K=1: (\\S+) run-it/s' -- benchmarks/pack_speed.py --device=cpu \\
        --lenet_k=1 --dataset_root=$PWD/../shared/data

Give the benchmark an absolute --dataset_root: the unpacked tree is not beside the data.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def unpack(ref: str, into: Path) -> None:
    archive = into / "ref.tar"
    subprocess.run(["git", "archive", "-o", str(archive), ref], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")


def figures(tree: Path, argv: list[str], metrics: list[re.Pattern]) -> list[float]:
    """One run of the benchmark in `tree`: the number each metric captures."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True
    )
    lines = done.stdout.splitlines()
    out = []
    for metric in metrics:
        found = next((m for m in map(metric.search, lines) if m), None)
        if found is None:
            raise SystemExit(f"error: no line matches {metric.pattern!r} in {tree}:\n{done.stderr}")
        out.append(float(found.group(1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="the earlier commit")
    parser.add_argument(
        "--metric", required=True, action="append", help="regex; group 1 is the figure"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("benchmark", nargs=argparse.REMAINDER, help="-- script [its flags]")
    args = parser.parse_args()
    argv = [a for a in args.benchmark if a != "--"]
    if not argv:
        raise SystemExit("error: give the benchmark after --, e.g. -- benchmarks/train_speed.py")
    metrics = [re.compile(m) for m in args.metric]
    with tempfile.TemporaryDirectory() as tmp:
        unpack(args.ref, Path(tmp))
        ref_tree = Path(tmp) / "tree"
        ours, theirs = [], []
        for i in range(args.rounds):
            theirs.append(figures(ref_tree, argv, metrics))
            ours.append(figures(REPO, argv, metrics))
            print(f"round {i + 1}: {args.ref} {theirs[-1]}, this checkout {ours[-1]}", flush=True)
    for j, metric in enumerate(metrics):
        a = statistics.median(o[j] for o in ours)
        b = statistics.median(t[j] for t in theirs)
        rounds = statistics.median(o[j] / t[j] for o, t in zip(ours, theirs, strict=True))
        print(
            f"{metric.pattern}: median {args.ref} {b:g}, this checkout {a:g}, ratio "
            f"{a / b:.3f} (median of the rounds' ratios {rounds:.3f})"
        )


if __name__ == "__main__":
    main()
