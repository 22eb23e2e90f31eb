"""Fisher pruning: the batched empirical Fisher diagonal against one backward pass per
example, and the strategy around it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import open_lth.pruning.fisher as fisher_module
from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import ModelHparams, PruningHparams
from open_lth.foundations.model import build_model
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.fisher import CONV_METHODS, FisherHparams, FisherStrategy, fisher_diagonal
from open_lth.training.data import DeviceData

CPU = torch.device("cpu")
METHODS = ["auto", *CONV_METHODS]


def mnist_data(n: int, seed: int = 0) -> DeviceData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return DeviceData(images, labels, (0.1307,), (0.3081,), None, 0, CPU)


def cifar_data(n: int, seed: int = 0) -> DeviceData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    return DeviceData(images, labels, mean, std, None, 0, CPU)


def lenet() -> nn.Module:
    from open_lth.main import load_plugins

    load_plugins()
    return build_model(ModelHparams("mnist_lenet_20_10", "kaiming_normal", "uniform"), 10, 1)


def resnet(data: DeviceData) -> nn.Module:
    """cifar_resnet_8_4 with BatchNorm running statistics far from their defaults. The same
    model every time: about one draw in a hundred of the shifts is so ill-conditioned that
    float32 itself misses the float64 reference by more than rtol (whatever the method)."""
    from open_lth.main import load_plugins

    load_plugins()
    model = build_model(ModelHparams("cifar_resnet_8_4", "kaiming_normal", "uniform"), 10, 1)
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.5
                module.bias.uniform_(-0.5, 0.5, generator=g)
        for i in range(3):
            x, _ = data.batch(torch.arange(len(data)))
            model(x * (1 + i) + i)
    return model


def brute_force(model: nn.Module, data: DeviceData, index: torch.Tensor) -> dict:
    """(1/N)·Σₙ g_n², one backward pass per example, in float64 as the reference."""
    model = model.double().eval()
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    params = dict(model.named_parameters())
    weights = [params[f"{n}.weight"] for n in layers]
    sums = [torch.zeros_like(w) for w in weights]
    for i in index.tolist():
        x, y = data.batch(torch.tensor([i]))
        loss = nn.functional.cross_entropy(model(x.double()), y)
        for s, g in zip(sums, torch.autograd.grad(loss, weights)):
            s += g.square()
    model.float()
    return {f"{n}.weight": s / len(index) for n, s in zip(layers, sums)}


def assert_close(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys()
    for name, ref in reference.items():
        assert ours[name].dtype == torch.float32
        assert ours[name].shape == ref.shape
        assert ref.abs().max() > 0, name  # a vacuous comparison would prove nothing
        atol = 1e-7 * ref.abs().max().item()
        torch.testing.assert_close(ours[name].double(), ref, rtol=1e-4, atol=atol, msg=name)


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks
        and not m._forward_pre_hooks
        and not m._backward_hooks
        and not m._backward_pre_hooks
        for m in model.modules()
    )


def context(model: nn.Module, data: DeviceData, seed: int = 0) -> PruneContext:
    mask = {n: torch.ones_like(dict(model.named_parameters())[n], dtype=torch.bool)
            for n in model.prunable_layer_names}  # fmt: skip
    return PruneContext(
        model, mask, data, PruningHparams("fisher"), seed, 1, model, 60, Path("/nonexistent")
    )


def test_lenet_matches_brute_force():
    data, model = mnist_data(50), lenet()
    everything = torch.arange(len(data))
    # Batches of 16 leave a partial last batch.
    assert_close(fisher_diagonal(model, data, batch_size=16), brute_force(model, data, everything))


def test_lenet_index_selects_the_examples():
    data, model = mnist_data(50), lenet()
    index = torch.tensor([3, 41, 7, 7, 19, 0])  # order and repeats are the caller's business
    ours = fisher_diagonal(model, data, index)
    assert_close(ours, brute_force(model, data, index))
    assert not torch.equal(ours["fc.weight"], fisher_diagonal(model, data)["fc.weight"])


@pytest.mark.parametrize("method", METHODS)
def test_resnet_with_batchnorm_matches_brute_force(method):
    data = cifar_data(20)
    model = resnet(data)
    bn = model.bn
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    ours = fisher_diagonal(model, data, batch_size=8, conv_method=method)
    # The stride-2 3x3 conv and the 1x1 stride-2 shortcut are both scored.
    assert "blocks.1.conv1.weight" in ours and model.blocks[1].conv1.stride == (2, 2)
    assert "blocks.1.shortcut.0.weight" in ours
    assert_close(ours, brute_force(model, data, torch.arange(len(data))))


def test_resnet_index_subset():
    data = cifar_data(20)
    model = resnet(data)
    index = torch.tensor([17, 2, 9, 11])
    assert_close(fisher_diagonal(model, data, index), brute_force(model, data, index))


@pytest.mark.parametrize("method", METHODS)
def test_small_memory_budget_gives_the_same_result(monkeypatch, method):
    data = cifar_data(12)
    model = resnet(data)
    reference = fisher_diagonal(model, data, conv_method=method)
    # A budget below one example: chunks of one, a different summation path.
    monkeypatch.setattr(fisher_module, "MEMORY_BUDGET", 1)
    for name, value in fisher_diagonal(model, data, conv_method=method).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=0)


@pytest.fixture(scope="module")
def resnet20_case() -> tuple:
    """ResNet-20 itself (stride-2 3x3 convs, 1x1 stride-2 shortcuts, widths 16 to 64) with
    uncentred BatchNorm statistics, and its brute-force Fisher on 6 examples."""
    from open_lth.main import load_plugins

    load_plugins()
    data = cifar_data(6, seed=3)
    model = build_model(ModelHparams("cifar_resnet_20", "kaiming_normal", "uniform"), 10, 2)
    model.train()
    with torch.no_grad():
        model(data.batch(torch.arange(6))[0] * 1.5 + 0.5)
    return model, data, brute_force(model, data, torch.arange(6))


@pytest.mark.parametrize("method", METHODS)
def test_resnet20_matches_brute_force(resnet20_case, method):
    model, data, reference = resnet20_case
    ours = fisher_diagonal(model, data, batch_size=4, conv_method=method)
    assert model.blocks[3].conv1.stride == (2, 2) and "blocks.3.shortcut.0.weight" in ours
    assert_close(ours, reference)


def test_channels_last_on_cpu_matches(resnet20_case):
    model, data, reference = resnet20_case
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for method in METHODS:
        assert_close(fisher_diagonal(model, data, conv_method=method), reference)


def test_unknown_conv_method_is_refused():
    with pytest.raises(ValueError, match="conv_method 'im2col'; known: auto, shifted"):
        fisher_diagonal(lenet(), mnist_data(4), conv_method="im2col")


def test_gpu_tuning_picks_a_working_method_once(monkeypatch):
    """The GPU's per-shape choice, run on the CPU with the synchronize stubbed out."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(fisher_module, "_TUNED", {})
    calls = []

    def broken(conv, a, delta):
        calls.append(1)
        raise torch.cuda.OutOfMemoryError("no room")

    monkeypatch.setitem(fisher_module._CONV, "grouped", broken)
    conv = nn.Conv2d(4, 5, 3, padding=1, bias=False)
    a, delta = torch.randn(6, 4, 7, 7), torch.randn(6, 5, 7, 7)
    assert fisher_module._fastest(conv, a, delta) in ("shifted", "unfold")
    assert fisher_module._fastest(conv, a, delta) in ("shifted", "unfold")
    assert len(calls) == 1 and len(fisher_module._TUNED) == 1  # timed once, then remembered
    strided = nn.Conv2d(4, 5, 3, stride=2, bias=False)
    assert fisher_module._fastest(strided, a, torch.randn(6, 5, 3, 3)) == "unfold"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_channels_last_matches_cpu(monkeypatch, method):
    # Full float32 on the GPU, so that only summation order differs from the CPU.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    data = cifar_data(20)
    model = resnet(data)
    reference = fisher_diagonal(model, data, batch_size=8)
    gpu = torch.device("cuda")
    model = model.to(gpu, memory_format=torch.channels_last)  # as the trainer runs it
    data = DeviceData(data.images, data.labels, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26),
                      None, 0, gpu)  # fmt: skip
    ours = fisher_diagonal(model, data, batch_size=8, conv_method=method)
    for name, value in reference.items():
        assert ours[name].device.type == "cuda"
        atol = 1e-7 * value.abs().max().item()
        torch.testing.assert_close(ours[name].cpu(), value, rtol=1e-4, atol=atol, msg=name)


class Odd(nn.Module):
    """Dilation, padding, stride and biases everywhere (a strided conv and a stride-1 one),
    and a Linear on a 3-d input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, (3, 2), stride=(2, 3), padding=(2, 1), dilation=(2, 1))
        self.conv2 = nn.Conv2d(3, 2, (2, 3), padding=(0, 2), dilation=(3, 2))
        self.token = nn.Linear(5, 4)
        self.fc = nn.Linear(2 * 4 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(self.conv(x[:, :, :20, :20]))  # (B, 3, 10, 7)
        out = torch.tanh(self.conv2(out))  # (B, 2, 7, 7)
        out = nn.functional.pad(out, (0, 0, 0, 3))[:, :, :8, :5]  # (B, 2, 8, 5)
        out = torch.tanh(self.token(out))  # (B, 2, 8, 4): one weight for 16 rows per example
        return self.fc(out.flatten(1))


@pytest.mark.parametrize("method", METHODS)
def test_odd_geometry_and_biases_match_brute_force(method):
    torch.manual_seed(0)
    data, model = mnist_data(10), Odd()
    ours = fisher_diagonal(model, data, batch_size=4, conv_method=method)
    assert set(ours) == {"conv.weight", "conv2.weight", "token.weight", "fc.weight"}
    assert_close(ours, brute_force(model, data, torch.arange(len(data))))


def test_grouped_conv_is_refused():
    model = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match="groups"):
        fisher_diagonal(model, mnist_data(4))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 28 * 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x.flatten(1)))[:, :10]


def test_what_per_example_rows_cannot_cover_is_refused():
    data = mnist_data(4)
    inplace = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.ReLU(inplace=True))
    with pytest.raises(ValueError, match="in-place"):
        fisher_diagonal(inplace, data)
    with pytest.raises(ValueError, match="runs 2 times"):
        fisher_diagonal(Twice(), data)
    assert no_hooks(inplace)


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_no_hooks_and_no_grads(training):
    data, model = mnist_data(8), lenet()
    model.train(training)
    fisher_diagonal(model, data)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert no_hooks(model)
    assert all(p.grad is None for p in model.parameters())


def test_hooks_removed_and_mode_restored_on_error():
    data, model = mnist_data(8), lenet()
    data.labels[3] = 99  # an out-of-range label: cross_entropy raises
    model.train()
    with pytest.raises((IndexError, RuntimeError)):
        fisher_diagonal(model, data)
    assert model.training
    assert no_hooks(model)


def test_strategy_scores_are_half_w_squared_times_fisher():
    data, model = mnist_data(30), lenet()
    with torch.no_grad():
        model.fc.weight[0, :5] = 0  # a pruned weight scores 0
    ctx = context(model, data)
    scores = FisherStrategy(FisherHparams()).score(ctx)
    assert list(scores) == model.prunable_layer_names
    fisher = fisher_diagonal(model, data)
    params = dict(model.named_parameters())
    for name, score in scores.items():
        torch.testing.assert_close(score, 0.5 * params[name].detach() ** 2 * fisher[name])
    assert (scores["fc.weight"][0, :5] == 0).all()
    assert (scores["fc.weight"][1] > 0).any()


def test_strategy_is_registered():
    assert registries.strategies.get("fisher") is FisherStrategy
    assert FisherStrategy.hparams_type is FisherHparams


def test_fisher_examples_subset_is_seeded():
    data, model = mnist_data(40), lenet()

    def scores(seed: int, examples: int | None) -> torch.Tensor:
        strategy = FisherStrategy(FisherHparams(fisher_examples=examples))
        return strategy.score(context(model, data, seed))["fc_layers.0.weight"]

    assert torch.equal(scores(5, 10), scores(5, 10))
    assert not torch.allclose(scores(5, 10), scores(6, 10))
    # The subset is the first 10 of the seeded permutation.
    index = torch.randperm(40, generator=torch.Generator().manual_seed(5))[:10]
    w = model.fc_layers[0].weight.detach()
    expected = 0.5 * w**2 * fisher_diagonal(model, data, index)["fc_layers.0.weight"]
    torch.testing.assert_close(scores(5, 10), expected)
    # As many or more examples than the data set: all of it, whatever the seed.
    assert torch.equal(scores(5, 40), scores(6, 1000))
    assert torch.equal(scores(5, 40), scores(5, None))


@pytest.mark.parametrize("bad", [0, -3])
def test_fisher_examples_must_be_positive(bad):
    with pytest.raises(UserError, match="--fisher_examples"):
        FisherHparams(fisher_examples=bad)
    assert FisherHparams(fisher_examples=1).fisher_examples == 1


def test_the_batch_holds_at_most_a_thousand_cifar_images_of_input(monkeypatch):
    """MNIST and CIFAR-10 keep the batch of 1,000 (and their numbers); ImageNet-sized
    images go 20 at a time, not 1,000 (a ResNet-50's activations of 1,000 images at
    224×224 fill a GPU), with the same Fisher diagonal."""
    assert fisher_module.batch_for(mnist_data(4)) == 1000
    assert fisher_module.batch_for(cifar_data(4)) == 1000
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (45, 3, 224, 224), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (45,), generator=g)
    big = DeviceData(images, labels, (0.5,) * 3, (0.25,) * 3, None, 0, CPU)
    assert fisher_module.batch_for(big) == 20
    model = nn.Sequential(nn.Conv2d(3, 2, 7, stride=8), nn.Flatten(), nn.Linear(2 * 28 * 28, 10))
    sizes, real = [], big.batch
    monkeypatch.setattr(big, "batch", lambda index, *a: sizes.append(len(index)) or real(index))
    ours = fisher_diagonal(model, big)
    assert sizes == [20, 20, 5]
    whole = fisher_diagonal(model, big, batch_size=45)  # float32 sums in another order
    for name, value in whole.items():
        atol = 1e-6 * value.abs().max().item()
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=atol, msg=name)
