"""The lottery runner on real MNIST: densities to the weight, accuracy of the tickets,
rewinding, re-initialization, resume, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DATA, LENET, REPO, lenet_lottery
from open_lth.foundations import masks, paths
from open_lth.lottery.levels import level_dir
from open_lth.pruning.select import count_to_prune


def small(root: Path, *extra: str) -> list[str]:
    return lenet_lottery(root, "--training_steps=200it", "--eval_every=100it", "--levels=2", *extra)


def replicate(root: Path) -> Path:
    (run,) = root.glob("lottery_*/replicate_1")
    return run


def summary(run: Path, level: int) -> dict:
    return json.loads((level_dir(run, level) / "summary.json").read_text())


def report(run: Path, level: int) -> dict:
    return json.loads((level_dir(run, level) / "sparsity_report.json").read_text())


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("strategy", ["magnitude", "fisher", "random"])
def test_three_levels_on_real_mnist(cli, tmp_path: Path, strategy: str) -> None:
    code, out, err = cli(
        "lottery",
        LENET,
        f"--dataset_root={DATA}",
        f"--root={tmp_path}",
        "--training_steps=2000it",
        "--levels=3",
        f"--pruning_strategy={strategy}",
        "--quiet",
    )
    assert code == 0, err
    run = replicate(tmp_path)
    kept = [report(run, level)["kept"] for level in range(4)]
    assert kept == [266200, 212960, 170368, 136294]  # 100%, 80%, 64%, 51.2% to the weight
    dense = summary(run, 0)["final_test_accuracy"]
    ticket = summary(run, 3)["final_test_accuracy"]
    supermasks = [summary(run, level)["supermask_test_accuracy"] for level in range(4)]
    print(strategy, dense, ticket, supermasks)
    if strategy != "random":
        assert ticket > dense - 0.01
    if strategy == "magnitude":
        # The masked, untrained network improves as the small weights go (Zhou et al.).
        assert supermasks[3] > 0.5 > supermasks[0]
    for level in range(1, 4):
        prev, cur = (
            masks.load(paths.mask(level_dir(run, level - 1))),
            masks.load(paths.mask(level_dir(run, level))),
        )
        pruned = masks.newly_pruned(prev, cur)
        assert sum(int(m.sum()) for m in pruned.values()) == count_to_prune(
            0.2, report(run, level - 1)["kept"]
        )
        if strategy == "magnitude":
            # What was pruned is recoverable (Figure 1): the smallest trained weights.
            trained = load(paths.weights(level_dir(run, level - 1), 2000))
            gone = torch.cat([trained[n][pruned[n]].abs() for n in cur])
            kept_w = torch.cat([trained[n][cur[n]].abs() for n in cur])
            assert gone.max() <= kept_w.min()
    assert "supermask" in out and "51.20" in out


def test_layerwise_keeps_the_fraction_in_every_layer(cli, tmp_path: Path) -> None:
    assert cli(*small(tmp_path, "--pruning_scope=layerwise"))[0] == 0
    layers = report(replicate(tmp_path), 2)["layers"]
    for name, total in [
        ("fc_layers.0.weight", 235200),
        ("fc_layers.1.weight", 30000),
        ("fc.weight", 1000),
    ]:
        first = total - count_to_prune(0.2, total)
        assert layers[name]["kept"] == first - count_to_prune(0.2, first)
        assert abs(layers[name]["density"] - 0.64) < 1e-3


def test_rewinding_starts_every_level_from_the_step_k_weights(cli, tmp_path: Path) -> None:
    assert cli(*small(tmp_path, "--rewinding_steps=50it"))[0] == 0
    run = replicate(tmp_path)
    trunk = load(paths.weights(level_dir(run, 0), 50))
    for level in (1, 2):
        start = load(paths.weights(level_dir(run, level), 50))
        mask = masks.load(paths.mask(level_dir(run, level)))
        for name, value in trunk.items():
            expected = value * mask[name] if name in mask else value
            assert torch.equal(start[name], expected), (level, name)
        assert not paths.weights(level_dir(run, level), 0).exists()


def test_reinitialize_draws_fresh_weights_per_level(cli, tmp_path: Path) -> None:
    assert cli(*small(tmp_path, "--reinitialize"))[0] == 0
    run = replicate(tmp_path)
    starts = [load(paths.weights(level_dir(run, level), 0))["fc.weight"] for level in range(3)]
    mask = masks.load(paths.mask(level_dir(run, 2)))["fc.weight"]
    assert not torch.equal(starts[0] * mask, starts[2])
    assert not torch.equal(starts[1] * mask, starts[2])


def test_more_levels_later_reuse_the_existing_ones(cli, tmp_path: Path) -> None:
    argv = small(tmp_path)
    argv[argv.index("--levels=2")] = "--levels=1"
    assert cli(*argv)[0] == 0
    run = replicate(tmp_path)
    before = (level_dir(run, 1) / "metrics.csv").read_bytes()
    stamp = (level_dir(run, 1) / "summary.json").stat().st_mtime_ns
    code, out, _ = cli(*small(tmp_path, "--summary"))
    assert code == 0 and "(not finished)" not in out and len(out.strip().splitlines()) == 3
    assert cli(*small(tmp_path))[0] == 0
    assert (level_dir(run, 1) / "metrics.csv").read_bytes() == before
    assert (level_dir(run, 1) / "summary.json").stat().st_mtime_ns == stamp
    assert report(run, 2)["kept"] == 170368


def test_killed_lottery_resumes_to_the_same_masks_and_weights(cli, tmp_path: Path) -> None:
    # On the CPU, whose promise is a bit-identical resume (tests/test_train_step.py
    # holds the GPU's); a GPU could also finish before the kill.
    assert cli(*small(tmp_path / "straight", "--device=cpu"))[0] == 0
    argv = [
        sys.executable,
        "main.py",
        *small(
            tmp_path / "killed",
            "--device=cpu",
            "--checkpoint_every=10it",
            "--pruning_strategy=magnitude",
        ),
    ]
    env = {**os.environ, "OPEN_LTH_OFFLINE": "1"}
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    target = None
    while time.time() < deadline and process.poll() is None:
        found = list((tmp_path / "killed").glob("lottery_*/replicate_1/level_1/main/checkpoint.pt"))
        if found:
            target = found[0]
            break
        time.sleep(0.02)
    assert target is not None, "level 1 never checkpointed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert cli(*small(tmp_path / "killed", "--device=cpu", "--checkpoint_every=10it"))[0] == 0
    a, b = replicate(tmp_path / "straight"), replicate(tmp_path / "killed")
    assert a.parent.name == b.parent.name
    for level in range(3):
        for path in (paths.mask(level_dir(a, level)), paths.weights(level_dir(a, level), 200)):
            x, y = load(path), load(level_dir(b, level) / path.name)
            assert all(torch.equal(x[k], y[k]) for k in x), (level, path.name)


@pytest.mark.parametrize(
    "flags,expected",
    [
        (
            ["--pruning_strategy=obd"],
            "unknown pruning strategy 'obd'; known pruning strategies: fisher, gem_miner, grasp, "
            "magnitude, magnitude_at_init, random, snip, synflow",
        ),
        (["--pruning_fraction=1.0"], "--pruning_fraction must be in (0, 1), got 1.0"),
        (["--pruning_fraction=0"], "--pruning_fraction must be in (0, 1)"),
        (
            ["--pruning_layers_to_ignore=conv.weight"],
            "conv.weight is not a prunable weight of mnist_lenet_300_100",
        ),
        (["--rewinding_steps=200it"], "--rewinding_steps 200it is not before the end of training"),
        (["--rewinding_steps=5ep"], "is not before the end of training"),
        (
            ["--reinitialize", "--rewinding_steps=10it"],
            "--reinitialize and --rewinding_steps exclude each other",
        ),
        (["--levels=-1"], "--levels must be a non-negative integer"),
        (
            ["--fisher_examples=100"],
            "--fisher_examples applies to --pruning_strategy=fisher, not magnitude",
        ),
    ],
)
def test_bad_lottery_input(cli, tmp_path: Path, flags: list[str], expected: str) -> None:
    root = tmp_path / "runs"
    code, _, err = cli(*small(root, *flags))
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not root.exists()


def test_the_strategy_is_resolved_once_into_the_object_the_code_asks() -> None:
    """A description looks its strategy up once; the code asks that object (one_shot,
    resolve, hparams_type) instead of comparing names."""
    from open_lth.foundations import registries
    from open_lth.foundations.hparams import (
        DatasetHparams,
        LotteryHparams,
        ModelHparams,
        PruningHparams,
        TrainingHparams,
    )
    from open_lth.lottery.desc import LotteryDesc
    from open_lth.main import load_plugins

    load_plugins()
    desc = LotteryDesc(
        DatasetHparams("mnist", 60),
        ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform"),
        TrainingHparams("sgd", 0.1, "10it"),
        PruningHparams(pruning_strategy="gem_miner"),
        LotteryHparams(),
    )
    assert desc.strategy_type is registries.strategies.get("gem_miner")
    assert desc.strategy_type.one_shot and isinstance(desc.make_strategy(), desc.strategy_type)
    assert "strategy_type" not in desc.to_dict()  # not part of the run's name
