"""Shared fixtures: the real data in ../shared/data and an in-process main.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from open_lth.cli import main

REPO = Path(__file__).resolve().parents[1]
# A folder laid out like ../shared/data; OPEN_LTH_TEST_DATA points elsewhere (e.g. a copy
# carried to a GPU machine, where ../shared does not travel).
DATA = Path(os.environ.get("OPEN_LTH_TEST_DATA") or REPO.parent / "shared" / "data").resolve()
CIFAR = DATA / "cifar10-subset"

# Tests never reach for the network: a missing file must fail at once.
os.environ["OPEN_LTH_OFFLINE"] = "1"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> object:
    """Run main.py in this process: returns (exit status, stdout, stderr)."""

    def call(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def lenet_args(root: Path, *extra: str) -> list[str]:
    """A small, fast LeNet run on real MNIST (6,000 training examples)."""
    return [
        "train",
        "--default_hparams=mnist_lenet_300_100",
        f"--dataset_root={DATA}",
        f"--root={root}",
        "--subsample_fraction=0.1",
        "--training_steps=300it",
        "--eval_every=100it",
        "--quiet",
        *extra,
    ]
