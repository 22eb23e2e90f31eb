"""Faithful to the study and to open_lth: global pruning counts as sparse_global, the
supermask of a BatchNorm network with re-estimated statistics, controls from the
level's start, the best accuracy without the start, the bias initialization."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from conftest import CIFAR, lenet_lottery
from open_lth.cli import Parser
from open_lth.experiments.analysis import load
from open_lth.foundations import formats, paths, registries
from open_lth.foundations.hparams import ModelHparams
from open_lth.foundations.model import build_model
from open_lth.foundations.store import atomic_torch_save
from open_lth.lottery.levels import Levels, level_dir
from open_lth.lottery.runner import LotteryRunner
from open_lth.main import load_plugins
from open_lth.training import stage

load_plugins()


def lottery_runner(*flags: str) -> LotteryRunner:
    parser = Parser(prog="test")
    defaults = registries.models.get("cifar_resnet_20").default_hparams("cifar_resnet_20")
    LotteryRunner.add_args(parser, defaults)
    return LotteryRunner.create_from_args(parser.parse_args(list(flags)))


def test_resnet20_global_pruning_counts_all_prunable_weights(tmp_path: Path) -> None:
    """ResNet-20, fc.weight ignored (its default), 8 levels of 20%: each level removes
    ⌈0.2 × all surviving prunable weights⌉, fc.weight's included, from the other layers
    (open_lth's sparse_global), so level 8 keeps 0.8^8 = 16.78% of them.

    The count does not depend on the weights' values, so no level is trained: each
    level's "trained" weights are its starting weights moved by seeded noise, which is
    enough for every level to prune by magnitude through the lottery's own code."""
    runner = lottery_runner(
        f"--root={tmp_path}", f"--dataset_root={CIFAR}", "--training_steps=1it", "--levels=8"
    )
    desc = runner.desc
    assert desc.pruning.ignored == ["fc.weight"] and desc.pruning.pruning_scope == "global"
    data = stage.load_data(desc.dataset, runner.job)
    levels = Levels(desc, 1, runner.output_location, data, quiet=True)
    fc_at_init = levels.new_model().state_dict()["fc.weight"]
    atomic_torch_save(
        paths.weights(level_dir(levels.replicate_dir, 0), 0), levels.new_model().state_dict()
    )
    kept = [None] * 9
    for level in range(9):
        mask = levels.mask(level)
        out = level_dir(levels.replicate_dir, level)
        report = json.loads((out / "sparsity_report.json").read_text())
        kept[level] = report["kept"]
        assert report["kept"] == sum(int(m.sum()) for m in mask.values())
        assert mask["fc.weight"].all(), level  # never pruned
        if level > 0:
            survivors = kept[level - 1]  # all prunable weights, fc.weight's 640 included
            removed = (2 * survivors + 9) // 10  # ⌈0.2 × survivors⌉ in integers
            assert kept[level] == survivors - removed, level
        model, _ = levels.starting_model(level)
        g = torch.Generator().manual_seed(level)
        state = {
            k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in model.state_dict().items()
        }
        for name, m in mask.items():
            state[name] = state[name] * m
        atomic_torch_save(paths.weights(out, levels.end), state)
    assert kept[0] == 270896
    total = json.loads((level_dir(levels.replicate_dir, 8) / "sparsity_report.json").read_text())
    assert round(100 * total["density"], 2) == 16.78
    assert torch.equal(levels.starting_model(8)[0].state_dict()["fc.weight"], fc_at_init)


def test_supermask_of_a_batchnorm_network_with_reestimated_statistics(
    cli, tmp_path: Path, tiny_cifar: Path
) -> None:
    code, out, err = cli(
        "lottery",
        "--default_hparams=cifar_resnet_20",
        "--model_name=cifar_resnet_8",
        f"--dataset_root={tiny_cifar}",
        f"--root={tmp_path}",
        "--training_steps=2it",
        "--levels=1",
        "--quiet",
    )
    assert code == 0, err
    assert "supermask (BN re-estimated)" in out
    (run,) = tmp_path.glob("lottery_*/replicate_1")
    out1 = level_dir(run, 1)
    summary = json.loads((out1 / "summary.json").read_text())
    stored = summary["supermask_test_accuracy"]
    recomputed = summary["supermask_test_accuracy_bn_recomputed"]
    assert stored != recomputed

    # The saved starting weights keep the statistics of the reset: mean 0, variance 1.
    start = torch.load(paths.weights(out1, 0), weights_only=True)
    init = torch.load(paths.weights(level_dir(run, 0), 0), weights_only=True)
    means = [k for k in start if k.endswith("running_mean")]
    assert means and all((start[k] == 0).all() for k in means)
    assert all((start[k.replace("mean", "var")] == 1).all() for k in means)
    assert all(torch.equal(start[k], init[k]) for k in start if "running" in k)

    # An independent re-estimation: per BatchNorm, the mean over consecutive batches of
    # the unaugmented training set of each batch's mean and unbiased variance.
    runner = lottery_runner("--model_name=cifar_resnet_8", f"--dataset_root={tiny_cifar}")
    desc = runner.desc
    data = stage.load_data(desc.dataset, runner.job)
    net = build_model(desc.model, 10).to(data.train.device)  # a GPU where there is one
    net.load_state_dict(start)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen: dict[torch.nn.Module, list] = {m: [] for m in norms}
    hooks = [
        m.register_forward_hook(
            lambda m, i, o: seen[m].append((i[0].mean((0, 2, 3)), i[0].var((0, 2, 3))))
        )
        for m in norms
    ]
    net.train()
    with torch.no_grad():
        for first in range(0, len(data.train), data.batch_size):
            x, _ = data.train.batch(
                torch.arange(first, min(first + data.batch_size, len(data.train)))
            )
            net(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for m in norms:
            m.running_mean.copy_(torch.stack([a for a, _ in seen[m]]).mean(0))
            m.running_var.copy_(torch.stack([b for _, b in seen[m]]).mean(0))
    net.eval()
    x, y = data.test.batch(torch.arange(len(data.test)))
    with torch.no_grad():
        ours = (net(x).argmax(1) == y).double().mean().item()
    assert abs(ours - recomputed) <= 1 / len(data.test), (ours, recomputed)


# --- folders made under older rules ---


def small_lottery(root: Path, *extra: str) -> list[str]:
    return lenet_lottery(root, "--training_steps=50it", *extra)


def make_format_1(root: Path) -> None:
    """What the code before format 2 left: hparams.json without `format`."""
    for path in root.rglob("hparams.json"):
        values = json.loads(path.read_text())
        values.pop("format", None)
        path.write_text(json.dumps(values))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_a_folder_of_the_old_count_is_refused_and_left_alone(cli, tmp_path: Path) -> None:
    flags = ["--pruning_layers_to_ignore=fc.weight"]
    assert cli(*small_lottery(tmp_path, *flags, "--levels=1"))[0] == 0
    (level1,) = tmp_path.glob("lottery_*/replicate_1/level_1/main")
    assert json.loads((level1 / "hparams.json").read_text())["format"] == formats.FORMAT
    make_format_1(tmp_path)
    before = snapshot(tmp_path)
    for extra in (["--levels=2"], ["--levels=1"], ["--levels=1", "--summary"]):
        code, out, err = cli(*small_lottery(tmp_path, *flags, *extra))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{level1} was made under format 1" in err
        assert "--pruning_count_without_ignored" in err
        assert snapshot(tmp_path) == before  # nothing changed, nothing added
    # The old count is one flag away (a new run folder).
    code, _, err = cli(
        *small_lottery(tmp_path, *flags, "--levels=1", "--pruning_count_without_ignored")
    )
    assert code == 0, err
    run = next(p for p in tmp_path.glob("lottery_*/replicate_1") if p != level1.parents[1])
    kept = json.loads((level_dir(run, 1) / "sparsity_report.json").read_text())["kept"]
    assert kept == 266200 - (2 * 265200 + 9) // 10  # 20% of the 265,200 outside fc.weight


def test_folders_the_changes_do_not_touch_are_used(cli, tmp_path: Path) -> None:
    """No ignored layer, or layer-wise pruning: format 1 computed the same."""
    flags = ["--pruning_layers_to_ignore=fc.weight", "--pruning_scope=layerwise"]
    assert cli(*small_lottery(tmp_path / "a", *flags, "--levels=1"))[0] == 0
    make_format_1(tmp_path / "a")
    code, out, err = cli(*small_lottery(tmp_path / "a", *flags, "--levels=1", "--summary"))
    assert code == 0 and len(out.strip().splitlines()) == 3, err  # levels 0 and 1
    assert cli(*small_lottery(tmp_path / "b", "--levels=1"))[0] == 0
    make_format_1(tmp_path / "b")
    code, _, err = cli(*small_lottery(tmp_path / "b", "--levels=2"))
    assert code == 0, err
    (level2,) = (tmp_path / "b").glob("lottery_*/replicate_1/level_2/main")
    assert json.loads((level2 / "hparams.json").read_text())["format"] == formats.FORMAT


# --- controls, branch records, the best accuracy ---


def branch_flags(root: Path) -> list[str]:
    return small_lottery(root, "--training_steps=150it", "--rewinding_steps=1ep")[1:]


def test_randomly_reinitialize_starts_at_the_levels_start(cli, tmp_path: Path) -> None:
    """As open_lth's branch: at step k of a rewound run (1ep = 100 iterations here), the
    same point of the schedule as the ticket it controls; step 0 behind a flag."""
    assert cli("lottery", *branch_flags(tmp_path), "--levels=1")[0] == 0
    code, _, err = cli(
        "lottery_branch", "randomly_reinitialize", "--levels=1", *branch_flags(tmp_path)
    )
    assert code == 0, err
    (branch,) = tmp_path.glob("lottery_*/replicate_1/level_1/randomly_reinitialize_*")
    metrics = pd.read_csv(branch / "main" / "metrics.csv")
    assert metrics["iteration"].min() == 100
    assert (branch / "main" / "weights_it100.pt").exists()
    assert not (branch / "main" / "weights_it0.pt").exists()
    record = json.loads((branch / "hparams.json").read_text())
    assert record["start_iteration"] == 100 and record["format"] == formats.FORMAT
    summary = json.loads((branch / "main" / "summary.json").read_text())
    assert summary["start_iteration"] == 100

    # A loader knows k of a branch still running, whatever the flag's unit.
    (branch / "main" / "summary.json").unlink()
    runs = load.runs(tmp_path)
    row = runs[runs["branch"] == "randomly_reinitialize"].iloc[0]
    assert row["status"] == load.INCOMPLETE and row["start_iteration"] == 100

    # The same folder under format 1 (it started at step 0 then) is refused.
    make_format_1(tmp_path)
    code, _, err = cli(
        "lottery_branch", "randomly_reinitialize", "--levels=1", *branch_flags(tmp_path)
    )
    assert code == 2 and "--start_at_step_zero" in err and len(err.strip().splitlines()) == 1

    flags = [*branch_flags(tmp_path), "--start_at_step_zero"]
    assert cli("lottery_branch", "randomly_reinitialize", "--levels=1", *flags)[0] == 0
    (zero,) = [
        p / "main"
        for p in tmp_path.glob("lottery_*/replicate_1/level_1/randomly_reinitialize_*")
        if p != branch
    ]
    assert pd.read_csv(zero / "metrics.csv")["iteration"].min() == 0


def test_best_accuracy_leaves_out_the_start(tmp_path: Path) -> None:
    rows = [(100, 0.9), (200, 0.5), (300, 0.6)]  # the start (k = 100) is the highest
    text = "iteration,name,value\n" + "".join(
        f"{it},test_accuracy,{a}\n{it},test_loss,1.0\n{it},wall_seconds,0.0\n" for it, a in rows
    )
    paths.metrics(tmp_path).write_text(text)
    summary = stage.summarize(tmp_path)
    assert summary["best_test_accuracy"] == 0.6 and summary["final_test_accuracy"] == 0.6
    assert summary["start_iteration"] == 100 and summary["end_iteration"] == 300


def test_bias_init() -> None:
    """zeros (the default, as before) or PyTorch's default U(±1/√fan_in), as open_lth."""

    def model(bias_init: str = "zeros", seed: int = 1) -> torch.nn.Module:
        return build_model(
            ModelHparams("mnist_lenet_300_100", "kaiming_normal", "uniform", bias_init), 10, seed
        )

    assert all((m.bias == 0).all() for m in model().modules() if isinstance(m, torch.nn.Linear))
    a, b, c = model("pytorch"), model("pytorch"), model("pytorch", seed=2)
    bias = a.fc_layers[0].bias
    assert bias.abs().max() <= 1 / 784**0.5 and bias.std() > 0.5 / (784 * 3) ** 0.5
    assert torch.equal(bias, b.fc_layers[0].bias) and not torch.equal(bias, c.fc_layers[0].bias)
    # The weights do not change with the bias rule.
    assert torch.equal(a.fc_layers[0].weight, model().fc_layers[0].weight)
