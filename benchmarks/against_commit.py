"""A benchmark of this checkout against the same benchmark of an earlier commit: the
commit is unpacked (`git archive`) into a temporary folder, and the two run in
alternating rounds, each in a fresh process with its own tree first on the path, so a
noisy neighbour slows both alike. Each round's figure is the first number in the first
output line that matches --metric (a regular expression with one group); the medians
and their ratio are printed.

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


def figure(tree: Path, argv: list[str], metric: re.Pattern) -> float:
    """One run of the benchmark in `tree`: the number --metric captures."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True
    )
    for line in done.stdout.splitlines():
        found = metric.search(line)
        if found:
            return float(found.group(1))
    raise SystemExit(f"error: no line matches {metric.pattern!r} in {tree}:\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="the earlier commit")
    parser.add_argument("--metric", required=True, help="regex; group 1 is the figure")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("benchmark", nargs=argparse.REMAINDER, help="-- script [its flags]")
    args = parser.parse_args()
    argv = [a for a in args.benchmark if a != "--"]
    if not argv:
        raise SystemExit("error: give the benchmark after --, e.g. -- benchmarks/train_speed.py")
    metric = re.compile(args.metric)
    with tempfile.TemporaryDirectory() as tmp:
        unpack(args.ref, Path(tmp))
        ref_tree = Path(tmp) / "tree"
        ours, theirs = [], []
        for i in range(args.rounds):
            theirs.append(figure(ref_tree, argv, metric))
            ours.append(figure(REPO, argv, metric))
            print(f"round {i + 1}: {args.ref} {theirs[-1]:g}, this checkout {ours[-1]:g}")
    a, b = statistics.median(ours), statistics.median(theirs)
    rounds = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
    print(f"median: {args.ref} {b:g}, this checkout {a:g}, ratio {a / b:.3f}")
    print(f"median of the rounds' ratios: {rounds:.3f}")


if __name__ == "__main__":
    main()
