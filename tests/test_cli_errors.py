"""Every user mistake: one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import gzip
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import DATA
from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.main import load_plugins
from open_lth.training.stage import check_model_fits

LENET_NAME = "mnist_lenet_300_100"
LENET = f"--default_hparams={LENET_NAME}"


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--default_hparams=mnist_lenet_x"], "unknown model 'mnist_lenet_x'; known models:"),
        ([LENET, "--model_name=resnet"], "known models: cifar_resnet_20"),
        (
            [LENET, "--dataset_name=svhn"],
            "unknown dataset 'svhn'; known datasets: cifar10, imagenet, mnist, tinyimagenet",
        ),
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
    known = "known subcommands: export, lottery, lottery_branch, pack, report, status, train"
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


@pytest.mark.parametrize("below", [False, True])
def test_root_is_a_file(cli, tmp_path: Path, below: bool) -> None:
    file = tmp_path / "runs"
    file.write_text("not a folder")
    root = file / "sub" if below else file
    code, _, err = cli("train", LENET, f"--dataset_root={DATA}", f"--root={root}")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"error: --root {root} is not a folder" in err
    assert file.read_text() == "not a folder"


@pytest.mark.parametrize("subcommand", [["train"], ["lottery"], ["lottery", "--replicates=1-2"]])
@pytest.mark.parametrize(
    "model,dataset,expected",
    [
        ("mnist_lenet_300_100", "cifar10", "does not fit cifar10's 3x32x32 images"),
        ("cifar_resnet_20", "mnist", "does not fit mnist's 1x28x28 images"),
    ],
)
def test_model_that_does_not_fit_the_data(
    cli, tmp_path: Path, tiny_cifar: Path, subcommand: list[str], model: str, dataset: str,
    expected: str,
) -> None:  # fmt: skip
    data = tiny_cifar if dataset == "cifar10" else DATA
    root = tmp_path / "runs"
    code, _, err = cli(
        *subcommand,
        f"--default_hparams={model}",
        f"--dataset_name={dataset}",
        f"--dataset_root={data}",
        f"--root={root}",
        "--training_steps=1it",
        "--device=cpu",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"error: model {model} {expected}" in err and "models made for" in err
    assert not root.exists()


def test_missing_dataset_root(cli, tmp_path: Path) -> None:
    missing, root = tmp_path / "dta", tmp_path / "runs"
    code, _, err = cli("train", LENET, f"--dataset_root={missing}", f"--root={root}")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"error: --dataset_root {missing} does not exist" in err
    assert not missing.exists() and not root.exists()


def test_failed_download_leaves_no_folder(cli, tmp_path: Path, monkeypatch) -> None:
    """Without --dataset_root the data set is downloaded into <root>/datasets, made for
    it; a download that fails takes the folders it made away again."""
    monkeypatch.setenv("OPEN_LTH_OFFLINE", "0")

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "runs"
    code, _, err = cli("train", LENET, f"--root={root}")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "download failed" in err and "no network here" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("levels", ["2-0", "0,3-1"])
def test_reversed_level_range(cli, tmp_path: Path, levels: str) -> None:
    code, _, err = cli(
        "lottery_branch", "instability", LENET, f"--dataset_root={DATA}",
        f"--root={tmp_path / 'runs'}", f"--levels={levels}",
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    low, high = levels.split(",")[-1].split("-")
    assert f"the range {low}-{high} is reversed; write {high}-{low}" in err
    assert not (tmp_path / "runs").exists()


def test_model_with_the_wrong_number_of_classes() -> None:
    """A model family that ignores the number of classes it is asked for."""
    load_plugins()
    model = registries.models.get(LENET_NAME).create(LENET_NAME, 5)
    mnist = SimpleNamespace(test=SimpleNamespace(images=torch.zeros(1, 1, 28, 28)), num_classes=10)
    with pytest.raises(UserError, match=r"gives \(5,\) outputs for mnist's 10 classes"):
        check_model_fits(model, mnist, LENET_NAME, "mnist")
    assert model.training  # left in the mode it was in
