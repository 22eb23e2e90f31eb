"""Gem-Miner: the straight-through scores, the pruning schedule, the frozen start
weights, resume, determinism, bad input, and a lottery run on real MNIST."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch

import open_lth.pruning.gem_miner as gm
from conftest import DATA
from open_lth.foundations import masks, registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import ModelHparams, PruningHparams
from open_lth.foundations.model import build_model
from open_lth.lottery.levels import level_dir
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.gem_miner import GemMinerHparams, GemMinerStrategy
from open_lth.training import checkpoints
from open_lth.training.data import DeviceData
from open_lth.training.signals import Interrupted

CPU = torch.device("cpu")


def data(n: int = 300, augment: bool = False, seed: int = 0) -> DeviceData:
    """Random 28x28 images with labels tied to their mean brightness (learnable)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = (images.float().mean((1, 2, 3)) * 10 / 256).long().clamp(0, 9)
    aug = "crop_flip" if augment else None
    return DeviceData(images, labels, (0.1307,), (0.3081,), aug, 2, CPU)


def model(name: str = "mnist_lenet_50_20", seed: int = 1) -> torch.nn.Module:
    from open_lth.main import load_plugins

    load_plugins()
    return build_model(ModelHparams(name, "kaiming_normal", "uniform"), 10, seed)


def context(
    workdir: Path,
    net: torch.nn.Module | None = None,
    train: DeviceData | None = None,
    mask: dict | None = None,
    seed: int = 0,
    batch_size: int = 30,
) -> PruneContext:
    net = net if net is not None else model()
    mask = mask if mask is not None else masks.dense(net)
    train = train if train is not None else data()
    workdir.mkdir(parents=True, exist_ok=True)
    return PruneContext(
        net, mask, train, PruningHparams("gem_miner"), seed, 1, net, batch_size, workdir, True
    )


def hparams(**changes: object) -> GemMinerHparams:
    values = {
        "target_density": 0.2,
        "gem_miner_steps": "6it",
        "gem_miner_prune_every": "2it",
        **changes,
    }
    return GemMinerHparams(**values)


def prune(ctx: PruneContext, ignore: list[str] = (), **changes: object) -> dict:
    return GemMinerStrategy(hparams(**changes)).prune(ctx, list(ignore))


def after_events(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The search's state after each prune event (cloned): the step, scores, survivors."""
    seen = []
    real = gm._Search.at_iteration

    def spy(self: gm._Search, loop: object, it: int) -> None:
        real(self, loop, it)
        if it in self.event_steps:
            names, net = self.names, self.net
            scores = {n: s.detach().clone() for n, s in zip(names, net.scores, strict=True)}
            alive = {n: a.clone() for n, a in zip(names, net.alive(), strict=True)}
            seen.append({"step": it, "scores": scores, "alive": alive})

    monkeypatch.setattr(gm._Search, "at_iteration", spy)
    return seen


def batches_drawn(monkeypatch: pytest.MonkeyPatch, train: DeviceData) -> list[int]:
    """One entry per training batch the search draws from `train`."""
    drawn = []
    real = train.copies_batch
    monkeypatch.setattr(train, "copies_batch", lambda *a: drawn.append(1) or real(*a))
    return drawn


# --- the straight-through estimator ---


def test_masked_weight_passes_the_gradient_straight_through():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g)
    s = torch.rand(5, 7, generator=g).requires_grad_()
    x = torch.randn(3, 7, generator=g)
    out = x @ gm._MaskedWeight.apply(w, s).T
    torch.testing.assert_close(out, x @ (w * (s > 0.5)).T)
    out.square().sum().backward()
    # d out/d s = d out/d (w·m) · w, also where the score is below 0.5.
    w_eff = (w * (s > 0.5)).requires_grad_()
    (x @ w_eff.T).square().sum().backward()
    torch.testing.assert_close(s.grad, w_eff.grad * w)
    assert (s.grad[s.detach() <= 0.5] != 0).all()


def test_one_backward_reaches_every_surviving_score(tmp_path: Path):
    net = model()
    mask = masks.dense(net)
    mask["fc_layers.0.weight"][:, :100] = False  # the previous level pruned these
    ctx = context(tmp_path, net, mask=mask)
    search = gm._Search(ctx, [], hparams())
    x, y = ctx.train_data.batch(torch.arange(30))
    torch.nn.functional.cross_entropy(search.net(x), y).backward()
    for name, score in zip(search.names, search.net.scores, strict=True):
        alive = mask[name]
        assert score.grad is not None, name
        # Most surviving weights feed the loss (not those of a unit the batch leaves
        # dead), those of rounded-off scores too: the straight-through estimator.
        assert (score.grad[alive] != 0).float().mean() > 0.5, name
        assert (score.grad[alive & (score.detach() <= 0.5)] != 0).any(), name
        assert (score.grad[~alive] == 0).all(), name
    assert (search.net.scores[0].detach()[~mask["fc_layers.0.weight"]] == 0).all()


# --- scores and the schedule ---


def test_scores_stay_in_unit_interval_even_with_a_huge_lr(tmp_path: Path, monkeypatch):
    seen = after_events(monkeypatch)
    prune(context(tmp_path), gem_miner_lr=1e6, gem_miner_prune_every="1it")
    assert [c["step"] for c in seen] == list(range(2, 7))  # an event after steps 2..6
    hit_low = hit_high = False
    for ckpt in seen:
        for name, score in ckpt["scores"].items():
            assert score.min() >= 0 and score.max() <= 1, (ckpt["step"], name)
            alive = ckpt["alive"][name]
            assert (score[~alive] == 0).all()  # removed scores stay 0
            hit_low |= bool((score[alive] == 0).any())
            hit_high |= bool((score[alive] == 1).any())
    assert hit_low and hit_high  # the clamp was needed: without it they leave [0, 1]


def test_default_lr_scores_stay_in_unit_interval(tmp_path: Path, monkeypatch):
    seen = after_events(monkeypatch)
    prune(context(tmp_path), target_density=0.5)
    final = seen[-1]["scores"]
    assert all(s.min() >= 0 and s.max() <= 1 for s in final.values())
    # They moved from their U(0, 1) start (the search trained them).
    start = torch.rand(
        final["fc_layers.0.weight"].shape, generator=torch.Generator().manual_seed(0)
    )
    alive = seen[-1]["alive"]["fc_layers.0.weight"]
    assert not torch.equal(final["fc_layers.0.weight"][alive], start[alive])


@pytest.mark.parametrize("density", [0.5, 0.168, 0.01])
@pytest.mark.parametrize("ignore", [[], ["fc.weight"]])
@pytest.mark.parametrize("previous", [False, True])
def test_schedule_lands_exactly_on_the_target(
    tmp_path: Path, monkeypatch, density: float, ignore: list[str], previous: bool
):
    net = model()
    mask = masks.dense(net)
    if previous:  # the previous level already pruned 30% of each layer, fc included
        g = torch.Generator().manual_seed(5)
        mask = {n: torch.rand(m.shape, generator=g) >= 0.3 for n, m in mask.items()}
    scored = [n for n in mask if n not in ignore]
    total = sum(mask[n].numel() for n in scored)
    n0 = sum(int(mask[n].sum()) for n in scored)
    target = round(density * total)
    seen = after_events(monkeypatch)
    # 10 steps, a period of 3: the released loop counts steps from 0 and prunes after
    # step index 3, 6 and 9, i.e. after 4, 7 and 10 steps.
    new = prune(
        context(tmp_path, net, mask=mask),
        ignore,
        target_density=density,
        gem_miner_steps="10it",
        gem_miner_prune_every="3it",
    )
    assert sum(int(new[n].sum()) for n in scored) == target
    assert set(new) == set(mask)
    for name in mask:
        assert new[name].dtype == torch.bool
        assert not (new[name] & ~mask[name]).any(), name  # nothing revived
    for name in ignore:
        assert torch.equal(new[name], mask[name])
    # The schedule: geometric from n0, the last event exactly on the target.
    assert [c["step"] for c in seen] == [4, 7, 10]
    counts = [sum(int(a.sum()) for a in c["alive"].values()) for c in seen]
    expected = [round(n0 * (target / n0) ** (j / 3)) for j in (1, 2)] + [target]
    assert counts == expected
    assert counts[0] > counts[1] > counts[2]
    assert not (tmp_path / gm.CHECKPOINT).exists()  # removed once the mask is made


def test_the_search_stops_at_its_last_event(tmp_path: Path, monkeypatch):
    """After the released code's last event the scores train on, but the survivors of
    that event are the mask (unflag): the steps after it are not run."""
    seen = after_events(monkeypatch)
    train = data()
    batches = batches_drawn(monkeypatch, train)
    new = prune(context(tmp_path, train=train), gem_miner_steps="6it", gem_miner_prune_every="4it")
    assert [c["step"] for c in seen] == [5] and len(batches) == 5
    assert sum(int(m.sum()) for m in new.values()) == round(0.2 * 40400)


def test_prune_events_are_the_released_loops():
    ipe = 390  # CIFAR-10, batch 128
    events = gm.prune_events(150 * ipe, 5 * ipe, ipe)
    assert events == [(5 * j + 1) * ipe for j in range(1, 30)]  # after epochs 6, ..., 146
    assert gm.prune_events(151 * ipe, 5 * ipe, ipe)[-1] == 151 * ipe  # epoch index 150
    assert gm.prune_events(3 * ipe, ipe, ipe) == [2 * ipe, 3 * ipe]
    assert gm.prune_events(10, 3, ipe) == [4, 7, 10]  # a period in steps counts steps
    assert gm.prune_events(5 * ipe, 5 * ipe, ipe) == []  # no event: a user error


def test_a_search_without_a_prune_event_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="leaves no prune event"):
        prune(context(tmp_path), gem_miner_steps="4it", gem_miner_prune_every="1ep")


def test_target_above_the_previous_mask_is_a_user_error(tmp_path: Path):
    net = model()
    mask = {n: torch.zeros_like(m) for n, m in masks.dense(net).items()}
    mask["fc.weight"][:] = True  # 200 of 40,400 survive
    with pytest.raises(UserError, match="only 200 survive"):
        prune(context(tmp_path, net, mask=mask), target_density=0.01)


def test_only_ignored_layers_is_a_user_error(tmp_path: Path):
    net = model()
    with pytest.raises(UserError, match="ignore"):
        prune(context(tmp_path, net), list(masks.dense(net)))


# --- the frozen start model ---


def test_start_model_is_not_changed(tmp_path: Path):
    """With BatchNorm in train mode, the search must run on a copy: the running
    statistics and the weights of the model the lottery trains stay bit-identical."""
    net = model("cifar_resnet_8_4")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,), generator=g)
    train = DeviceData(images, labels, (0.5,) * 3, (0.25,) * 3, "crop_flip", 4, CPU)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ctx = context(tmp_path, net, train=train, batch_size=16)
    new = prune(ctx, target_density=0.3, gem_miner_steps="3it", gem_miner_prune_every="1it")
    assert sum(int(m.sum()) for m in new.values()) == round(
        0.3 * sum(m.numel() for m in new.values())
    )
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert all(p.requires_grad for p in net.parameters())  # the copy was frozen, not this


def cifar_like(n: int = 32) -> DeviceData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return DeviceData(images, labels, (0.5,) * 3, (0.25,) * 3, "crop_flip", 4, CPU)


def test_the_search_ignores_batchnorm_gamma_and_beta(tmp_path: Path):
    """As the released NonAffineBatchNorm: γ = 1 and β = 0 during the search, so the
    start model's γ and β (a γ near 0 would switch its channel off) change nothing."""
    net = model("cifar_resnet_8_4")
    train = cifar_like()
    changes = {"target_density": 0.3, "gem_miner_steps": "4it", "gem_miner_prune_every": "1it"}
    first = prune(context(tmp_path / "a", net, train=train, batch_size=8), **changes)
    other = model("cifar_resnet_8_4")
    other.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in other.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) * 1e-3)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g))
    assert not torch.equal(other.bn.weight, net.bn.weight)
    second = prune(context(tmp_path / "b", other, train=train, batch_size=8), **changes)
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_resnet20_output_layer_is_scored_by_default(cli, tmp_path: Path):
    """ResNet-20's defaults ignore fc.weight for IMP; Gem-Miner scores it unless the
    command line names it, and the description records the effective list."""
    from open_lth.cli import Parser
    from open_lth.lottery.runner import LotteryRunner

    def desc(*flags: str):
        parser = Parser(prog="test")
        defaults = registries.models.get("cifar_resnet_20").default_hparams("cifar_resnet_20")
        LotteryRunner.add_args(parser, defaults)
        return LotteryRunner.create_from_args(parser.parse_args(list(flags))).desc

    assert desc().pruning.pruning_layers_to_ignore == "fc.weight"  # IMP: as before
    gem = desc("--pruning_strategy=gem_miner", "--levels=8")
    assert gem.pruning.pruning_layers_to_ignore is None
    assert gem.to_dict()["pruning"]["pruning_layers_to_ignore"] is None  # hparams.json
    named = desc("--pruning_strategy=gem_miner", "--pruning_layers_to_ignore=fc.weight")
    assert named.pruning.ignored == ["fc.weight"]

    net = model("cifar_resnet_20")
    ctx = context(tmp_path, net, train=cifar_like(16), batch_size=8)
    new = prune(ctx, gem.pruning.ignored, gem_miner_steps="3it", gem_miner_prune_every="1it")
    kept = int(new["fc.weight"].sum())
    assert 0 < kept < new["fc.weight"].numel()  # scored and pruned like the convolutions
    assert sum(int(m.sum()) for m in new.values()) == round(
        0.2 * sum(m.numel() for m in new.values())
    )


# --- resume and determinism ---


def test_resumed_search_gives_the_uninterrupted_mask(tmp_path: Path, monkeypatch, capsys):
    train = data(augment=True)  # the per-step augmentation must resume too
    # 23 steps, events after 5, 9, 13, 17 and 21 (the last)
    changes = {"gem_miner_steps": "2ep3it", "gem_miner_prune_every": "4it"}
    reference = prune(context(tmp_path / "a", train=train), **changes)

    real = checkpoints.atomic_torch_save
    calls = []

    def crash_after_third(path: Path, obj: dict) -> None:
        real(path, obj)
        calls.append(obj["iteration"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed right after the checkpoint at step 13

    monkeypatch.setattr(checkpoints, "atomic_torch_save", crash_after_third)
    with pytest.raises(KeyboardInterrupt):
        prune(context(tmp_path / "b", train=train), **changes)
    assert calls == [5, 9, 13]
    assert (tmp_path / "b" / gm.CHECKPOINT).exists()
    monkeypatch.setattr(checkpoints, "atomic_torch_save", real)

    batches = batches_drawn(monkeypatch, train)
    loud = context(tmp_path / "b", train=train)
    loud.quiet = False
    capsys.readouterr()
    resumed = prune(loud, **changes)
    assert len(batches) == 21 - 13  # it resumed, it did not start over
    said = f"resuming from iteration 13 ({tmp_path / 'b' / gm.CHECKPOINT})"
    assert said in capsys.readouterr().out.splitlines()
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    assert not (tmp_path / "b" / gm.CHECKPOINT).exists()


def test_a_checkpoint_of_another_search_is_not_resumed(tmp_path: Path, monkeypatch):
    fresh = prune(context(tmp_path / "a"))
    real = checkpoints.atomic_torch_save

    def crash(path: Path, obj: dict) -> None:
        real(path, obj)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "atomic_torch_save", crash)
    with pytest.raises(KeyboardInterrupt):  # another lr's checkpoint after 3 steps
        prune(context(tmp_path / "b"), gem_miner_lr=5.0)
    monkeypatch.setattr(checkpoints, "atomic_torch_save", real)
    assert (tmp_path / "b" / gm.CHECKPOINT).exists()
    again = prune(context(tmp_path / "b"))
    assert all(torch.equal(fresh[n], again[n]) for n in fresh)


def test_mask_is_a_function_of_the_seed(tmp_path: Path):
    a = prune(context(tmp_path / "a", seed=3))
    b = prune(context(tmp_path / "b", seed=3))
    c = prune(context(tmp_path / "c", seed=4))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


# --- hparams ---


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"target_density": 0}, "--target_density must be in \\(0, 1\\), got 0"),
        ({"target_density": 1}, "--target_density must be in \\(0, 1\\), got 1"),
        ({"target_density": 1.5}, "--target_density must be in \\(0, 1\\), got 1.5"),
        ({"gem_miner_lambda": -1}, "--gem_miner_lambda"),
        ({"gem_miner_lr": 0}, "--gem_miner_lr"),
        ({"gem_miner_momentum": 1}, "--gem_miner_momentum"),
        ({"gem_miner_steps": "0ep"}, "--gem_miner_steps"),
        ({"gem_miner_prune_every": "ten"}, "--gem_miner_prune_every"),
    ],
)
def test_bad_hparams(changes: dict, flag: str):
    with pytest.raises(UserError, match=flag):
        GemMinerHparams(**changes)


def test_resolve_fills_the_density_of_the_levels():
    pruning = PruningHparams("gem_miner")
    resolved = GemMinerStrategy.resolve(GemMinerHparams(), 8, pruning)
    assert resolved.target_density == pytest.approx(0.8**8, rel=1e-12)
    assert resolved.target_density == 0.16777216  # exact, for a readable run name
    assert resolved.gem_miner_steps == "150ep"  # the released search
    assert (resolved.gem_miner_prune_every, resolved.gem_miner_lambda) == ("5ep", 5e-5)
    assert GemMinerStrategy.resolve(None, 0, pruning).target_density == 0.8
    half = PruningHparams("gem_miner", pruning_fraction=0.5)
    assert GemMinerStrategy.resolve(GemMinerHparams(), 3, half).target_density == 0.125
    given = GemMinerHparams(target_density=0.3)
    assert GemMinerStrategy.resolve(given, 8, pruning).target_density == 0.3
    assert GemMinerStrategy.one_shot


# --- the lottery on real MNIST ---

LOTTERY = [
    "lottery",
    "--default_hparams=mnist_lenet_300_100",
    f"--dataset_root={DATA}",
    "--pruning_strategy=gem_miner",
    "--levels=8",
    "--quiet",
]


def test_lottery_on_real_mnist(cli, tmp_path: Path):
    code, out, err = cli(
        *LOTTERY,
        f"--root={tmp_path}",
        "--training_steps=100it",
        "--eval_every=100it",
        "--gem_miner_steps=600it",
        "--gem_miner_prune_every=200it",
    )
    assert code == 0, err
    (run,) = tmp_path.glob("lottery_*/replicate_1")
    assert sorted(p.name for p in run.glob("level_*")) == ["level_0", "level_1"]
    report = json.loads((level_dir(run, 1) / "sparsity_report.json").read_text())
    assert report["total"] == 266200
    assert report["kept"] == round(0.8**8 * 266200)
    summary = json.loads((level_dir(run, 1) / "summary.json").read_text())
    assert summary["supermask_test_accuracy"] > 0.5
    hparams = json.loads((level_dir(run, 1) / "hparams.json").read_text())
    assert hparams["strategy"]["target_density"] == 0.16777216
    assert not (level_dir(run, 1) / gm.CHECKPOINT).exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--target_density=1.5"], "--target_density"),
        (["--gem_miner_lambda=-1"], "--gem_miner_lambda"),
        (
            ["--pruning_layers_to_ignore=fc_layers.0.weight,fc_layers.1.weight,fc.weight"],
            "every prunable layer is in --pruning_layers_to_ignore",
        ),
        (["--gem_miner_steps=5ep"], "--gem_miner_steps 5ep leaves no prune event"),
    ],
)
def test_lottery_bad_input(cli, tmp_path: Path, flags: list[str], expected: str):
    """Before anything is written, level 0 included (it is trained before the search)."""
    root = tmp_path / "root"
    code, out, err = cli(*LOTTERY, f"--root={root}", "--training_steps=100it", *flags)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert expected in err
    assert not root.exists() or not any(root.iterdir())


def test_a_signal_checkpoints_the_search_and_it_resumes(tmp_path: Path, monkeypatch):
    """SIGTERM (preemption, `scontrol requeue`) or SIGUSR2 (submitit) in the middle of the
    search, between prune events: the search saves where it is and stops; run again, it
    ends with the uninterrupted mask."""
    train = data(augment=True)
    changes = {"gem_miner_steps": "2ep3it", "gem_miner_prune_every": "4it"}
    reference = prune(context(tmp_path / "a", train=train), **changes)
    real_forward, calls = gm.ScoredNetwork.forward, []

    def signalled(self, x):
        calls.append(1)
        if len(calls) == 11:  # between the events after steps 9 and 13
            signal.raise_signal(signal.SIGUSR2)  # to this thread, at once
        return real_forward(self, x)

    monkeypatch.setattr(gm.ScoredNetwork, "forward", signalled)
    with pytest.raises(Interrupted, match="interrupted at gem_miner step 11"):
        prune(context(tmp_path / "b", train=train), **changes)
    assert torch.load(tmp_path / "b" / gm.CHECKPOINT, weights_only=True)["iteration"] == 11
    calls.clear()
    resumed = prune(context(tmp_path / "b", train=train), **changes)
    assert len(calls) == 21 - 11  # it resumed from step 11, not from the event at 9
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name


# --- the search through the training loop's step ---


@pytest.mark.parametrize("augment", [False, True], ids=["batch-in-step", "augmented"])
def test_the_graph_path_equals_the_eager_search_to_the_bit(
    tmp_path: Path, monkeypatch, augment: bool
):
    """On a CPU the graph path's step (StaticStep without capture: static buffers, the
    learning rate in a device tensor, an unaugmented batch drawn inside the step) ends
    every prune event with the eager search's scores and survivors, to the bit: a
    replay reads the masks that the events update in place."""
    from open_lth.training import loop as loop_module
    from open_lth.training.train_step import StaticStep

    train = data(augment=augment)
    changes = {"gem_miner_steps": "12it", "gem_miner_prune_every": "3it"}
    seen = after_events(monkeypatch)
    eager = prune(context(tmp_path / "a", train=train), **changes)
    eager_states = list(seen)
    seen.clear()
    steps = []

    def static_step(parts, mode, device, name):
        steps.append(StaticStep(parts, capture=False))
        return steps[-1]

    monkeypatch.setattr(loop_module, "make_step", static_step)
    static = prune(context(tmp_path / "b", train=train), **changes)
    assert len(steps) == 1 and [s["step"] for s in seen] == [4, 7, 10]
    for a, b in zip(eager_states, seen, strict=True):
        for name in a["scores"]:
            assert torch.equal(a["scores"][name], b["scores"][name]), (a["step"], name)
            assert torch.equal(a["alive"][name], b["alive"][name]), (a["step"], name)
    assert all(torch.equal(eager[n], static[n]) for n in eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_search_replays_a_cuda_graph(tmp_path: Path, monkeypatch):
    """On CUDA the search's step is captured once and replayed (no fallback to eager),
    and a replay sees every prune event: a removed score stays 0 at every later event
    (a graph reading a stale copy of the masks would train it again); the mask lands
    on the target and agrees with the eager search's."""
    from open_lth.training import loop as loop_module
    from open_lth.training.train_step import FallbackStep

    gpu = torch.device("cuda")
    images, labels = cifar_like(64).images.to(gpu), cifar_like(64).labels.to(gpu)
    train = DeviceData(images, labels, (0.5,) * 3, (0.25,) * 3, "crop_flip", 4, gpu)
    made, real_make = [], loop_module.make_step
    monkeypatch.setattr(loop_module, "make_step", lambda *a: made.append(real_make(*a)) or made[-1])
    changes = {"target_density": 0.3, "gem_miner_steps": "12it", "gem_miner_prune_every": "2it"}
    results = {}
    for graphs in ("auto", "off"):
        seen = after_events(monkeypatch)
        net = model("cifar_resnet_8_4").to(gpu)
        ctx = context(tmp_path / graphs, net, train=train, batch_size=16)
        ctx.cuda_graphs = graphs
        results[graphs] = prune(ctx, **changes)
        if graphs == "auto":
            assert isinstance(made[-1], FallbackStep) and made[-1].eager is None
            assert made[-1].step.graph is not None
            for state in seen:
                for name, score in state["scores"].items():
                    assert (score[~state["alive"][name]] == 0).all(), (state["step"], name)
    graphed, eager = results["auto"], results["off"]
    total = sum(m.numel() for m in graphed.values())
    assert sum(int(m.sum()) for m in graphed.values()) == round(0.3 * total)
    agree = sum(int((graphed[n] == eager[n]).sum()) for n in graphed)
    assert agree >= 0.98 * total


def test_the_speed_benchmark_runs_on_a_cpu():
    """benchmarks/gem_miner_speed.py's smoke run: the figure itself needs a GPU
    (benchmarks/gpu_checks.sh gem_miner)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gem_miner_speed.py"
    argv = [sys.executable, str(script), f"--dataset_root={DATA}", "--device=cpu"]
    argv += ["--model=cifar_resnet_8_4", "--steps=4,8"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "the released search (56940 steps)" in done.stdout


def test_a_prune_event_on_channels_last_tensors(tmp_path: Path):
    """On CUDA a convolution's scores, survivors and momentum are channels_last (the loop
    converts the network): a prune event removes the same weights by position as on
    contiguous tensors, in place."""
    ctx = context(tmp_path, model("cifar_resnet_8_4"), train=cifar_like(16), batch_size=8)
    states = []
    for layout in (torch.contiguous_format, torch.channels_last):
        search = gm._Search(ctx, [], hparams(target_density=0.3))
        net = search.net.to(memory_format=layout)
        optimizer = torch.optim.SGD(list(net.scores), lr=0.1, momentum=0.9)
        for s in net.scores:  # one step, so that every score has a momentum buffer
            s.grad = torch.ones_like(s)
        optimizer.step()
        search._prune_event(1, optimizer)
        buffers = [optimizer.state[s]["momentum_buffer"].clone() for s in net.scores]
        states.append(([s.detach().clone() for s in net.scores], net.alive(), buffers))
    conv = search.names.index("conv.weight")
    assert not states[1][0][conv].is_contiguous()  # the case under test
    assert (~states[0][1][conv]).any()  # the event removed some of this layer
    for first, second in zip(*states, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_search_says_a_line_at_each_prune_event(tmp_path: Path, capsys):
    """A long search shows in a log without a terminal (Colab, Slurm): one line an event,
    with its counts, the loss since the line before, the rate and the time left."""
    ctx = context(tmp_path)
    ctx.quiet = False
    new = prune(ctx, gem_miner_steps="10it", gem_miner_prune_every="3it")  # after 4, 7, 10
    lines = [line for line in capsys.readouterr().out.splitlines() if "gem_miner" in line]
    assert [line.split(":")[0] for line in lines] == [f"gem_miner step {s}/10" for s in (4, 7, 10)]
    kept = sum(int(m.sum()) for m in new.values())
    assert f"prune event 3/3, {kept:,} of 40,400 scored weights left" in lines[-1]
    assert all(re.search(r"train loss \d+\.\d{4}, [\d.]+ it/s, \S+ left$", x) for x in lines)
