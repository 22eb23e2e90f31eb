"""`main.py status` on a results root that no sweep started: the runs read from their
folders (done, running, crashed, waiting), with real small runs, one killed."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from test_training import spawn, wait_for_checkpoint

from conftest import lenet_args, lenet_lottery
from open_lth.foundations.store import RunLock


def table(cli, root: Path) -> tuple[dict[str, tuple[str, str]], str]:
    """{run folder: (state, detail)} and the count line, from `main.py status`."""
    code, out, err = cli("status", f"--root={root}")
    assert code == 0, err
    lines = out.splitlines()
    rows = {}
    for line in lines[:-1]:
        state, where, detail = re.match(r"(\S+)\s+(\S+)\s+(.*)", line).groups()
        rows[where] = (state, detail)
    return rows, lines[-1]


def test_status_lists_the_runs_of_a_root_no_sweep_started(cli, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    steps = ("--training_steps=60it", "--eval_every=30it", "--levels=1")
    assert cli(*lenet_lottery(root, *steps))[0] == 0
    assert cli(*lenet_args(root, "--training_steps=100it", "--eval_every=50it"))[0] == 0
    # A long run in another process: running while it lives, crashed once killed.
    process = spawn(root, "--training_steps=20000it")
    try:
        wait_for_checkpoint(root, process, 25)
        (killed,) = [p.parent.parent for p in root.glob("train_*/replicate_1/main/checkpoint.pt")]
        name = str(killed.relative_to(root))
        rows, _ = table(cli, root)
        assert rows[name][0] == "running"
        assert re.fullmatch(r"at iteration \d+", rows[name][1])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    waiting = root / f"train_{'0' * 32}" / "replicate_1"
    waiting.mkdir(parents=True)

    rows, counts = table(cli, root)
    (lottery,) = [w for w in rows if w.startswith("lottery_")]
    assert rows[lottery][0] == "done" and rows[lottery][1].startswith("levels 0-1 done")
    assert "80.0% of the weights" in rows[lottery][1]
    assert rows[name][0] == "crashed" and rows[name][1].startswith("at iteration ")
    done = [w for w, (s, _) in rows.items() if w.startswith("train_") and s == "done"]
    assert len(done) == 1 and rows[done[0]][1].startswith("iteration 100, test accuracy 0.")
    assert rows[str(waiting.relative_to(root))] == ("waiting", "no iteration logged yet")
    assert counts == "4 runs: 2 done, 0 running, 1 crashed, 1 waiting"

    # A lock held (by this process here) is a running run, whatever its files say.
    with RunLock(killed):
        rows, counts = table(cli, root)
    assert rows[name][0] == "running"
    assert counts == "4 runs: 2 done, 1 running, 0 crashed, 1 waiting"


def test_status_of_a_missing_or_empty_root_is_one_line(cli, tmp_path: Path) -> None:
    code, out, err = cli("status", f"--root={tmp_path / 'nothing'}")
    assert code == 2 and out == ""
    assert err == f"error: results root {tmp_path / 'nothing'} does not exist or is not a folder\n"
    (tmp_path / "empty" / "datasets").mkdir(parents=True)
    code, _, err = cli("status", f"--root={tmp_path / 'empty'}")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: no runs under {tmp_path / 'empty'} ")


def test_a_level_whose_gem_miner_search_stopped_says_where(cli, tmp_path: Path, monkeypatch):
    """Level 1's mask is still being found: its row says so, at the search's step, not
    'no iteration logged yet'."""
    from open_lth.training import checkpoints

    root = tmp_path / "runs"
    real = checkpoints.atomic_torch_save

    def killed_after_the_first_search_checkpoint(path: Path, obj: dict) -> None:
        real(path, obj)
        if path.name == "gem_miner_checkpoint.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "atomic_torch_save", killed_after_the_first_search_checkpoint)
    flags = ("--training_steps=20it", "--eval_every=20it", "--pruning_strategy=gem_miner",
             "--levels=1", "--gem_miner_steps=40it", "--gem_miner_prune_every=10it")  # fmt: skip
    try:  # events after steps 11, 21 and 31; the first checkpoint at 11
        cli(*lenet_lottery(root, *flags))
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    rows, _ = table(cli, root)
    ((state, detail),) = [v for k, v in rows.items() if k.startswith("lottery_")]
    assert state == "crashed"
    assert detail.startswith("level 1 searching its mask (Gem-Miner), at step 11"), detail
