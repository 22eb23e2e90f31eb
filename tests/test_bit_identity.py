"""Refactors change no number: a fixed set of runs (a lottery of two levels with
branches, a pack of two, a Gem-Miner search, an instability branch, a ResNet with
BatchNorm and momentum) made by this checkout and by the REFERENCE commit give the same
files, with the same tensors to the bit and the same metrics (wall-clock times aside).

The reference is unpacked from this repository's history with `git archive` and runs
from its own folder, so the comparison holds on any machine. Move REFERENCE forward
only in a commit that changes numbers on purpose, and say why there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import DATA, REPO

# The last commit before the training core was renovated into one loop (issue 20).
REFERENCE = "b13712e77d4b"

LENET = ["--default_hparams=mnist_lenet_300_100", f"--dataset_root={DATA}"]
GEM_MINER = [
    "--pruning_strategy=gem_miner",
    "--gem_miner_steps=30it",
    "--gem_miner_prune_every=10it",
]
SMALL = ["--subsample_fraction=0.02", "--training_steps=40it", "--eval_every=20it", "--quiet"]


def commands(root: Path, cifar: Path) -> list[list[str]]:
    lottery = ["lottery", *LENET, *SMALL, f"--root={root}", "--levels=2"]
    branch = ["lottery_branch", "--levels=1", *LENET, *SMALL, f"--root={root}"]
    resnet = ["lottery", "--default_hparams=cifar_resnet_20", "--model_name=cifar_resnet_8"]
    resnet += [f"--dataset_root={cifar}", f"--root={root}", "--levels=1", "--batch_size=32"]
    resnet += ["--training_steps=12it", "--eval_every=6it", "--quiet", "--rewinding_steps=4it"]
    return [
        lottery,
        [*branch[:1], "randomly_prune", *branch[1:]],
        [*branch[:1], "instability", *branch[1:], "--noise_seeds=1,2", "--interpolation_points=3"],
        ["lottery", *LENET, *SMALL, f"--root={root}", "--levels=1", "--replicates=1-2"],
        ["lottery", *LENET, *SMALL, f"--root={root}", "--levels=1"]
        + [
            "--pruning_strategy=gem_miner",
            "--gem_miner_steps=30it",
            "--gem_miner_prune_every=10it",
        ],
        resnet,
    ]


def run_all(tree: Path, root: Path, cifar: Path) -> None:
    for argv in commands(root, cifar):
        done = subprocess.run(
            [sys.executable, str(tree / "main.py"), *argv],
            cwd=tree,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OPEN_LTH_OFFLINE": "1"},
        )
        assert done.returncode == 0, f"{tree}: {' '.join(argv)}\n{done.stderr}"


def without_times(value: object) -> object:
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k != "wall_seconds"}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def content(path: Path) -> object:
    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.suffix == ".json":
        return without_times(json.loads(path.read_text()))
    lines = path.read_text().splitlines()
    return [line for line in lines if ",wall_seconds," not in line]


def files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("reference")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", REFERENCE], capture_output=True, timeout=60
    )
    assert archive.returncode == 0, (
        f"this test needs the repository's history (git archive {REFERENCE}): "
        + archive.stderr.decode()
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def test_the_runs_are_bit_identical_to_the_reference(reference, tmp_path, tiny_cifar) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "reference"
    # The two trees side by side: one process each, on a machine of two cores or more.
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(run_all, REPO, ours, tiny_cifar)]
        jobs.append(pool.submit(run_all, reference, theirs, tiny_cifar))
        for job in jobs:
            job.result()
    assert files(ours) == files(theirs), sorted(files(ours) ^ files(theirs))
    assert len(files(ours)) > 50
    different = [
        str(p) for p in sorted(files(ours)) if not same(content(ours / p), content(theirs / p))
    ]
    assert not different, different
