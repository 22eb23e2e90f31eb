"""The model families and initializers: sizes, names, defaults, seeding, layouts."""

import copy
import math

import pytest
import torch

import open_lth.models  # noqa: F401  (registers the families and initializers)
from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import ModelHparams
from open_lth.foundations.model import build_model
from open_lth.models.cifar_resnet import CifarResnet
from open_lth.models.cifar_vgg import CifarVgg
from open_lth.models.mnist_lenet import MnistLenet

FAMILIES = [MnistLenet, CifarResnet, CifarVgg]


def build(name: str, init: str = "kaiming_normal", seed: int = 0, outputs=None):
    return build_model(ModelHparams(name, init, "uniform"), outputs=outputs, seed=seed)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resnet_count(n: int, w: int, outputs: int = 10) -> int:
    """By hand: stem conv + bn, 3 stages of n blocks (2 convs + 2 bns each), the two
    1x1 projection shortcuts with their bns, and the classifier."""
    total = 3 * w * 9 + 2 * w
    f_in = w
    for f in (w, 2 * w, 4 * w):
        for i in range(n):
            total += f_in * f * 9 + f * f * 9 + 4 * f
            if f_in != f:
                total += f_in * f + 2 * f
            f_in = f
    return total + 4 * w * outputs + outputs


def vgg_count(plan: list, outputs: int = 10) -> int:
    total, f_in = 0, 3
    for spec in plan:
        if spec != "M":
            total += f_in * spec * 9 + 2 * spec  # bias-free conv + BatchNorm
            f_in = spec
    return total + 512 * outputs + outputs


VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def test_resnet_count_formula_matches_the_known_total():
    # 432 (conv) + 32 (bn) + 14,016 + 51,648 + 205,696 (stages) + 650 (fc).
    assert resnet_count(3, 16) == 272_474


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mnist_lenet_300_100", 266_610),
        ("cifar_resnet_20", 272_474),
        ("cifar_resnet_20_16", 272_474),
        ("cifar_resnet_8_4", resnet_count(1, 4)),
        ("cifar_resnet_56_32", resnet_count(9, 32)),
        ("cifar_vgg_16", vgg_count(VGG16)),
    ],
)
def test_parameter_counts(name, expected):
    assert count(build(name)) == expected


def test_vgg16_count_value():
    assert vgg_count(VGG16) == 14_724_042


@pytest.mark.parametrize(
    "name, shape, outputs, expected",
    [
        ("mnist_lenet_300_100", (5, 1, 28, 28), None, (5, 10)),
        ("mnist_lenet_50", (3, 1, 28, 28), 7, (3, 7)),
        ("cifar_resnet_20", (4, 3, 32, 32), None, (4, 10)),
        ("cifar_resnet_8_4", (2, 3, 32, 32), 100, (2, 100)),
        ("cifar_vgg_11", (2, 3, 32, 32), None, (2, 10)),
    ],
)
def test_output_shapes(name, shape, outputs, expected):
    model = build(name, outputs=outputs)
    assert model(torch.randn(shape)).shape == expected


def test_vgg_features_are_512_by_1_by_1():
    model = build("cifar_vgg_16")
    assert model.layers(torch.randn(2, 3, 32, 32)).shape == (2, 512, 1, 1)
    assert model.fc.in_features == 512


def test_lenet_prunable_layers():
    model = build("mnist_lenet_300_100")
    assert model.prunable_layer_names == ["fc_layers.0.weight", "fc_layers.1.weight", "fc.weight"]
    assert model.output_layer_names == ["fc.weight", "fc.bias"]


def test_lenet_forward_is_a_relu_mlp():
    model = build("mnist_lenet_300_100")
    x = torch.randn(4, 1, 28, 28)
    h = x.reshape(4, 784)
    for layer in model.fc_layers:
        h = torch.relu(h @ layer.weight.T + layer.bias)
    assert torch.allclose(model(x), h @ model.fc.weight.T + model.fc.bias, atol=1e-5)


def test_resnet_prunable_layers():
    model = build("cifar_resnet_20")
    names = model.prunable_layer_names
    # Stem, 18 block convs, 2 projection shortcuts, classifier.
    assert len(names) == 22
    assert {"conv.weight", "fc.weight", "blocks.0.conv1.weight"} <= set(names)
    assert {"blocks.3.shortcut.0.weight", "blocks.6.shortcut.0.weight"} <= set(names)
    assert not any("bn" in n or "shortcut.1" in n or n.endswith("bias") for n in names)
    assert set(names) <= dict(model.named_parameters()).keys()
    assert set(model.output_layer_names) <= dict(model.named_parameters()).keys()


@pytest.mark.parametrize(
    "name, valid",
    [
        ("mnist_lenet_300_100", True),
        ("mnist_lenet_10", True),
        ("mnist_lenet_", False),
        ("mnist_lenet", False),
        ("mnist_lenet_300_0", False),
        ("mnist_lenet_300_x", False),
        ("cifar_resnet_20", True),
        ("cifar_resnet_8", True),
        ("cifar_resnet_56_32", True),
        ("cifar_resnet_21", False),
        ("cifar_resnet_2", False),
        ("cifar_resnet_20_0", False),
        ("cifar_resnet_20_16_1", False),
        ("cifar_vgg_16", True),
        ("cifar_vgg_12", False),
        ("cifar_vgg_", False),
        ("imagenet_vgg_16", False),
    ],
)
def test_name_validation(name, valid):
    assert (name in registries.models) is valid
    # Exactly one family claims a valid name; none claims an invalid one.
    assert sum(f.is_valid_model_name(name) for f in FAMILIES) == int(valid)


def test_is_valid_model_name_never_raises_on_odd_input():
    for family in FAMILIES:
        assert family.is_valid_model_name(None) is False
        assert family.is_valid_model_name(20) is False


def test_wide_resnet_shape():
    model = build("cifar_resnet_56_32")
    assert len(model.blocks) == 27
    assert model.conv.out_channels == 32
    assert model.fc.in_features == 4 * 32


def test_unknown_model_lists_examples():
    with pytest.raises(UserError) as info:
        build("mnist_lenet_")
    assert "mnist_lenet_300_100" in str(info.value)
    assert "cifar_resnet_20" in str(info.value)


def test_unknown_initializer():
    with pytest.raises(UserError, match="no_such_init"):
        build("mnist_lenet_300_100", init="no_such_init")


@pytest.mark.parametrize(
    "init", ["kaiming_normal", "kaiming_uniform", "orthogonal", "signed_constant"]
)
def test_seed_decides_weights(init):
    a, b = build("cifar_resnet_8_4", init, seed=1), build("cifar_resnet_8_4", init, seed=1)
    c = build("cifar_resnet_8_4", init, seed=2)
    for (name, x), y, z in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values()
    ):
        assert torch.equal(x, y), name
    assert not torch.equal(a.conv.weight, c.conv.weight)
    assert not torch.equal(a.bn.weight, c.bn.weight)


def init(name: str, shape: tuple) -> torch.Tensor:
    weight = torch.empty(shape)
    torch.manual_seed(0)
    registries.initializers.get(name)(weight)
    return weight


@pytest.mark.parametrize("name", ["kaiming_normal", "kaiming_uniform"])
@pytest.mark.parametrize("shape", [(1000, 1000), (256, 128, 3, 3)])
def test_kaiming_std(name, shape):
    fan_in = math.prod(shape[1:])
    weight = init(name, shape)
    assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert abs(weight.mean().item()) < 0.05 * math.sqrt(2 / fan_in)


def test_kaiming_uniform_bound():
    weight = init("kaiming_uniform", (1000, 500))
    assert weight.abs().max().item() <= math.sqrt(6 / 500)


def test_orthogonal_rows():
    weight = init("orthogonal", (64, 32, 3, 3)).reshape(64, -1)
    assert torch.allclose(weight @ weight.T, torch.eye(64), atol=1e-4)


@pytest.mark.parametrize("shape", [(1000, 1000), (256, 128, 3, 3)])
def test_signed_constant(shape):
    fan_in = math.prod(shape[1:])
    weight = init("signed_constant", shape)
    values = torch.unique(weight)
    assert len(values) == 2
    c = math.sqrt(2 / fan_in)
    assert values[0].item() == pytest.approx(-c, rel=1e-6)
    assert values[1].item() == pytest.approx(c, rel=1e-6)
    assert (weight > 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_lenet_default_hparams():
    family = registries.models.get("mnist_lenet_300_100")
    d = family.default_hparams("mnist_lenet_300_100")
    assert (d.dataset.dataset_name, d.dataset.batch_size) == ("mnist", 60)
    assert (d.model.model_name, d.model.model_init) == ("mnist_lenet_300_100", "kaiming_normal")
    assert d.model.batchnorm_init == "uniform"
    assert (d.training.optimizer_name, d.training.lr) == ("adam", 0.0012)
    assert d.training.training_steps == "50000it"
    assert d.pruning.pruning_strategy == "magnitude"
    assert (d.pruning.pruning_fraction, d.pruning.pruning_scope) == (0.2, "global")
    assert d.pruning.pruning_layers_to_ignore is None


@pytest.mark.parametrize("name", ["cifar_resnet_20", "cifar_vgg_16"])
def test_cifar_default_hparams(name):
    d = registries.models.get(name).default_hparams(name)
    assert (d.dataset.dataset_name, d.dataset.batch_size) == ("cifar10", 128)
    assert (d.model.model_name, d.model.model_init) == (name, "kaiming_normal")
    t = d.training
    assert (t.optimizer_name, t.lr, t.momentum, t.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert (t.training_steps, t.milestone_steps, t.gamma) == ("160ep", "80ep,120ep", 0.1)
    assert d.pruning.pruning_layers_to_ignore == "fc.weight"
    assert registries.models.get(name).is_convolutional


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resnet_channels_last_matches_contiguous(dtype):
    model = build("cifar_resnet_20_8").to(dtype)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32, dtype=dtype), torch.randint(0, 10, (4,))
    outputs, grads = [], []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        m = copy.deepcopy(model).to(memory_format=memory_format)
        assert m.conv.weight.is_contiguous(memory_format=memory_format)
        out = m(x.to(memory_format=memory_format))
        m.loss_criterion(out, y).backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5 if dtype == torch.float32 else 1e-10)
    if dtype == torch.float64:
        assert torch.allclose(grads[0], grads[1], atol=1e-10)
    else:
        # In float32 a pre-activation within rounding of 0 can fall on the other side of a
        # ReLU in one layout, moving a few entries by ~1e-3; compare the whole gradient.
        assert (grads[0] - grads[1]).norm() <= 1e-2 * grads[0].norm()
