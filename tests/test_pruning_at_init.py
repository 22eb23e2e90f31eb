"""Pruning at initialization: SNIP, GraSP, SynFlow and magnitude at init against hand
computations on tiny networks, SynFlow without data and its conservation law, GraSP's
Hessian-gradient product against finite differences, the target count, the guards
(layer collapse, the exact count), bad input, and the wiring on real MNIST."""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from conftest import DATA, LENET, lenet_lottery
from open_lth.cli import run as run_main
from open_lth.foundations import masks, registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import ModelHparams, PruningHparams
from open_lth.foundations.model import build_model
from open_lth.lottery.levels import check_level_mask, level_dir
from open_lth.lottery.strategy import PruneContext
from open_lth.main import load_plugins
from open_lth.pruning.at_init import (
    MagnitudeAtInitHparams,
    Scoring,
    balanced_examples,
    examples,
    scoring_inputs,
    target_kept,
)
from open_lth.pruning.grasp import (
    GraspHparams,
    grasp_scores,
    hessian_gradient_product,
    reinitialize_linear,
)
from open_lth.pruning.snip import SnipHparams, mean_loss_gradient, snip_scores
from open_lth.pruning.synflow import SynflowHparams, linearized, synflow_scores
from open_lth.training.data import DeviceData

load_plugins()
CPU = torch.device("cpu")


def weights_of(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def linear_problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A bias-free 4 -> 3 linear classifier in float64 and six examples."""
    torch.manual_seed(seed)
    net = nn.Linear(4, 3, bias=False).double().requires_grad_(False)
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return net, x, y


# --- the formulas, by hand ---


def test_snip_is_the_hand_computed_connection_sensitivity() -> None:
    net, x, y = linear_problem()
    w = net.weight
    p = torch.softmax(x @ w.T, 1)
    grad = (p - F.one_hot(y, 3)).T @ x / len(y)  # ∂ mean CE / ∂W for logits W x
    for chunk in (6, 4):  # one batch, and chunks weighted by their share
        scores = snip_scores(Scoring(net, weights_of(net), ["weight"], x, y, chunk))
        torch.testing.assert_close(scores["weight"], (grad * w).abs())


def test_grasp_is_the_hand_computed_minus_w_hg() -> None:
    net, x, y = linear_problem(1)
    w, t, n = net.weight, 200.0, len(y)
    p = torch.softmax(x @ w.T / t, 1)
    g = (p - F.one_hot(y, 3)).T @ x / (n * t)
    # H v = 1/(N T²) Σₙ (diag pₙ − pₙpₙᵀ)(v xₙ) xₙᵀ for the logits W x / T.
    hg = torch.zeros_like(w)
    for pn, xn in zip(p, x, strict=True):
        hg += torch.outer((torch.diag(pn) - torch.outer(pn, pn)) @ (g @ xn), xn)
    hg /= n * t * t
    scores = grasp_scores(Scoring(net, weights_of(net), ["weight"], x, y, 4), t)
    torch.testing.assert_close(scores["weight"], -w * hg)


def test_grasp_hessian_gradient_product_matches_finite_differences() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    net.requires_grad_(False)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    names, t = ["0.weight", "2.weight"], 2.0
    base = Scoring(net, weights_of(net), names, x, y, 8)
    g = mean_loss_gradient(base, t)
    hg = hessian_gradient_product(dataclasses.replace(base, chunk=3), t)
    eps = 1e-5

    def grad_at(sign: float) -> list[torch.Tensor]:
        w = base.weights
        moved = {**w, **{n: w[n] + sign * eps * d for n, d in zip(names, g, strict=True)}}
        return mean_loss_gradient(dataclasses.replace(base, weights=moved), t)

    plus, minus = grad_at(1.0), grad_at(-1.0)
    for h, a, b in zip(hg, plus, minus, strict=True):
        torch.testing.assert_close(h, (a - b) / (2 * eps), rtol=1e-6, atol=1e-9)
        assert h.abs().max() > 1e-6  # not trivially zero


def test_synflow_is_the_hand_computed_path_score() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    w1, w2 = net[0].weight.detach().abs().double(), net[2].weight.detach().abs().double()
    mask = {"0.weight": torch.ones(4, 3, dtype=torch.bool), "2.weight": torch.ones(2, 4).bool()}
    scores = synflow_scores(linearized(net), mask, list(mask), (3,))
    # R = 1ᵀ|W2||W1|1: ∂R/∂W1[i, j] = Σₖ|W2[k, i]|, ∂R/∂W2[k, i] = Σⱼ|W1[i, j]|.
    torch.testing.assert_close(scores["0.weight"], w2.sum(0)[:, None] * w1)
    torch.testing.assert_close(scores["2.weight"], w1.sum(1)[None, :] * w2)
    assert scores["0.weight"].dtype == torch.float64
    assert net[0].weight.min() < 0  # the network itself is untouched


def test_synflow_conserves_the_flow_in_every_layer() -> None:
    """For bias-free linear layers each layer's total score is R (Tanaka et al.'s law)."""
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 7, bias=False), nn.ReLU(),
        nn.Linear(7, 3, bias=False),
    )  # fmt: skip
    names = ["0.weight", "2.weight", "4.weight"]
    params = dict(net.named_parameters())
    mask = {n: torch.rand(params[n].shape) < 0.7 for n in names}  # under any mask
    scores = synflow_scores(linearized(net), mask, names, (6,))
    totals = torch.stack([scores[n].sum() for n in names])
    lin = linearized(net)
    with torch.no_grad():
        for n in names:
            dict(lin.named_parameters())[n].mul_(mask[n])
        r = lin(torch.ones(1, 6, dtype=torch.float64)).sum()
    torch.testing.assert_close(totals, r.expand(3), rtol=1e-12, atol=0)


# --- the strategies on a tiny LeNet ---


def data(n: int = 300, seed: int = 0) -> DeviceData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return DeviceData(images, labels, (0.1307,), (0.3081,), None, 2, CPU)


def context(
    strategy: str, train: DeviceData | None, tmp_path: Path, trained_seed: int = 9, **pruning
) -> PruneContext:
    hp = ModelHparams("mnist_lenet_30_20", "kaiming_normal", "uniform")
    start = build_model(hp, 10, seed=1)
    trained = build_model(hp, 10, seed=trained_seed)  # a stand-in for level 0's trained net
    p = PruningHparams(strategy, **pruning)
    return PruneContext(trained, masks.dense(start), train, p, 5, 1, start, 60, tmp_path, True)


HPARAMS = {
    "snip": SnipHparams,
    "grasp": GraspHparams,
    "synflow": SynflowHparams,
    "magnitude_at_init": MagnitudeAtInitHparams,
}


@pytest.mark.parametrize("name", list(HPARAMS))
def test_each_strategy_keeps_exactly_the_target(name: str, tmp_path: Path) -> None:
    ctx = context(name, None if name == "synflow" else data(), tmp_path)  # synflow: no data
    strategy = registries.strategies.get(name)(HPARAMS[name](target_density=0.05))
    mask = strategy.prune(ctx, [])
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(0.05 * total)
    assert strategy.kept(ctx.mask, [], ctx.pruning) == round(0.05 * total)
    again = registries.strategies.get(name)(HPARAMS[name](target_density=0.05)).prune(ctx, [])
    assert all(torch.equal(mask[n], again[n]) for n in mask)  # deterministic


def test_magnitude_at_init_scores_the_starting_weights(tmp_path: Path) -> None:
    ctx = context("magnitude_at_init", None, tmp_path)
    mask = registries.strategies.get("magnitude_at_init")(
        MagnitudeAtInitHparams(target_density=0.1)
    ).prune(ctx, [])
    start = dict(ctx.start_model.named_parameters())
    scores = torch.cat([start[n].detach().abs().reshape(-1) for n in mask])
    kept = torch.cat([mask[n].reshape(-1) for n in mask])
    assert scores[kept].min() >= scores[~kept].max()  # the largest |w| of the start


def test_synflow_one_round_keeps_the_highest_scores_and_rounds_matter(tmp_path: Path) -> None:
    ctx = context("synflow", None, tmp_path)
    one = registries.strategies.get("synflow")(SynflowHparams(0.02, synflow_rounds=1))
    mask = one.prune(ctx, [])
    scores = one.scores(ctx, [])
    flat = torch.cat([scores[n].reshape(-1) for n in mask])
    kept = torch.cat([mask[n].reshape(-1) for n in mask])
    assert flat[kept].min() >= flat[~kept].max()
    many = registries.strategies.get("synflow")(SynflowHparams(0.02, synflow_rounds=20))
    other = many.prune(ctx, [])
    assert sum(int(m.sum()) for m in other.values()) == sum(int(m.sum()) for m in mask.values())
    assert any(not torch.equal(mask[n], other[n]) for n in mask)


def test_grasp_removes_its_highest_scores(tmp_path: Path) -> None:
    ctx = context("grasp", data(), tmp_path)
    strategy = registries.strategies.get("grasp")(GraspHparams(target_density=0.3))
    mask = strategy.prune(ctx, [])
    kept_scores = strategy.scores(ctx, [])  # the negated GraSP score: the highest survive
    flat = torch.cat([kept_scores[n].reshape(-1) for n in mask])
    kept = torch.cat([mask[n].reshape(-1) for n in mask])
    assert flat[kept].min() >= flat[~kept].max()


def test_balanced_examples() -> None:
    d = data(300)
    index = balanced_examples(d, None, 7)
    assert len(index) == 100 and torch.bincount(d.labels[index]).tolist() == [10] * 10
    odd = balanced_examples(d, 23, 7)
    assert torch.bincount(d.labels[odd]).tolist() == [3, 3, 3] + [2] * 7
    assert torch.equal(odd, balanced_examples(d, 23, 7))
    assert not torch.equal(odd, balanced_examples(d, 23, 8))
    with pytest.raises(UserError, match="more than the 300 training examples"):
        balanced_examples(d, 301, 7)


def test_target_counts_the_ignored_layers_as_imp_does() -> None:
    mask = {"a": torch.ones(90, dtype=torch.bool), "b": torch.ones(10, dtype=torch.bool)}
    # All 100 prunable weights count; b keeps its 10, a gets the other 20 - 10.
    assert target_kept(0.2, mask, ["b"], PruningHparams("snip")) == (20, 10)
    without = PruningHparams("snip", pruning_count_without_ignored=True)
    assert target_kept(0.2, mask, ["b"], without) == (28, 18)  # round(0.2 × 90) + 10
    with pytest.raises(UserError, match="keeps no weights outside"):
        target_kept(0.05, mask, ["b"], PruningHparams("snip"))


def test_ignored_layers_keep_their_weights(tmp_path: Path) -> None:
    ctx = context("snip", data(), tmp_path)
    strategy = registries.strategies.get("snip")(SnipHparams(target_density=0.1))
    mask = strategy.prune(ctx, ["fc.weight"])
    assert mask["fc.weight"].all()
    assert sum(int(m.sum()) for m in mask.values()) == strategy.kept(
        ctx.mask, ["fc.weight"], ctx.pruning
    )


@pytest.mark.parametrize("name", list(HPARAMS))
def test_a_resnet_with_batchnorm_and_an_ignored_layer(name: str, tmp_path: Path) -> None:
    """Convolutions, BatchNorm and shortcuts: the exact count, fc.weight kept, and the
    level's starting weights and BatchNorm statistics untouched (scoring runs on a copy)."""
    hp = ModelHparams("cifar_resnet_8", "kaiming_normal", "uniform")
    start = build_model(hp, 10, seed=1)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (120, 3, 32, 32), generator=g, dtype=torch.uint8)
    train = DeviceData(images, torch.arange(120) % 10, (0.5,) * 3, (0.25,) * 3, None, 4, CPU)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    ctx = PruneContext(
        start, masks.dense(start), train, PruningHparams(name), 5, 1, start, 16, tmp_path, True
    )
    strategy = registries.strategies.get(name)(HPARAMS[name](target_density=0.1))
    mask = strategy.prune(ctx, ["fc.weight"])
    assert mask["fc.weight"].all()
    assert sum(int(m.sum()) for m in mask.values()) == strategy.kept(
        ctx.mask, ["fc.weight"], ctx.pruning
    )
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items())


# --- the guards ---


def test_layer_collapse_and_the_exact_count_are_checked() -> None:
    previous = {"a": torch.ones(4, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
    collapsed = {"a": torch.tensor([True, True, False, False]), "b": torch.zeros(4).bool()}
    p = PruningHparams("magnitude")
    with pytest.raises(UserError, match="removes every weight of b") as e:
        check_level_mask(previous, collapsed, [], 2, 3, p)
    assert "--allow_layer_collapse" in str(e.value) and "\n" not in str(e.value)
    allowed = PruningHparams("magnitude", allow_layer_collapse=True)
    check_level_mask(previous, collapsed, [], 2, 3, allowed)
    with pytest.raises(RuntimeError, match="kept 2 weights, intended 3"):
        check_level_mask(previous, collapsed, [], 3, 3, allowed)
    with pytest.raises(RuntimeError, match="revived or pruned a wrongly"):
        check_level_mask(collapsed, previous, [], 8, 3, allowed)


def small(root: Path, *extra: str) -> list[str]:
    return lenet_lottery(root, "--training_steps=30it", "--eval_every=30it", "--levels=1", *extra)


def test_layer_collapse_stops_the_run_naming_the_layer(cli, tmp_path: Path) -> None:
    # 27 weights of 266,200 by |w| at init: all in the wide-fan-in later layers.
    flags = ["--pruning_strategy=magnitude_at_init", "--target_density=0.0001"]
    code, _, err = cli(*small(tmp_path, *flags))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "layer collapse" in err and "fc_layers.0.weight" in err
    code, out, err = cli(*small(tmp_path, *flags, "--allow_layer_collapse"))
    assert code == 0, err
    assert "      0.01 " in out  # level 1 trained, 0.01% remaining


def test_a_global_random_mask_that_empties_a_layer_is_refused(cli, tmp_path: Path) -> None:
    # SynFlow keeps 133 weights in every layer; 133 drawn at random over all 266,200 leave
    # the 1,000-weight output layer empty (expected 0.5 of them there).
    flags = ["--pruning_strategy=synflow", "--target_density=0.0005"]
    code, _, err = cli(*small(tmp_path, *flags))
    assert code == 0, err
    (run,) = tmp_path.glob("lottery_*")
    level1 = level_dir(run / "replicate_1", 1)
    assert all(m.any() for m in masks.load(level1 / "mask.pt").values())
    branch = ["lottery_branch", "randomly_prune", *small(tmp_path, *flags)[1:], "--levels=1"]
    code, _, err = cli(*branch, "--random_mask_scope=global")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "layer collapse: randomly_prune --random_mask_scope=global at level 1" in err
    assert "fc.weight" in err and "--random_mask_scope=layerwise" in err
    assert not list(level1.parent.glob("randomly_prune_*"))  # nothing written


# --- bad input: one line, nothing written ---


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--pruning_strategy=snip", "--target_density=0"], "--target_density must be in (0, 1)"),
        (["--pruning_strategy=grasp", "--target_density=1"], "--target_density must be in (0, 1)"),
        (["--pruning_strategy=synflow", "--synflow_rounds=0"], "--synflow_rounds must be at least"),
        (["--pruning_strategy=snip", "--pai_examples=0"], "--pai_examples must be a positive"),
        (["--pruning_strategy=grasp", "--grasp_temperature=0"], "--grasp_temperature must be"),
        (
            ["--pruning_strategy=synflow", "--pai_examples=10"],
            "--pai_examples applies to --pruning_strategy=grasp, snip, not synflow",
        ),
        (
            ["--pruning_strategy=snip", "--synflow_rounds=100"],  # even at its default
            "--synflow_rounds applies to --pruning_strategy=synflow, not snip",
        ),
        (["--pruning_strategy=snip", "--grasp_temperature=100"], "applies to"),
        (["--pruning_strategy=gem_miner", "--pai_examples=5"], "not gem_miner"),
        (
            ["--target_density=0.1"],
            "--target_density applies to --pruning_strategy=gem_miner, grasp, "
            "magnitude_at_init, snip, synflow, not magnitude",
        ),
        (["--pruning_strategy=magnitude_at_init", "--target_density=1e-9"], "keeps no weights"),
        (["--pruning_strategy=snip", "--pruning_scope=layerwise"], "(global only)"),
    ],
)
def test_bad_input(cli, tmp_path: Path, flags: list[str], expected: str) -> None:
    root = tmp_path / "runs"
    code, _, err = cli(*small(root, *flags))
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not root.exists()


def location(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_main([*argv, "--display_output_location", "--root=/r"]) == 0
    return out.getvalue().strip().split("/")[2]


def test_existing_run_names_are_unchanged() -> None:
    # Computed before --target_density moved to the shared one-shot hparams and
    # --allow_layer_collapse was added.
    gem = ["lottery", LENET, "--pruning_strategy=gem_miner"]
    assert location("lottery", LENET) == "lottery_e1c867fb60c9631e738ff8c160b1c1df"
    assert location(*gem, "--levels=8") == "lottery_e2df79f6dcc92c0d6248c45539da507d"
    assert (
        location(
            *gem, "--target_density=0.3", "--gem_miner_steps=2ep", "--gem_miner_prune_every=100it"
        )
        == "lottery_b99987bbf25e901711e687c14c58d03d"
    )
    resnet = ["lottery", "--default_hparams=cifar_resnet_20"]
    assert (
        location(*resnet, "--pruning_strategy=gem_miner", "--levels=8")
        == "lottery_b453b815245003f69db4cef8d8495107"
    )
    assert (
        location(*resnet, "--levels=3", "--pruning_strategy=fisher", "--fisher_examples=100")
        == "lottery_172c6c8d81b2de0c33e830e6438339b2"
    )


# --- the wiring, on real MNIST ---


@pytest.mark.parametrize("name", list(HPARAMS))
def test_lottery_level_one_on_real_mnist(cli, tmp_path: Path, name: str) -> None:
    code, out, err = cli(*small(tmp_path, f"--pruning_strategy={name}", "--target_density=0.05"))
    assert code == 0, err
    (run,) = tmp_path.glob("lottery_*")
    level1 = level_dir(run / "replicate_1", 1)
    report = json.loads((level1 / "sparsity_report.json").read_text())
    assert report["kept"] == round(0.05 * 266200)
    assert json.loads((level1 / "summary.json").read_text())["final_test_accuracy"] > 0.3
    if name != "snip":
        return
    # The shuffle ablation: each layer keeps its count, placed at random.
    code, out, err = cli(
        "lottery_branch", "randomly_prune", *small(tmp_path)[1:-1], "--levels=1",
        "--pruning_strategy=snip", "--target_density=0.05", "--random_mask_scope=layerwise",
    )  # fmt: skip
    assert code == 0, err
    (branch,) = level1.parent.glob("randomly_prune_*")
    shuffled = json.loads((branch / "main" / "sparsity_report.json").read_text())["layers"]
    assert {n: v["kept"] for n, v in shuffled.items()} == {
        n: v["kept"] for n, v in report["layers"].items()
    }
    ticket, control = masks.load(level1 / "mask.pt"), masks.load(branch / "main" / "mask.pt")
    assert any(not torch.equal(ticket[n], control[n]) for n in ticket)
    # main.py report draws it: accuracy vs density per method, the shuffle dotted.
    code, _, err = cli("report", f"--root={tmp_path}", f"--out={tmp_path / 'report'}", "--quiet")
    assert code == 0, err
    index = (tmp_path / "report" / "index.md").read_text()
    assert "## Pruning at initialization" in index and "| snip, shuffled |" in index
    assert list((tmp_path / "report" / "pruning_at_init").glob("fig_pruning_at_init_*.png"))


# --- the study script ---


def test_study_script_builds_its_grid(tmp_path: Path) -> None:
    from open_lth.experiments import pruning_at_init as study
    from open_lth.experiments.jobs import sweep

    parser = argparse.ArgumentParser()
    sweep.add_args(parser)
    study.add_args(parser)
    args = parser.parse_args(["--quick", f"--root={tmp_path}", f"--dataset_root={DATA}"])
    lotteries, branches = study.build(args)
    # LeNet: 4 iterative runs + 5 one-shot x 2 densities; ResNet-20: 4 + 5 x 1.
    assert len(lotteries) == 4 + 10 + 4 + 5
    one_shot = [r for r in lotteries if "--levels=1" in r]
    assert {sweep.flag_value(r, "--target_density") for r in one_shot} == {
        "0.25", "0.0625", "0.64",
    }  # fmt: skip
    gem = [r for r in one_shot if "--pruning_strategy=gem_miner" in r]
    assert all("--gem_miner_steps=6it" in r for r in gem)
    assert not any(a.startswith("--pruning_layers_to_ignore") for r in gem for a in r)
    assert all(r[:2] == ["lottery_branch", "randomly_prune"] for r in branches)
    assert all("--random_mask_scope=layerwise" in r for r in branches)
    strip = lambda r: [a for a in r if not a.startswith("--levels=")]  # noqa: E731
    parents = [strip(r[1:]) for r in lotteries]
    for run in branches:
        assert [a for a in strip(run[2:]) if a != "--random_mask_scope=layerwise"] in parents
    # Every run is a valid command (its folder resolves), and nothing is written.
    for run in lotteries + branches:
        folder, error = sweep.locate(run)
        assert error is None, (run, error)
    assert not list(tmp_path.iterdir())


def test_a_folder_made_before_allow_layer_collapse_shares_the_setting() -> None:
    from open_lth.experiments.analysis import load

    rows = [
        {"kind": "lottery", "model.model_name": "m", "pruning.pruning_fraction": 0.2},
        {"kind": "lottery", "model.model_name": "m", "pruning.pruning_fraction": 0.2},
    ]
    frame = pd.DataFrame(rows)
    frame["pruning.allow_layer_collapse"] = [False, np.nan]
    assert frame.pipe(load._settings).nunique() == 1
    frame["pruning.allow_layer_collapse"] = [True, np.nan]
    assert frame.pipe(load._settings).nunique() == 2


# --- faithful to the released code: SNIP's BatchNorm mode, GraSP's reinit and H g ---


def resnet_context(tmp_path: Path, batch_size: int = 64) -> PruneContext:
    """A ResNet-8 (convolutions, BatchNorm, a linear output) and 40 random CIFAR-like
    examples; one chunk holds them all, so train mode's statistics are the examples'."""
    hp = ModelHparams("cifar_resnet_8", "kaiming_normal", "uniform")
    start = build_model(hp, 10, seed=1)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), generator=g, dtype=torch.uint8)
    train = DeviceData(images, torch.arange(40) % 10, (0.5,) * 3, (0.25,) * 3, None, 4, CPU)
    p = PruningHparams("snip")
    return PruneContext(
        start, masks.dense(start), train, p, 5, 1, start, batch_size, tmp_path, True
    )


def snip_by_hand(ctx: PruneContext, hparams: SnipHparams, train: bool) -> dict[str, torch.Tensor]:
    """|∂L/∂w ⊙ w| with plain autograd on a copy in the given BatchNorm mode."""
    net = copy.deepcopy(ctx.start_model).train(train)
    x, y = examples(ctx, hparams, "snip")
    names = list(ctx.mask)
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), [params[n] for n in names])
    return {n: (g * params[n]).abs().detach() for n, g in zip(names, grads, strict=True)}


def test_snip_scores_with_batchnorm_in_eval_mode_by_default(tmp_path: Path) -> None:
    """Its authors' code (snip-public: is_train=False) and Synaptic-Flow score in eval
    mode; --snip_batchnorm=train is the Missing-the-Mark fork's mode."""
    ctx = resnet_context(tmp_path)
    default = SnipHparams(target_density=0.1, pai_examples=20)
    assert default.snip_batchnorm == "eval"
    train = SnipHparams(target_density=0.1, pai_examples=20, snip_batchnorm="train")
    by_mode = {}
    for hparams, is_train in ((default, False), (train, True)):
        scores = registries.strategies.get("snip")(hparams).scores(ctx, [])
        hand = snip_by_hand(ctx, hparams, is_train)
        for n in hand:
            torch.testing.assert_close(scores[n], hand[n], rtol=1e-4, atol=1e-9)
        by_mode[is_train] = scores
    assert not torch.allclose(by_mode[False]["conv.weight"], by_mode[True]["conv.weight"])
    assert ctx.start_model.training  # the level's network is left as it was


def test_snip_batchnorm_is_eval_or_train() -> None:
    with pytest.raises(UserError, match="--snip_batchnorm must be one of eval, train"):
        SnipHparams(target_density=0.1, snip_batchnorm="inference").validate()


def grasp_by_hand(ctx: PruneContext, hparams: GraspHparams, weights: dict) -> dict:
    """w ⊙ H g (the negation of GraSP's score) with H and g over EVERY conv and linear
    weight, by plain autograd on one batch (no chunks), as the released code."""
    net = copy.deepcopy(ctx.start_model).train()
    x, y = examples(ctx, hparams, "grasp")
    names = list(ctx.mask)
    leaves = [weights[n].clone().requires_grad_() for n in names]

    def loss() -> torch.Tensor:
        out = functional_call(net, {**weights, **dict(zip(names, leaves, strict=True))}, (x,))
        return F.cross_entropy(out / hparams.grasp_temperature, y)

    g = [t.detach() for t in torch.autograd.grad(loss(), leaves)]
    grads = torch.autograd.grad(loss(), leaves, create_graph=True)
    z = sum((a * b).sum() for a, b in zip(grads, g, strict=True))
    hg = torch.autograd.grad(z, leaves)
    return {n: (weights[n] * h).detach() for n, h in zip(names, hg, strict=True)}


def test_grasp_hessian_gradient_product_runs_over_the_ignored_layers_too(tmp_path: Path) -> None:
    """The released code differentiates every conv and linear weight; only the layers
    outside the ignore list are scored."""
    ctx = context("grasp", data(), tmp_path)
    ctx = dataclasses.replace(ctx, batch_size=100)  # one chunk, as the hand computation
    hparams = GraspHparams(target_density=0.2)
    scores = registries.strategies.get("grasp")(hparams).scores(ctx, ["fc.weight"])
    assert "fc.weight" not in scores
    weights = {n: p.detach().clone() for n, p in ctx.start_model.named_parameters()}
    hand = grasp_by_hand(ctx, hparams, weights)
    for n in scores:
        torch.testing.assert_close(scores[n], hand[n], rtol=1e-3, atol=1e-12)


def test_grasp_reinit_redraws_the_linear_layers_of_the_scoring_copy_only(tmp_path: Path) -> None:
    ctx = resnet_context(tmp_path)
    saved = {k: v.clone() for k, v in ctx.start_model.state_dict().items()}
    s = scoring_inputs(ctx, GraspHparams(target_density=0.1, pai_examples=20), "grasp", [], "train")
    ctx.mask["fc.weight"][0, :5] = False  # a pruned weight stays pruned
    before = {n: w.clone() for n, w in s.weights.items()}
    reinitialize_linear(s, ctx.mask, seed=3)
    for n, w in s.weights.items():
        assert torch.equal(w, before[n]) == (n != "fc.weight"), n  # convs, BatchNorm kept
    fc = s.weights["fc.weight"]
    assert not fc[0, :5].any() and fc[1].all()
    fan_out, fan_in = fc.shape  # Xavier normal: std √(2 / (fan_in + fan_out))
    assert abs(fc[1:].std().item() / (2 / (fan_in + fan_out)) ** 0.5 - 1) < 0.2
    # The flag scores at the redrawn weights; the level's network is untouched.
    strategy = registries.strategies.get("grasp")
    hp = GraspHparams(target_density=0.1, pai_examples=20)
    on = strategy(dataclasses.replace(hp, grasp_reinit=True)).scores(ctx, ["fc.weight"])
    off = strategy(hp).scores(ctx, ["fc.weight"])
    assert not torch.allclose(on["conv.weight"], off["conv.weight"])
    assert all(torch.equal(v, saved[k]) for k, v in ctx.start_model.state_dict().items())


def test_synflow_float32_flag(tmp_path: Path) -> None:
    ctx = context("synflow", None, tmp_path)
    strategy = registries.strategies.get("synflow")
    single = strategy(SynflowHparams(0.1, synflow_float32=True)).scores(ctx, [])
    double = strategy(SynflowHparams(0.1)).scores(ctx, [])
    for n in double:
        assert single[n].dtype == torch.float32 and double[n].dtype == torch.float64
        torch.testing.assert_close(single[n].double(), double[n], rtol=1e-3, atol=0)


def test_folders_of_format_2_that_the_changes_touch_are_refused() -> None:
    lenet = build_model(ModelHparams("mnist_lenet_30_20", "kaiming_normal", "uniform"), 10)
    resnet = build_model(ModelHparams("cifar_resnet_8", "kaiming_normal", "uniform"), 10)
    snip, grasp = registries.strategies.get("snip"), registries.strategies.get("grasp")
    assert "--snip_batchnorm=train" in snip.changed_since(2, PruningHparams("snip"), resnet)
    assert snip.changed_since(2, PruningHparams("snip"), lenet) is None  # no BatchNorm
    assert snip.changed_since(3, PruningHparams("snip"), resnet) is None
    ignoring = PruningHparams("grasp", pruning_layers_to_ignore="fc.weight")
    assert "every conv and linear weight" in grasp.changed_since(2, ignoring, resnet)
    assert grasp.changed_since(2, PruningHparams("grasp"), resnet) is None  # none ignored


def test_new_flags_keep_existing_names() -> None:
    # Computed before --snip_batchnorm, --grasp_reinit and --synflow_float32 were added.
    resnet = ["lottery", "--default_hparams=cifar_resnet_20", "--levels=8"]
    assert (
        location(*resnet, "--pruning_strategy=snip") == "lottery_f131c5aa4abb4b8420bc8870ac208f54"
    )
    grasp = [*resnet, "--pruning_strategy=grasp"]
    assert location(*grasp) == "lottery_293ae647203f8140ec4847098ea8496c"
    assert location(*grasp, "--grasp_reinit") != location(*grasp)
    synflow = ["lottery", LENET, "--pruning_strategy=synflow", "--target_density=0.05"]
    assert location(*synflow) == "lottery_fd4fa8f345b653a5018e1df0f5aa6734"
