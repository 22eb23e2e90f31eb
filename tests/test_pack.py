"""Packs: K lottery runs trained together as one stacked network (main.py pack,
lottery --replicates), each writing the folder it would write alone."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DATA, LENET, REPO, lenet_lottery
from open_lth.experiments.jobs import packs
from open_lth.foundations import paths
from open_lth.lottery import pack as pack_runner
from open_lth.lottery.levels import Levels, level_dir
from open_lth.training.metrics import read_rows


def lottery(
    root: Path, *extra: str, steps: str = "10it", every: str = "5it", device: str = "cpu"
) -> list[str]:
    return lenet_lottery(
        root,
        f"--training_steps={steps}",
        f"--eval_every={every}",
        "--levels=1",
        f"--device={device}",
        *extra,
    )


def pack(*runs: list[str]) -> list[str]:
    return ["pack", *(shlex.join(run) for run in runs)]


def files(replicate_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(replicate_dir))
        for p in replicate_dir.rglob("*")
        if p.is_file() and p.name != ".lock"
    )


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def close(a: dict, b: dict, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol, atol) for k in a)


def worst(a: dict, b: dict) -> str:
    return f"largest difference {max((a[k] - b[k]).abs().max().item() for k in a):.3g}"


MIXED = [
    ["--replicate=1", "--pruning_strategy=magnitude"],
    ["--replicate=2", "--pruning_strategy=fisher", "--fisher_examples=60"],
    ["--replicate=3", "--pruning_strategy=random", "--reinitialize"],
]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_a_mixed_pack_writes_what_its_runs_write_alone(cli, tmp_path: Path, device: str) -> None:
    # On CUDA both the pack and the runs alone replay CUDA graphs.
    runs = [lottery(tmp_path / "pack", *flags, device=device) for flags in MIXED]
    code, out, err = cli(*pack(*runs))
    assert code == 0, err
    for flags in MIXED:
        alone_run = lottery(tmp_path / "alone", *flags, device=device)
        assert cli(*alone_run)[0] == 0
        location = cli(*alone_run, "--display_output_location")[1]
        alone = Path(location.strip())
        packed = tmp_path / "pack" / alone.relative_to(tmp_path / "alone")
        # The same folder, the same files, the same description.
        assert files(packed) == files(alone)
        for level in (0, 1):
            a, p = level_dir(alone, level), level_dir(packed, level)
            assert (a / "hparams.json").read_text() == (p / "hparams.json").read_text()
            assert not paths.checkpoint(p).exists()
            # The same starting weights (reset: the replicate's init; re-init: its seed).
            assert close(load(paths.weights(a, 0)), load(paths.weights(p, 0)), 0, 0)
        # Over the first steps the stacked layers agree with the plain ones to float
        # tolerance; level 1's mask comes from those weights. On CUDA, cuBLAS's batched
        # and plain GEMMs round differently, and Adam turns a gradient near zero into a
        # step of up to lr (1.2e-3) whichever its sign, so ten steps drift further (with
        # other batches, ~1e-2).
        atol = 1e-6 if device == "cpu" else 2e-3
        end0 = [load(paths.weights(level_dir(d, 0), 10)) for d in (alone, packed)]
        assert close(*end0, atol=atol), worst(*end0)
        masks = [load(paths.mask(level_dir(d, 1))) for d in (alone, packed)]
        agree = sum((masks[0][k] == masks[1][k]).sum().item() for k in masks[0])
        total = sum(m.numel() for m in masks[0].values())
        assert agree >= total - 2  # a tie at the threshold may fall either way
        if agree == total:
            end1 = [load(paths.weights(level_dir(d, 1), 10)) for d in (alone, packed)]
            assert close(*end1, rtol=1e-4, atol=max(atol, 1e-5)), worst(*end1)


def test_a_convolutional_pack_on_a_cpu_trains_its_runs_in_turn(
    cli, tmp_path: Path, tiny_cifar: Path
) -> None:
    """On a CPU stacking a ResNet only slows it (pack.trains_in_turn): its runs train one
    after the other, each exactly as alone, to the bit."""

    def resnet(root: Path, replicate: int) -> list[str]:
        return [
            "lottery", "--default_hparams=cifar_resnet_8", f"--dataset_root={tiny_cifar}",
            f"--root={root}", "--batch_size=32", "--training_steps=6it", "--eval_every=3it",
            "--levels=1", f"--replicate={replicate}",
        ]  # fmt: skip

    code, out, err = cli(*pack(resnet(tmp_path / "pack", 1), resnet(tmp_path / "pack", 2)))
    assert code == 0, err
    assert "trained one after the other (a convolutional model on a CPU)" in out
    for replicate in (1, 2):
        run = resnet(tmp_path / "alone", replicate)
        assert cli(*run, "--quiet")[0] == 0
        alone = Path(cli(*run, "--display_output_location")[1].strip())
        packed = tmp_path / "pack" / alone.relative_to(tmp_path / "alone")
        assert files(packed) == files(alone)
        for level in (0, 1):
            a, p = (paths.weights(level_dir(d, level), 6) for d in (alone, packed))
            assert close(load(a), load(p), 0, 0), (replicate, level)
    assert pack_runner.trains_in_turn("cifar_resnet_20", torch.device("cpu"))
    assert not pack_runner.trains_in_turn("mnist_lenet_300_100", torch.device("cpu"))
    assert not pack_runner.trains_in_turn("cifar_resnet_20", torch.device("cuda"))


def _iterations(root: Path) -> list[int]:
    found = sorted(root.glob("lottery_*/replicate_*/level_1/main/checkpoint.pt"))
    if len(found) < 2:
        return []
    try:
        return [int(load(p)["iteration"]) for p in found]
    except Exception:  # a file being renamed into place
        return []


def test_a_killed_pack_resumes_to_the_uninterrupted_pack_and_its_runs_alone(
    cli, tmp_path: Path
) -> None:
    flags = ["--replicates=1-2", "--checkpoint_every=10it"]
    assert cli(*lottery(tmp_path / "straight", *flags, steps="200it", every="100it"))[0] == 0
    argv = [
        sys.executable,
        "main.py",
        *lottery(tmp_path / "killed", *flags, steps="200it", every="100it"),
    ]
    env = {**os.environ, "OPEN_LTH_OFFLINE": "1"}
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline, stopped = time.time() + 120, False
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
        process.send_signal(signal.SIGSTOP)
        seen = _iterations(tmp_path / "killed")
        # Killed between two checkpoints, not while the pack writes its K files.
        if seen and len(set(seen)) == 1 and 0 < seen[0] < 200:
            stopped = True
            break
        process.send_signal(signal.SIGCONT)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert stopped, "level 1 of the pack never checkpointed"
    # A copy of the killed runs: replicate 2 resumes alone from its own checkpoint.
    shutil.copytree(tmp_path / "killed", tmp_path / "alone")
    # As if the kill had come while the pack replaced its checkpoints: replicate 2 still
    # at the one before. Replicate 1 rolls back to it, and the pack resumes as one.
    (lagging,) = (tmp_path / "killed").glob("lottery_*/replicate_2/level_1/main")
    os.replace(paths.previous_checkpoint(lagging), paths.checkpoint(lagging))
    assert cli(*lottery(tmp_path / "killed", *flags, steps="200it", every="100it"))[0] == 0
    code, _, err = cli(*lottery(tmp_path / "alone", "--replicate=2", steps="200it", every="100it"))
    assert code == 0, err
    for r in (1, 2):
        (straight,) = (tmp_path / "straight").glob(f"lottery_*/replicate_{r}")
        killed = tmp_path / "killed" / straight.relative_to(tmp_path / "straight")
        for level in (0, 1):
            a, b = (load(paths.weights(level_dir(d, level), 200)) for d in (straight, killed))
            assert close(a, b, 0, 0), (r, level)  # the pack resumed to the bit
    resumed = tmp_path / "alone" / straight.relative_to(tmp_path / "straight")
    end = [load(paths.weights(level_dir(d, 1), 200)) for d in (straight, resumed)]
    assert end[0].keys() == end[1].keys()
    assert (level_dir(resumed, 1) / "summary.json").exists()
    # Alone, from the pack's checkpoint, it follows the packed run to float tolerance.
    curves = [read_rows(paths.metrics(level_dir(d, 1))) for d in (straight, resumed)]
    assert [r[:2] for r in curves[0]] == [r[:2] for r in curves[1]]
    for (_, name, a), (_, _, b) in zip(*curves, strict=True):
        if name != "wall_seconds":
            assert a == pytest.approx(b, rel=1e-3, abs=1e-3), name


def test_a_diverging_run_stops_alone_and_the_pack_fails_naming_it(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Levels.starting_model

    def poisoned(self: Levels, level: int) -> tuple:
        model, start = original(self, level)
        if self.replicate == 2 and level == 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return model, start

    monkeypatch.setattr(Levels, "starting_model", poisoned)
    code, _, err = cli(*lottery(tmp_path, "--replicates=1-3", "--levels=2"))
    assert code == 3
    (last,) = err.strip().splitlines()[-1:]
    assert "1 of 3 runs of the pack diverged" in last and "replicate_2" in last
    for r in (1, 3):
        (run,) = tmp_path.glob(f"lottery_*/replicate_{r}")
        assert (level_dir(run, 2) / "summary.json").exists()
    (bad,) = tmp_path.glob("lottery_*/replicate_2")
    assert (level_dir(bad, 0) / "summary.json").exists()
    assert not (level_dir(bad, 1) / "summary.json").exists()
    assert not level_dir(bad, 2).exists()


def test_replicates_print_one_folder_a_line(cli, tmp_path: Path) -> None:
    code, out, _ = cli(*lottery(tmp_path, "--replicates=1-2,5"), "--display_output_location")
    assert code == 0
    lines = out.strip().splitlines()
    assert [Path(line).name for line in lines] == ["replicate_1", "replicate_2", "replicate_5"]
    assert len({Path(line).parent for line in lines}) == 1
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv,expected",
    [
        (
            lambda root: pack(lottery(root, "--lr=0.1"), lottery(root, "--lr=0.2")),
            "pack: run 2 cannot share a step with run 1, they differ in --lr (0.1 vs 0.2)",
        ),
        (
            lambda root: pack(lottery(root), lottery(root, "--levels=2", "--replicate=2")),
            "they differ in --levels (1 vs 2)",
        ),
        (
            lambda root: pack(
                lottery(root),
                lottery(root, "--pruning_strategy=gem_miner", "--target_density=0.5"),
            ),
            "the kind of strategy (iterative vs one-shot",
        ),
        (
            lambda root: pack(lottery(root), lottery(root)),
            "pack: runs 1 and 2 are the same run",
        ),
        (
            lambda root: pack(lottery(root), ["train", LENET]),
            "pack: each run is a quoted `lottery ...` command line",
        ),
        (
            lambda root: ["pack", shlex.join(lottery(root)), shlex.join(lottery(root, "--bogus"))],
            "pack: run 2: unrecognized arguments: --bogus",
        ),
        (lambda root: ["pack", f"lottery {LENET} 'unclosed"], "pack: run 1: No closing quotation"),
        (lambda root: ["pack"], "the following arguments are required: RUN"),
        (lambda root: lottery(root, "--replicates="), "--replicates '': write replicates"),
        (lambda root: lottery(root, "--replicates=2-x"), "--replicates '2-x': write replicates"),
        (
            lambda root: lottery(root, "--replicates=1-2", "--replicate=3"),
            "--replicates and --replicate: give one of them",
        ),
    ],
)
def test_bad_pack_input(cli, tmp_path: Path, argv, expected: str) -> None:
    root = tmp_path / "runs"
    code, _, err = cli(*argv(root))
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not root.exists()


def test_a_sweep_groups_compatible_runs_into_packs(tmp_path: Path) -> None:
    runs = [lottery(tmp_path, f"--replicate={r}") for r in (1, 2, 3)]
    runs.append(lottery(tmp_path, "--lr=0.01"))
    todo = [(run, tmp_path / str(i)) for i, run in enumerate(runs)]
    entries = packs.group(todo, 8)
    assert [len(e.members) for e in entries] == [3, 1]
    assert entries[0].run[0] == "pack" and entries[1].run == runs[3]
    assert [shlex.split(a) for a in entries[0].run[1:]] == runs[:3]
    assert [len(e.members) for e in packs.group(todo, 2)] == [1, 2, 1]  # as even as can be
    assert [len(e.members) for e in packs.group(todo, 1)] == [1, 1, 1, 1]


def _checkpoint(folder: Path, it: int, previous: int | None = None) -> Path:
    folder.mkdir(parents=True)
    torch.save({"iteration": it}, paths.checkpoint(folder))
    if previous is not None:
        torch.save({"iteration": previous}, paths.previous_checkpoint(folder))
    return folder


def _at(folder: Path) -> int | None:
    path = paths.checkpoint(folder)
    return int(load(path)["iteration"]) if path.exists() else None


def test_runs_of_a_pack_killed_between_checkpoints_resume_at_one_iteration(
    tmp_path: Path,
) -> None:
    ahead = _checkpoint(tmp_path / "a", 30, previous=20)
    behind = _checkpoint(tmp_path / "b", 20, previous=10)
    pack_runner.align_checkpoints([ahead, behind])
    assert (_at(ahead), _at(behind)) == (20, 20)
    # Killed while the first checkpoints were written: all start afresh.
    first = _checkpoint(tmp_path / "c", 0)
    (tmp_path / "d").mkdir()
    pack_runner.align_checkpoints([first, tmp_path / "d"])
    assert _at(first) is None
    # Already together: untouched.
    same = [_checkpoint(tmp_path / "e", 40, 30), _checkpoint(tmp_path / "f", 40, 30)]
    pack_runner.align_checkpoints(same)
    assert [_at(f) for f in same] == [40, 40]


def test_a_sweep_trains_its_runs_in_packs_and_status_lists_each(tmp_path: Path, capsys) -> None:
    from open_lth.experiments import lenet_fisher_vs_magnitude as lenet
    from open_lth.experiments.jobs import status, sweep

    argv = ["--quick", f"--root={tmp_path}", f"--dataset_root={DATA}", "--replicates=1-2"]
    argv += ["--strategies=random", "--levels=1", "--pack=2"]
    assert sweep.main(lenet.build, None, argv, lenet.add_args) == 0
    out = capsys.readouterr().out
    assert out.count("main.py pack ") == 2 and "all 4 runs done" in out
    rows = status.states(tmp_path)
    assert len(rows) == 4 and {state for state, _, _ in rows} == {"done"}
    assert {len(e["run"]) and e["run"][0] for _, e, _ in rows} == {"lottery"}
    # Run again: every run is found done, nothing is started.
    assert sweep.main(lenet.build, None, argv, lenet.add_args) == 0
    assert "main.py pack" not in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--pack=0", "--jobs=0"])
def test_a_sweep_refuses_a_pack_or_jobs_below_one(tmp_path: Path, capsys, flag: str) -> None:
    from open_lth.experiments import lenet_fisher_vs_magnitude as lenet
    from open_lth.experiments.jobs import sweep

    argv = ["--quick", f"--root={tmp_path}", f"--dataset_root={DATA}", flag]
    assert sweep.main(lenet.build, None, argv, lenet.add_args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {flag.split('=')[0]} must be 1 or more, got 0"
    assert not any(tmp_path.iterdir())
