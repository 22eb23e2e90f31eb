"""Shared fixtures: the real data in ../shared/data and an in-process main.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from open_lth.main import main

REPO = Path(__file__).resolve().parents[1]
# A folder laid out like ../shared/data; OPEN_LTH_TEST_DATA points elsewhere (e.g. a copy
# carried to a GPU machine, where ../shared does not travel).
DATA = Path(os.environ.get("OPEN_LTH_TEST_DATA") or REPO.parent / "shared" / "data").resolve()
CIFAR = DATA / "cifar10-subset"

# Tests never reach for the network: a missing file must fail at once.
os.environ["OPEN_LTH_OFFLINE"] = "1"

# Under pytest-xdist (-n auto: one worker a core) each worker, and every process it
# starts, computes on one thread: torch's own threads on top of the workers oversubscribe
# the cores, and their spinning made steps several times slower on a loaded machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-10 root in the binary layout with the first 64 images of each of the
    subset's five training files (320) and its first 200 test images: real images for
    runs whose every evaluation must be cheap."""
    root = tmp_path_factory.mktemp("tiny_cifar")
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    source = CIFAR / "cifar-10-batches-bin"
    record = 1 + 3 * 32 * 32
    for name, count in [(f"data_batch_{i}.bin", 64) for i in range(1, 6)] + [
        ("test_batch.bin", 200)
    ]:
        (folder / name).write_bytes((source / name).read_bytes()[: count * record])
    return root


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> object:
    """Run main.py in this process: returns (exit status, stdout, stderr)."""

    def call(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


LENET = "--default_hparams=mnist_lenet_300_100"


def lenet_lottery(root: Path, *extra: str) -> list[str]:
    """A small LeNet lottery on real MNIST (6,000 training examples); `extra` gives its
    steps, levels and the rest (a later flag wins)."""
    return [
        "lottery",
        LENET,
        f"--dataset_root={DATA}",
        f"--root={root}",
        "--subsample_fraction=0.1",
        "--quiet",
        *extra,
    ]


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
