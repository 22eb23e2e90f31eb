"""The plugin folders never clash with installed packages of the same plain name: with a
stand-in for Hugging Face's `datasets` (and a `transformers` that imports it) on the
path, the CLI trains from any folder, the API loads every plugin, and a user's
`import datasets` gets the installed package, from the checkout's root too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, REPO
from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.registry import Registry

STANDIN = {
    "datasets/__init__.py": "IS_STANDIN = True\n",
    "transformers/__init__.py": "import datasets\n\nassert datasets.IS_STANDIN\n",
}
API = (
    "from open_lth.main import load_plugins\n"
    "from open_lth.foundations import registries\n"
    "load_plugins()\n"
    "assert {'mnist', 'cifar10'} <= set(registries.datasets.names()), registries.datasets.names()\n"
    "import transformers, datasets\n"
    "assert datasets.IS_STANDIN, datasets.__file__\n"
    "print('ok')\n"
)


@pytest.fixture
def standin(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    for name, text in STANDIN.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    return {**os.environ, "PYTHONPATH": str(site)}


def python(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("where", ["elsewhere", "checkout"])
def test_the_api_and_transformers_work_from_any_folder(where, standin, tmp_path) -> None:
    cwd = REPO if where == "checkout" else tmp_path
    done = python(["-c", API], cwd, standin)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


@pytest.mark.parametrize("where", ["elsewhere", "checkout"])
def test_the_cli_trains_from_any_folder(where, standin, tmp_path) -> None:
    cwd = REPO if where == "checkout" else tmp_path
    root = tmp_path / "runs"
    args = [str(REPO / "main.py"), "train", "--default_hparams=mnist_lenet_300_100"]
    args += [f"--dataset_root={DATA}", f"--root={root}", "--subsample_fraction=0.02"]
    args += ["--training_steps=20it", "--eval_every=20it", "--quiet"]
    done = python(args, cwd, {**standin, "OPEN_LTH_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert len(list(root.glob("train_*/replicate_1/main/weights_it20.pt"))) == 1


def test_a_folder_by_its_plain_name_is_not_there_without_the_package(tmp_path) -> None:
    """Without an installed `datasets`, the checkout's folder does not pose as one."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = python(["-c", "import datasets"], REPO, env)
    assert done.returncode == 1
    assert "No module named 'datasets' (this checkout's datasets/ is open_lth.datasets)" in (
        done.stderr
    )


def test_an_empty_registry_is_an_error(monkeypatch) -> None:
    from open_lth.main import load_plugins, main

    monkeypatch.setitem(registries.ALL, "widgets", Registry("widget"))
    with pytest.raises(UserError, match="no widgets are registered"):
        load_plugins()
    assert main(["train", "--help"]) == 2
