"""The device-resident pipeline: seeded order, batched augmentation, normalization."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import CIFAR, DATA
from open_lth.foundations.hparams import DatasetHparams
from open_lth.main import load_plugins
from open_lth.training.data import DeviceData, crop_flip, load

load_plugins()
CPU = torch.device("cpu")


def test_crop_flip_is_a_crop_of_the_padded_image() -> None:
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = crop_flip(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(len(x)):
        crops = {
            (dy, dx, flip): padded[i][:, dy : dy + 8, dx : dx + 8]
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
        }
        candidates = [
            key
            for key, crop in crops.items()
            if torch.equal(out[i], crop.flip(-1) if key[2] else crop)
        ]
        assert candidates, f"example {i} is not a (flipped) crop"
        flips += candidates[0][2]
    assert 10 < flips < 54  # about half are flipped
    again = crop_flip(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, crop_flip(x, 2, torch.Generator().manual_seed(1)))


def test_order_is_seeded_per_epoch() -> None:
    data = DeviceData(
        torch.zeros(100, 1, 2, 2, dtype=torch.uint8),
        torch.zeros(100, dtype=torch.long),
        (0.0,),
        (1.0,),
        None,
        0,
        CPU,
    )
    a = data.order(1, 0)
    assert torch.equal(a, data.order(1, 0)) and sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, data.order(1, 1)) and not torch.equal(a, data.order(2, 0))


def test_mnist_normalization_and_subsample() -> None:
    full, classes = load(DatasetHparams("mnist", 60), DATA, True, CPU)
    assert classes == 10 and len(full) == 60000 and full.images.dtype == torch.uint8
    x, y = full.batch(torch.arange(60000))
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    sub, _ = load(DatasetHparams("mnist", 60, subsample_fraction=0.1), DATA, True, CPU)
    again, _ = load(DatasetHparams("mnist", 60, subsample_fraction=0.1), DATA, True, CPU)
    assert len(sub) == 6000 and torch.equal(sub.labels, again.labels)
    assert full.augmentation is None


def test_cifar_augments_train_only(tmp_path: Path) -> None:
    train, _ = load(DatasetHparams("cifar10", 128), CIFAR, True, CPU)
    test, _ = load(DatasetHparams("cifar10", 128), CIFAR, False, CPU)
    assert (len(train), len(test)) == (4000, 1000)
    assert train.augmentation == "crop_flip" and test.augmentation is None
    index = torch.arange(16)
    plain, _ = train.batch(index)
    augmented, _ = train.batch(index, torch.Generator().manual_seed(0))
    assert augmented.shape == plain.shape == (16, 3, 32, 32) and not torch.equal(plain, augmented)
    off, _ = load(DatasetHparams("cifar10", 128, do_not_augment=True), CIFAR, True, CPU)
    assert off.augmentation is None


def test_the_copies_of_a_pack_get_their_own_batches_to_the_bit() -> None:
    """A pack draws each copy's batch in one pass; each must be what the copy draws alone
    (its examples, its augmentation seed), laid out along the channel axis."""
    train, _ = load(DatasetHparams("cifar10", 128), CIFAR, True, CPU)
    generator = torch.Generator()
    index = torch.stack([train.order(s, 0)[:32] for s in (1, 2, 3)])
    seeds = [11, 22, 33]
    x, y = train.copies_batch(index, generator, seeds)
    assert x.shape == (32, 9, 32, 32) and y.shape == (32, 3)
    for k in range(3):
        alone, labels = train.batch(index[k], generator.manual_seed(seeds[k]))
        assert torch.equal(x[:, 3 * k : 3 * k + 3], alone) and torch.equal(y[:, k], labels)
    one, _ = train.copies_batch(index[:1], generator, seeds[:1])
    assert torch.equal(one, train.batch(index[0], generator.manual_seed(seeds[0]))[0])
    mnist, _ = load(DatasetHparams("mnist", 60), DATA, True, CPU)
    x, y = mnist.copies_batch(torch.stack([torch.arange(5), torch.arange(5, 10)]))
    assert torch.equal(x[:, 1:], mnist.batch(torch.arange(5, 10))[0])
