"""A branch named by its lottery's folder (`--lottery=<path>`) instead of all the
lottery's flags, and flags that match no lottery run: the closest run, and how it
differs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DATA, lenet_lottery
from open_lth.main import main

STEPS = ("--training_steps=30it", "--eval_every=30it")
BRANCH = ("lottery_branch", "randomly_reinitialize", "--levels=1")


def full_flags(root: Path, *extra: str) -> list[str]:
    """The branch with all the lottery's flags (lenet_lottery's, after `lottery`)."""
    return [*BRANCH, *lenet_lottery(root, *STEPS, *extra)[1:]]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert main(lenet_lottery(root, *STEPS, "--levels=2")) == 0
    return root


def test_a_branch_by_its_lottery_folder_is_the_full_flags_branch(cli, root: Path) -> None:
    (run,) = root.glob("lottery_*")
    by_folder = [*BRANCH, f"--lottery={run}", f"--dataset_root={DATA}", "--quiet"]
    code, out, err = cli(*by_folder)
    assert code == 0, err
    (made,) = run.glob("replicate_1/level_1/randomly_reinitialize_*")
    assert out.strip().endswith(f"results in {made}")
    assert (made / "main" / "summary.json").exists()
    # The full flags find the same folder, already finished; so does the replicate's folder.
    code, out, err = cli(*full_flags(root))
    assert code == 0 and out.strip() == f"level 1: already finished; results in {made}", err
    by_replicate = [*BRANCH, f"--lottery={run / 'replicate_1'}", "--display_output_location"]
    assert cli(*by_replicate)[:2] == (0, f"{made}\n")


def test_flags_that_match_no_lottery_name_the_closest_run(cli, root: Path) -> None:
    (run,) = root.glob("lottery_*")
    code, out, err = cli(*full_flags(root, "--pruning_fraction=0.5"))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"error: no lottery run with these flags under {root}; ")
    assert f"the closest is {run.name} (differs in: --pruning_fraction=0.2 (yours: 0.5))" in err
    assert f"--lottery={run}" in err


@pytest.mark.parametrize(
    "where,extra,expected",
    [
        ("train", (), "is not a lottery run's folder: give its lottery_<hash> folder"),
        ("missing", (), "is not a lottery run's folder"),
        ("run", ("--pruning_strategy=magnitude",), "drop --pruning_strategy"),
        ("run", ("--default_hparams=mnist_lenet_300_100",), "drop --default_hparams"),
        ("run", ("--replicate=2",), "--replicate=2 is not --lottery's replicate_1"),
    ],
)
def test_a_bad_lottery_folder_is_one_line(cli, root: Path, where, extra, expected) -> None:
    run = next(root.glob("lottery_*"))
    path = {"train": root / f"train_{'0' * 32}", "missing": root / "nothing"}.get(where, run)
    if where == "train":
        path.mkdir(exist_ok=True)
    if "--replicate=2" in extra:
        path = run / "replicate_1"
    before = sorted(root.rglob("*"))
    code, out, err = cli(*BRANCH, f"--lottery={path}", *extra)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert expected in err
    assert sorted(root.rglob("*")) == before
