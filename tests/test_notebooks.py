"""The notebooks run top to bottom: experiments/results.ipynb on a small real results
root (a LeNet lottery with two instability branches), experiments/colab.ipynb as it runs
outside Colab (no install, no Drive, the smallest study). Every cell that draws a figure
must show one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import DATA, REPO, lenet_lottery
from open_lth.main import main

# A cell draws a figure where it calls the notebook's show(fig) (not where it defines it).
DRAWS = re.compile(r"(?<!def )\bshow\(")


def run_notebook(name: str, env: dict[str, str], timeout: int) -> nbformat.NotebookNode:
    """Execute experiments/<name> in a python3 kernel (the venv's: jupyter_client starts
    the kernelspec's "python" as sys.executable) with `env` set, from experiments/."""
    nb = nbformat.read(REPO / "experiments" / name, as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = NotebookClient(
            nb,
            kernel_name="python3",
            timeout=timeout,
            resources={"metadata": {"path": str(REPO / "experiments")}},
        )
        client.execute()  # raises CellExecutionError on the first cell that fails
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def figures(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def assert_every_figure_drawn(nb: nbformat.NotebookNode) -> None:
    drawing = [c for c in nb.cells if c.cell_type == "code" and DRAWS.search(c.source)]
    assert drawing
    blank = [c.source.splitlines()[0] for c in drawing if figures(c) == 0]
    assert not blank, f"cells that drew no figure: {blank}"


def text(nb: nbformat.NotebookNode) -> str:
    return "".join(
        out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs
    )


@pytest.fixture(scope="module")
def results_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Levels 0 and 1 of a LeNet lottery on real MNIST (100 iterations each) and two
    instability branches of level 1, from its start and from step 50 (the instability
    against k figure needs two k)."""
    root = tmp_path_factory.mktemp("results")
    flags = lenet_lottery(root, "--levels=1", "--training_steps=100it", "--eval_every=50it")
    assert main(flags) == 0
    for k in ([], ["--branch_rewinding_steps=50it"]):
        branch = ["lottery_branch", "instability", *flags[1:], "--interpolation_points=3", *k]
        assert main(branch) == 0
    return root


def test_results_notebook_draws_every_figure(results_root: Path) -> None:
    env = {"OPEN_LTH_RESULTS": str(results_root), "OPEN_LTH_DATA": str(DATA)}
    nb = run_notebook("results.ipynb", env, timeout=300)
    assert_every_figure_drawn(nb)
    # 6 figures of the study (histogram, accuracy, error, supermask, interpolation,
    # instability vs k) and the API's accuracy curve.
    assert sum(figures(c) for c in nb.cells) == 7
    # The rebuilt level evaluates to the accuracy its metrics.csv logged.
    (line,) = [x for x in text(nb).splitlines() if x.startswith("rebuilt:")]
    rebuilt, logged = float(line.split()[1]), float(line.split()[-1])
    assert rebuilt == pytest.approx(logged, abs=1e-4) and rebuilt > 0.5


def test_colab_notebook_runs_the_smallest_study_outside_colab(tmp_path: Path) -> None:
    env = {
        "OPEN_LTH_NOTEBOOK_CI": "1",
        "OPEN_LTH_RESULTS": str(tmp_path),
        "OPEN_LTH_DATA": str(DATA),
    }
    nb = run_notebook("colab.ipynb", env, timeout=300)
    assert_every_figure_drawn(nb)
    out = text(nb)
    assert "not on Colab" in out and "drive.mount" not in out
    # The study ran its smallest settings: magnitude, reset and reinit, levels 0-1.
    assert sorted(p.name for p in tmp_path.glob("lottery_*/replicate_1/level_*")) == [
        "level_0",
        "level_0",
        "level_1",
        "level_1",
    ]
    hparams = list(tmp_path.glob("lottery_*/*/level_1/main/hparams.json"))
    assert len(hparams) == 2 and all('"100it"' in p.read_text() for p in hparams)
    (ticket,) = tmp_path.glob("ticket_level_1.safetensors")
    accuracies = [x for x in out.splitlines() if x.startswith("rebuilt:")]
    assert len(accuracies) == 1
    rebuilt, logged = float(accuracies[0].split()[1]), float(accuracies[0].split()[-1])
    assert rebuilt == pytest.approx(logged, abs=1e-4)


def test_study_takes_its_training_steps_from_a_flag(tmp_path: Path) -> None:
    study = REPO / "experiments" / "lenet_fisher_vs_magnitude.py"
    flags = ["--quick", "--strategies=magnitude", "--replicates=1", "--levels=1", "--dry_run"]
    result = subprocess.run(
        [sys.executable, str(study), *flags, "--training_steps=40it", f"--root={tmp_path}"],
        capture_output=True,
        text=True,
        check=True,
    )
    commands = [x for x in result.stdout.splitlines() if "main.py lottery" in x]
    assert len(commands) == 2 and all("--training_steps=40it" in c for c in commands)
