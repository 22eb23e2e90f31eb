"""Every user mistake: one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from conftest import DATA

LENET = "--default_hparams=mnist_lenet_300_100"


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--default_hparams=mnist_lenet_x"], "unknown model 'mnist_lenet_x'; known models:"),
        ([LENET, "--model_name=resnet"], "known models: cifar_resnet_20"),
        ([LENET, "--dataset_name=svhn"], "unknown dataset 'svhn'; known datasets: cifar10, mnist"),
        ([LENET, "--optimizer_name=rmsprop"], "--optimizer_name must be one of sgd, adam"),
        ([LENET, "--model_init=xavier"], "known initializers: kaiming_normal"),
        ([LENET, "--training_steps=12xyz"], "malformed --training_steps '12xyz'"),
        ([LENET, "--training_steps=0it"], "--training_steps must be positive"),
        ([LENET, "--lr=-0.1"], "--lr must be positive, got -0.1"),
        ([LENET, "--lr=0"], "--lr must be positive, got 0.0"),
        ([LENET, "--lr=abc"], "invalid float value: 'abc'"),
        ([LENET, "--batch_size=0"], "--batch_size must be a positive integer, got 0"),
        ([LENET, "--batch_size=70000"], "larger than the 60000 training examples"),
        ([LENET, "--subsample_fraction=1.5"], "--subsample_fraction must be in (0, 1]"),
        ([LENET, "--eval_every=3x"], "malformed --eval_every"),
        ([LENET, "--eval_every=0it"], "--eval_every must be positive, got 0it"),
        ([LENET, "--checkpoint_every=0ep0it"], "--checkpoint_every must be positive, got 0ep0it"),
        ([LENET, "--training_stepz=1it"], "unrecognized arguments: --training_stepz=1it"),
        ([LENET, "--training_step=1it"], "unrecognized arguments"),  # no abbreviations
        ([LENET, "--platform=mars"], "unknown platform 'mars'; known platforms: colab, local"),
        ([LENET, "--device=tpu9"], "--device"),
        ([], "the following arguments are required: --dataset_name"),
    ],
)
def test_bad_flag(cli, tmp_path: Path, flags: list[str], expected: str) -> None:
    root = tmp_path / "runs"
    code, out, err = cli("train", f"--dataset_root={DATA}", f"--root={root}", *flags)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert expected in err
    assert not root.exists()


def test_unknown_subcommand(cli) -> None:
    code, _, err = cli("trian")
    known = "known subcommands: lottery, lottery_branch, pack, report, status, train"
    assert code == 2 and f"unknown subcommand 'trian'; {known}" in err


def copy_mnist(target: Path) -> Path:
    target.mkdir(parents=True)
    for f in (DATA / "mnist").iterdir():
        shutil.copy(f, target / f.name)
    return target


@pytest.mark.parametrize("damage", ["missing", "truncated_gz", "truncated_raw"])
def test_bad_dataset_root(cli, tmp_path: Path, damage: str) -> None:
    data = copy_mnist(tmp_path / "data" / "mnist")
    name = "train-images-idx3-ubyte"
    if damage == "missing":
        (data / f"{name}.gz").unlink()
        expected = "MNIST files not found: train-images-idx3-ubyte"
    elif damage == "truncated_gz":
        raw = (data / f"{name}.gz").read_bytes()
        (data / f"{name}.gz").write_bytes(raw[: len(raw) // 2])
        expected = "corrupt"
    else:
        # An uncompressed file cut short: no md5 to compare, the IDX header says it.
        raw = gzip.decompress((data / f"{name}.gz").read_bytes())
        (data / f"{name}.gz").unlink()
        (data / name).write_bytes(raw[: len(raw) - 1000])
        expected = "truncated"
    root = tmp_path / "runs"
    code, _, err = cli("train", LENET, f"--dataset_root={tmp_path / 'data'}", f"--root={root}")
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not root.exists()
