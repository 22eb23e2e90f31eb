"""ImageNet (streamed from JPEG folders or prepared shards) and Tiny ImageNet (on the
device), on small folders the tests write with Pillow. The streamed crops are 32 pixels
here (ImageNet.size patched, resize 37) so that ResNet-18_8 steps stay fast on a CPU;
the crop size changes no code path."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from image_folders import WNIDS, truncate, write_imagefolder, write_tinyimagenet

from open_lth.datasets import tinyimagenet
from open_lth.datasets.imagenet import ImageNet
from open_lth.experiments.jobs import prepare_data
from open_lth.foundations import distributed, paths, shards
from open_lth.foundations.hparams import DatasetHparams
from open_lth.training import data
from open_lth.training.data import resized_crop_apply, resized_crop_draws
from open_lth.training.streaming import StreamData

CPU = torch.device("cpu")


@pytest.fixture
def small_crops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageNet, "size", 32)
    monkeypatch.setattr(ImageNet, "resize", 37)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def prepared(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "imagenet"
    # Tiny shards: the 24 training images span several tar files.
    argv = [f"--dataset_root={folder}", f"--out={out}", "--shard_size_mb=0.01"]
    assert prepare_data.main(argv) == 0
    return out


def load(root: Path, train: bool, **flags: object) -> StreamData:
    hparams = DatasetHparams(dataset_name="imagenet", batch_size=4, **flags)
    split, classes = data.load(hparams, root, train, CPU)
    assert classes == 3
    return split


def test_folders_are_read_with_their_quirks(folder: Path, small_crops: None) -> None:
    train = load(folder, True)
    assert len(train) == 24 and train.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert tuple(train.images.shape[1:]) == (3, 32, 32)  # the shape, and no memory
    # All 24, with the CMYK, the grayscale and the PNG named .JPEG: test crops.
    x, y = train.batch(torch.arange(24))
    assert x.shape == (24, 3, 32, 32) and torch.isfinite(x).all() and torch.equal(y, train.labels)
    gray = x[8 + 2]  # the grayscale JPEG: its three channels agree once de-normalized
    mean, std = torch.tensor(ImageNet.mean), torch.tensor(ImageNet.std)
    pixels = gray * std.view(3, 1, 1) + mean.view(3, 1, 1)
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5)
    test = load(folder, False)
    assert len(test) == 6 and test.augmentation == "center_crop"
    assert train.augmentation == "resized_crop_flip"
    # A fixed, seeded subset of the files, as for the device-resident data sets.
    half = load(folder, True, subsample_fraction=0.5)
    assert len(half) == 12 and set(half.source.files) < set(train.source.files)
    assert [train.source.files.index(f) // 8 for f in half.source.files] == half.labels.tolist()


def test_crops_are_a_function_of_seed_and_position_only(folder: Path, small_crops: None) -> None:
    a, b = load(folder, True), load(folder, True)
    g = torch.Generator()
    order = a.order(5, 0)
    # a serves batches 0, 1, 2 in order (prefetching); b only batch 2, cold.
    for step in range(3):
        xa, ya = a.copies_batch(order[None, 4 * step : 4 * step + 4], g, [100 + step])
    # While a step runs, the next two batches of the order are being decoded.
    assert set(order[12:20].tolist()) <= set(a._decoded)
    xb, yb = b.copies_batch(order[None, 8:12], g, [102])
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Another step's seed, other crops; a pack's copies get what each gets alone.
    assert not torch.equal(xa, b.copies_batch(order[None, 8:12], g, [103])[0])
    index = torch.stack([order[0:4], order[4:8]])
    pair, labels = b.copies_batch(index, g, [7, 8])
    alone = [b.copies_batch(index[i : i + 1], g, [s])[0] for i, s in enumerate([7, 8])]
    assert torch.equal(pair, torch.cat(alone, 1)) and labels.shape == (4, 2)
    # Unaugmented (Fisher, evaluation): the test crops, the same each time.
    assert torch.equal(a.batch(order[:4])[0], b.batch(order[:4])[0])


def test_each_rank_decodes_only_its_slice(
    folder: Path, small_crops: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = load(folder, True)
    order = whole.order(1, 0)
    index = order[None, 4:8]
    expected, _ = whole.copies_batch(index, torch.Generator(), [9])
    rank1 = load(folder, True)
    rank1.order(1, 0)
    read = []
    source_read = rank1.source.read
    monkeypatch.setattr(rank1.source, "read", lambda i: read.append(i) or source_read(i))
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    x, _ = rank1.copies_batch(index, torch.Generator(), [9])
    assert torch.equal(distributed.shard(x), expected[2:4])
    rank1.close()  # the prefetches of later batches too: only their second halves
    mine = {int(order[p]) for start in (4, 8, 12) for p in (start + 2, start + 3)}
    assert read and set(read) <= mine


def test_device_resized_crop_is_bilinear_on_the_box() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    whole = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
    flips = torch.tensor([False, True])
    out = resized_crop_apply(x, whole, flips)
    assert torch.allclose(out[0], x[0]) and torch.allclose(out[1], x[1].flip(-1))
    # The left half of image 0 (4 of 8 columns) stretched over 8 columns.
    half = resized_crop_apply(x[:1], torch.tensor([[0.0, 0.0, 4.0, 8.0]]), flips[:1])
    assert torch.allclose(half[0, :, :, 0::2].mean(), x[0, :, :, :4].mean(), atol=0.5)
    g = torch.Generator()
    draws = [resized_crop_draws(64, (64, 64), (0.1, 1.0), (0.8, 1.25), g.manual_seed(3), CPU)]
    draws.append(resized_crop_draws(64, (64, 64), (0.1, 1.0), (0.8, 1.25), g.manual_seed(3), CPU))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    boxes = draws[0][0]
    area = boxes[:, 2] * boxes[:, 3] / 64**2
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 64).all()
    assert area.min() >= 0.09 and area.max() <= 1 and area.std() > 0.1


def test_tinyimagenet_is_decoded_once_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_tinyimagenet(tmp_path)
    hparams = DatasetHparams(dataset_name="tinyimagenet", batch_size=4)
    train, classes = data.load(hparams, tmp_path, True, CPU)
    assert classes == 200 and train.images.shape == (12, 3, 64, 64)
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # sorted wnids
    test, _ = data.load(hparams, tmp_path, False, CPU)
    assert test.labels.tolist() == [WNIDS.index(WNIDS[i % 3]) for i in range(6)]
    assert (folder / "open_lth-train.pt").is_file()
    # The second start reads the cache, not the JPEGs.
    monkeypatch.setattr(tinyimagenet, "decode_all", lambda source: pytest.fail("decoded"))
    again, _ = data.load(hparams, tmp_path, True, CPU)
    assert torch.equal(again.images, train.images)
    # Augmented batches: the fork's random resized crop, 64x64, seeded.
    x1, _ = train.copies_batch(train.order(0, 0)[None, :4], torch.Generator(), [4])
    x2, _ = train.copies_batch(train.order(0, 0)[None, :4], torch.Generator(), [4])
    assert x1.shape == (4, 3, 64, 64) and torch.equal(x1, x2)
    assert not torch.equal(x1, train.batch(train.order(0, 0)[:4])[0])


def test_prepared_shards_read_back_equal_to_the_folders(
    folder: Path, prepared: Path, small_crops: None
) -> None:
    info = shards.read_info(prepared)
    assert info["classes"] == WNIDS and info["splits"]["train"]["shards"] > 1
    for train in (True, False):
        files, packed = load(folder, train), load(prepared.parent, train)  # found as imagenet/
        assert isinstance(packed.source, shards.ShardSource)
        assert torch.equal(files.labels, packed.labels)
        for i in range(len(files)):
            assert files.source.read(i) == packed.source.read(i)
        index = torch.arange(len(files))[None]
        g = torch.Generator()
        assert torch.equal(
            files.copies_batch(index, g, [3])[0], packed.copies_batch(index, g, [3])[0]
        )
        assert torch.equal(files.batch(index[0])[0], packed.batch(index[0])[0])


def test_shards_resized_to_a_shorter_side(folder: Path, tmp_path: Path, small_crops: None) -> None:
    out = tmp_path / "small"
    assert prepare_data.main([f"--dataset_root={folder}", f"--out={out}", "--shorter_side=45"]) == 0
    from open_lth.foundations.images import decode

    source = shards.ShardSource.open(out, "train")
    sizes = [decode(source.read(i), "x").size for i in range(len(source))]
    assert max(min(s) for s in sizes) <= 45 and min(min(s) for s in sizes) >= 40
    assert load(out, True).batch(torch.arange(4))[0].shape == (4, 3, 32, 32)


def lottery(folder: Path, root: Path, *extra: str) -> list[str]:
    return [
        "lottery",
        "--default_hparams=imagenet_resnet_18_8",
        f"--dataset_root={folder}",
        f"--root={root}",
        "--batch_size=4",
        "--training_steps=3it",
        "--eval_every=3it",
        "--device=cpu",
        "--quiet",
        *extra,
    ]


def test_fisher_lottery_on_imagenet_resnet_18_8(cli, folder: Path, tmp_path: Path, small_crops):
    code, out, err = cli(
        *lottery(folder, tmp_path, "--levels=1", "--pruning_strategy=fisher", "--fisher_examples=8")
    )
    assert code == 0, err
    (level1,) = tmp_path.glob("lottery_*/replicate_1/level_1/main")
    mask = torch.load(paths.mask(level1), weights_only=True)
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert 0.75 < kept < 0.85  # 20% of the prunable weights removed
    assert (level1 / "summary.json").is_file()


class Crash(Exception):
    """A process killed without warning: nothing after the last periodic checkpoint."""


@pytest.mark.parametrize("how", ["sigterm", "crash"])
def test_interrupted_run_resumes_to_the_bit(
    cli, folder: Path, tmp_path: Path, small_crops: None, monkeypatch: pytest.MonkeyPatch, how
) -> None:
    argv = ["--training_steps=10it", "--eval_every=5it", "--checkpoint_every=2it"]
    assert cli(*lottery(folder, tmp_path / "straight", *argv))[0] == 0
    calls = []
    served = StreamData.copies_batch

    def stop_at_step_8(self, *args, **kwargs):
        calls.append(1)
        # In the middle of the second epoch (6 steps an epoch), prefetches pending; a
        # crash loses step 7, after the checkpoint at 6.
        if len(calls) == 8 and how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        if len(calls) == 8 and how == "crash":
            raise Crash
        return served(self, *args, **kwargs)

    monkeypatch.setattr(StreamData, "copies_batch", stop_at_step_8)
    if how == "sigterm":
        code, _, err = cli(*lottery(folder, tmp_path / "killed", *argv))
        assert code == 128 + signal.SIGTERM and "checkpoint saved" in err
    else:
        with pytest.raises(Crash):
            cli(*lottery(folder, tmp_path / "killed", *argv))
    (b,) = (tmp_path / "killed").glob("lottery_*/replicate_1/level_0/main")
    assert 6 <= torch.load(paths.checkpoint(b), weights_only=True)["iteration"] < 10
    monkeypatch.setattr(StreamData, "copies_batch", served)
    assert cli(*lottery(folder, tmp_path / "killed", *argv))[0] == 0
    (a,) = (tmp_path / "straight").glob("lottery_*/replicate_1/level_0/main")
    wa, wb = (torch.load(paths.weights(r, 10), weights_only=True) for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (pd.read_csv(paths.metrics(r)) for r in (a, b))
    ma, mb = (m[m.name != "wall_seconds"].reset_index(drop=True) for m in (ma, mb))
    pd.testing.assert_frame_equal(ma, mb)


def spoil(root: Path, case: str) -> None:
    if case == "classes":
        (root / "val" / WNIDS[2]).rename(root / "val" / "n99999999")
    elif case == "not_an_image":
        (root / "train" / WNIDS[0] / "x.JPEG").write_text("not an image")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty", "expected train/<wnid>/*.JPEG and val/<wnid>/*.JPEG in"),
        ("classes", "classes differ from"),
        ("not_an_image", "x.JPEG is neither a JPEG nor a PNG file"),
    ],
)
def test_bad_folders_are_one_line_before_anything_is_written(
    cli, folder: Path, tmp_path: Path, case: str, expected: str
) -> None:
    root = tmp_path / "data"
    if case == "empty":
        root.mkdir()
    else:
        shutil.copytree(folder, root)
    spoil(root, case)
    code, _, err = cli(*lottery(root, tmp_path / "runs"))
    assert code == 2 and err.startswith("error: ") and expected in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_truncated_jpeg_is_one_line_naming_it(
    cli, folder: Path, tmp_path: Path, small_crops: None
) -> None:
    root = tmp_path / "data"
    shutil.copytree(folder, root)
    bad = root / "val" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG"
    truncate(bad)
    code, _, err = cli(*lottery(root, tmp_path / "runs"))
    assert code == 2 and err.startswith(f"error: cannot decode image {bad} (")
    assert len(err.strip().splitlines()) == 1


def test_bad_tinyimagenet_folders(cli, tmp_path: Path) -> None:
    folder = write_tinyimagenet(tmp_path)
    argv = ["train", "--default_hparams=tinyimagenet_resnet_18", f"--dataset_root={tmp_path}"]
    argv += [f"--root={tmp_path / 'runs'}", "--training_steps=1it", "--batch_size=4", "--quiet"]
    (folder / "val" / "val_annotations.txt").unlink()
    code, _, err = cli(*argv)
    assert code == 2 and "val_annotations.txt is missing; expected tiny-imagenet-200/" in err
    (folder / "wnids.txt").unlink()
    code, _, err = cli(*argv)
    assert code == 2 and "Tiny ImageNet not found: expected tiny-imagenet-200/ with wnids" in err
    assert not (tmp_path / "runs").exists()


def test_prepare_refuses_a_prepared_folder(folder: Path, prepared: Path, capsys) -> None:
    before = sorted(p.name for p in prepared.iterdir())
    assert prepare_data.main([f"--dataset_root={folder}", f"--out={prepared}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "already holds prepared shards" in err
    assert sorted(p.name for p in prepared.iterdir()) == before
    assert np.load(shards.index_path(prepared, "val")).shape == (6, 4)


def test_torchrun_two_ranks_stream_what_one_process_does(cli, folder: Path, tmp_path: Path):
    """Each rank decodes its half of every batch (224-pixel crops: the subprocesses are
    not patched); the weights agree within 1e-3 as in tests/test_distributed.py."""
    from test_distributed import _largest_difference, train_in_one_and_two_processes

    flags = [
        "--default_hparams=imagenet_resnet_18_8",
        f"--dataset_root={folder}",
        "--training_steps=3it",
        "--batch_size=4",
        "--lr=0.01",
        "--device=cpu",
        "--quiet",
    ]
    _, (name_one, one), (name_two, two) = train_in_one_and_two_processes(cli, flags, tmp_path)
    assert name_one == name_two and _largest_difference(one, two) < 1e-3


def test_tinyimagenet_trains_through_main(cli, tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path / "data")
    argv = ["train", "--default_hparams=tinyimagenet_modifiedresnet_18_8", "--batch_size=4"]
    argv += [f"--dataset_root={tmp_path / 'data'}", f"--root={tmp_path / 'runs'}"]
    code, out, err = cli(*argv, "--training_steps=2it", "--device=cpu", "--quiet")
    assert code == 0, err
    assert (tmp_path / "data" / "tiny-imagenet-200" / "open_lth-val.pt").is_file()
    (run,) = (tmp_path / "runs").glob("train_*/replicate_1/main")
    assert (run / "summary.json").is_file()
