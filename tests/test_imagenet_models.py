"""The ImageNet and Tiny ImageNet ResNets: parameter counts, names, shapes, defaults,
the ignored layers, and every pruning strategy on small widths and 64x64 inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from open_lth.foundations import masks, registries
from open_lth.foundations.hparams import ModelHparams, PruningHparams
from open_lth.foundations.model import build_model
from open_lth.lottery.strategy import PruneContext
from open_lth.main import load_plugins
from open_lth.pruning.at_init import MagnitudeAtInitHparams
from open_lth.pruning.fisher import CONV_METHODS, fisher_diagonal
from open_lth.pruning.gem_miner import GemMinerHparams
from open_lth.pruning.grasp import GraspHparams
from open_lth.pruning.snip import SnipHparams
from open_lth.pruning.synflow import SynflowHparams
from open_lth.training.data import DeviceData

load_plugins()
CPU = torch.device("cpu")
CLASSES = 4  # small heads: the tests are about the bodies
# ImageNet's mean and std.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(name: str, seed: int = 1, outputs: int | None = CLASSES) -> nn.Module:
    return build_model(ModelHparams(name, "kaiming_normal", "uniform"), outputs, seed)


def count_at_full_size(name: str) -> int:
    """The real module's parameters, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = registries.models.get(name).create(name, None)
    return sum(p.numel() for p in model.parameters())


def images(n: int, size: int = 64, seed: int = 0) -> DeviceData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return DeviceData(x, torch.arange(n) % CLASSES, MEAN, STD, None, 0, CPU)


# --- the architectures ---


@pytest.mark.parametrize(
    "name, expected",
    [
        # torchvision's resnet18 ... resnet152, the standard counts.
        ("imagenet_resnet_18", 11_689_512),
        ("imagenet_resnet_34", 21_797_672),
        ("imagenet_resnet_50", 25_557_032),
        ("imagenet_resnet_101", 44_549_160),
        ("imagenet_resnet_152", 60_192_808),
        # blocks (3, 24, 36, 3), as upstream; torchvision has no ResNet-200.
        ("imagenet_resnet_200", 64_673_832),
        # ResNet-18 with 200 outputs: 512·800 + 800 fewer than with 1000.
        ("tinyimagenet_resnet_18", 11_689_512 - 410_400),
        # ... and a 3x3 stem in place of the 7x7: 3·64·(49 - 9) fewer.
        ("tinyimagenet_modifiedresnet_18", 11_689_512 - 410_400 - 7_680),
    ],
)
def test_parameter_counts_are_the_standard_ones(name: str, expected: int) -> None:
    assert count_at_full_size(name) == expected


def test_width_scales_every_stage() -> None:
    model = build("imagenet_resnet_50_8")
    assert model.model.conv1.out_channels == 8
    assert model.model.layer4[0].conv3.out_channels == 8 * 8 * 4
    assert model.model.fc.in_features == 256


@pytest.mark.parametrize(
    "name, valid",
    [
        ("imagenet_resnet_18", True),
        ("imagenet_resnet_200", True),
        ("imagenet_resnet_50_128", True),
        ("imagenet_resnet_18_8", True),
        ("imagenet_resnet_20", False),  # not an ImageNet depth
        ("imagenet_resnet_269", False),  # upstream's branch for it cannot run
        ("imagenet_resnet_050", False),  # one architecture, one name
        ("imagenet_resnet_50_0", False),
        ("imagenet_resnet_50_64_1", False),
        ("imagenet_resnet", False),
        ("tinyimagenet_resnet_18", True),
        ("tinyimagenet_modifiedresnet_18", True),
        ("tinyimagenet_resnet_18_8", True),
        ("tinyimagenet_resnet_50", False),  # the fork has ResNet-18 only
        ("tinyimagenet_modifiedresnet_34", False),
        ("cifar_resnet_20", True),
    ],
)
def test_name_validation(name: str, valid: bool) -> None:
    assert (name in registries.models) is valid
    families = registries.models._entries.values()
    assert sum(f.is_valid_model_name(name) for f in families) == int(valid)


@pytest.mark.parametrize("family", ["imagenet_resnet_50", "tinyimagenet_resnet_18"])
def test_odd_names_are_answered_not_raised(family: str) -> None:
    cls = registries.models.get(family)
    assert cls.is_valid_model_name(None) is False
    assert cls.is_valid_model_name(50) is False
    with pytest.raises(ValueError, match="not a"):
        cls.create("cifar_resnet_20", None)


@pytest.mark.parametrize(
    "name, size, outputs",
    [
        ("imagenet_resnet_18_8", 224, None),
        ("imagenet_resnet_18_8", 64, None),
        ("imagenet_resnet_50_4", 224, None),
        ("imagenet_resnet_50_4", 64, None),
        ("tinyimagenet_resnet_18_8", 64, None),
        ("tinyimagenet_modifiedresnet_18_8", 64, None),
        ("imagenet_resnet_18_8", 64, 10),
    ],
)
def test_output_shapes(name: str, size: int, outputs: int | None) -> None:
    model = build(name, outputs=outputs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    default = 200 if name.startswith("tiny") else 1000
    assert out.shape == (2, outputs or default)
    assert torch.isfinite(out).all()


def test_modified_stem_keeps_the_resolution() -> None:
    """The modified ResNet's 3x3 stride-1 stem without max-pool sees 64x64 at stage 1;
    the standard one 16x16."""
    seen = {}
    for name in ("tinyimagenet_resnet_18_8", "tinyimagenet_modifiedresnet_18_8"):
        model = build(name).eval()
        hook = model.model.layer1.register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, o.shape[-1])
        )
        with torch.no_grad():
            model(torch.randn(2, 3, 64, 64))
        hook.remove()
    assert seen == {"tinyimagenet_resnet_18_8": 16, "tinyimagenet_modifiedresnet_18_8": 64}
    stem = build("tinyimagenet_modifiedresnet_18_8").model.conv1
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))


# --- defaults and pruned layers ---


@pytest.mark.parametrize("name", ["imagenet_resnet_50", "imagenet_resnet_18_8"])
def test_resnet50_default_hparams_are_upstreams(name: str) -> None:
    d = registries.models.get(name).default_hparams(name)
    assert (d.dataset.dataset_name, d.dataset.batch_size) == ("imagenet", 1024)
    assert (d.model.model_name, d.model.model_init, d.model.batchnorm_init) == (
        name,
        "kaiming_normal",
        "uniform",
    )
    t = d.training
    assert (t.optimizer_name, t.lr, t.momentum, t.weight_decay) == ("sgd", 0.4, 0.9, 1e-4)
    assert (t.training_steps, t.warmup_steps) == ("90ep", "5ep")
    assert (t.milestone_steps, t.gamma) == ("30ep,60ep,80ep", 0.1)
    assert d.pruning.pruning_strategy == "magnitude"
    assert d.pruning.pruning_fraction == 0.2
    # Upstream's ImageNet defaults prune every layer, the classifier included.
    assert d.pruning.pruning_layers_to_ignore is None
    assert registries.models.get(name).is_convolutional


@pytest.mark.parametrize("name", ["tinyimagenet_resnet_18", "tinyimagenet_modifiedresnet_18"])
def test_tinyimagenet_default_hparams(name: str) -> None:
    d = registries.models.get(name).default_hparams(name)
    assert (d.dataset.dataset_name, d.dataset.batch_size) == ("tinyimagenet", 256)
    assert d.model.model_name == name
    t = d.training
    assert (t.optimizer_name, t.lr, t.training_steps, t.milestone_steps) == (
        "sgd",
        0.2,
        "200ep",
        "100ep,150ep",
    )
    assert d.pruning.pruning_layers_to_ignore is None


def test_prunable_and_output_layers_use_upstreams_names() -> None:
    model = build("imagenet_resnet_50_4")
    names = model.prunable_layer_names
    params = dict(model.named_parameters())
    assert model.output_layer_names == ["model.fc.weight", "model.fc.bias"]
    assert set(model.output_layer_names) <= params.keys()
    assert {"model.conv1.weight", "model.fc.weight", "model.layer1.0.conv3.weight"} <= set(names)
    # Stage 1 of a bottleneck net projects 4 -> 16 channels; stages 2 to 4 also stride.
    assert {f"model.layer{i}.0.downsample.0.weight" for i in (1, 2, 3, 4)} <= set(names)
    assert "model.layer1.1.downsample.0.weight" not in params  # identity shortcuts
    assert not any(".bn" in n or "downsample.1" in n or n.endswith("bias") for n in names)
    # 1 stem + 16 blocks × 3 convs + 4 projections + fc.
    assert len(names) == 1 + 16 * 3 + 4 + 1


# --- every strategy ---


def brute_force(model: nn.Module, data: DeviceData) -> dict[str, torch.Tensor]:
    """(1/N)·Σₙ g_n², one backward pass per example, in float64 (tests/test_fisher.py's
    reference)."""
    model = model.double().eval()
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    params = dict(model.named_parameters())
    weights = [params[f"{n}.weight"] for n in layers]
    sums = [torch.zeros_like(w) for w in weights]
    for i in range(len(data)):
        x, y = data.batch(torch.tensor([i]))
        loss = nn.functional.cross_entropy(model(x.double()), y)
        for s, g in zip(sums, torch.autograd.grad(loss, weights), strict=True):
            s += g.square()
    model.float()
    return {f"{n}.weight": s / len(data) for n, s in zip(layers, sums, strict=True)}


@pytest.fixture(scope="module")
def fisher_case() -> tuple[nn.Module, DeviceData, dict[str, torch.Tensor]]:
    """imagenet_resnet_18_8 (the 7x7 stride-2 stem with padding 3, strided 3x3 convs,
    1x1 stride-2 projections) with BatchNorm statistics away from their defaults, five
    64x64 examples and their brute-force Fisher."""
    data = images(5)
    model = build("imagenet_resnet_18_8").train()
    with torch.no_grad():
        model(data.batch(torch.arange(5))[0] * 1.5 + 0.5)
    return model, data, brute_force(model, data)


@pytest.mark.parametrize("method", ["auto", *CONV_METHODS])
def test_fisher_matches_brute_force(fisher_case: tuple, method: str) -> None:
    model, data, reference = fisher_case
    stem = model.model.conv1
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7), (2, 2), (3, 3))
    ours = fisher_diagonal(model, data, batch_size=2, conv_method=method)
    assert ours.keys() == reference.keys()
    assert "model.layer2.0.downsample.0.weight" in ours  # a 1x1 stride-2 conv
    for name, ref in reference.items():
        assert ref.abs().max() > 0, name  # a vacuous comparison would prove nothing
        atol = 1e-7 * ref.abs().max().item()
        torch.testing.assert_close(ours[name].double(), ref, rtol=1e-4, atol=atol, msg=name)


def test_fisher_on_bottlenecks_matches_brute_force() -> None:
    """Bottleneck blocks (1x1 convs, the stride on the 3x3) and the in-place additions."""
    data = images(3, seed=1)
    model = build("imagenet_resnet_50_2").train()
    with torch.no_grad():
        model(data.batch(torch.arange(3))[0] + 0.5)
    reference = brute_force(model, data)
    ours = fisher_diagonal(model, data, batch_size=2)
    for name, ref in reference.items():
        atol = 1e-7 * ref.abs().max().item()
        torch.testing.assert_close(ours[name].double(), ref, rtol=1e-4, atol=atol, msg=name)


def context(name: str, strategy: str, data: DeviceData | None, workdir: Path) -> PruneContext:
    start = build(name, seed=1)
    trained = build(name, seed=2)  # a stand-in for level 0's trained network
    return PruneContext(
        trained, masks.dense(start), data, PruningHparams(strategy), 5, 1, start, 2, workdir, True
    )


def kept(mask: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in mask.values())


@pytest.mark.parametrize("strategy", ["magnitude", "random", "fisher"])
def test_score_strategies_remove_a_fifth(strategy: str, tmp_path: Path) -> None:
    ctx = context("imagenet_resnet_18_8", strategy, images(4), tmp_path)
    s = registries.strategies.get(strategy)(None)
    mask = s.prune(ctx, [])
    total = sum(m.numel() for m in ctx.mask.values())
    assert mask.keys() == ctx.mask.keys()
    assert kept(mask) == s.kept(ctx.mask, [], ctx.pruning) == total - -(-total // 5)
    assert "model.fc.weight" in mask  # nothing ignored: the classifier is scored too


AT_INIT = {
    "snip": SnipHparams(target_density=0.1, pai_examples=4),
    "grasp": GraspHparams(target_density=0.1, pai_examples=4),
    "synflow": SynflowHparams(target_density=0.1, synflow_rounds=3),
    "magnitude_at_init": MagnitudeAtInitHparams(target_density=0.1),
}


@pytest.mark.parametrize("strategy", list(AT_INIT))
def test_strategies_at_init_keep_the_target(strategy: str, tmp_path: Path) -> None:
    ctx = context("imagenet_resnet_18_8", strategy, images(8), tmp_path)
    mask = registries.strategies.get(strategy)(AT_INIT[strategy]).prune(ctx, [])
    total = sum(m.numel() for m in ctx.mask.values())
    assert mask.keys() == ctx.mask.keys()
    assert all(mask[n].shape == ctx.mask[n].shape and mask[n].dtype == torch.bool for n in mask)
    assert kept(mask) == round(0.1 * total)


@pytest.mark.parametrize("name", ["imagenet_resnet_50_2", "tinyimagenet_modifiedresnet_18_4"])
def test_gem_miner_searches_on_the_new_models(name: str, tmp_path: Path) -> None:
    """Non-affine BatchNorm swapped in, bottleneck blocks and the small stem, the
    classifier ignored: the search lands on its target."""
    ctx = context(name, "gem_miner", images(6), tmp_path)
    hparams = GemMinerHparams(
        target_density=0.2, gem_miner_steps="6it", gem_miner_prune_every="2it"
    )
    ignore = ["model.fc.weight"]
    mask = registries.strategies.get("gem_miner")(hparams).prune(ctx, ignore)
    scored = [n for n in ctx.mask if n not in ignore]
    assert sum(int(mask[n].sum()) for n in scored) == round(
        0.2 * sum(ctx.mask[n].numel() for n in scored)
    )
    assert mask["model.fc.weight"].all()
    # The start model keeps its affine BatchNorm: the search worked on a copy.
    assert ctx.start_model.model.bn1.weight is not None
