"""The streamed split's decoders (open_lth/training/decoders.py): which one StreamData
chooses, and the GPU decoder's batching and fallbacks, run here on the CPU with
torchvision.io.decode_jpeg replaced by Pillow (torchvision is not installed on the
CPU machines); the real nvJPEG against Pillow runs where CUDA and torchvision are."""

from __future__ import annotations

import io
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from image_folders import truncate, write_imagefolder
from PIL import Image

from open_lth.datasets.imagenet import ImageNet
from open_lth.foundations import errors
from open_lth.foundations.errors import UserError
from open_lth.training import decoders
from open_lth.training.streaming import StreamData

CPU = torch.device("cpu")
# The two decoders may differ in the last bits of a pixel: two JPEG decoders, and
# Pillow's resampling rounds to uint8 between its horizontal and vertical passes (up to
# 5 levels here, 0.3 on average; a wrong box or flip moves the average by tens).
LEVELS = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_NOTED", set())


def fake_torchvision(monkeypatch: pytest.MonkeyPatch, version: str, decode_jpeg=None) -> list:
    """A torchvision whose decode_jpeg decodes a list with Pillow, same shapes as the
    real one ((3, H, W) uint8 each, on `device`); returns the list of its calls."""
    calls: list[list[bytes]] = []

    def decode(data: list[torch.Tensor], mode: object, device: torch.device) -> list:
        assert isinstance(data, list) and mode == "RGB"
        calls.append([bytes(t.numpy()) for t in data])
        out = []
        for t in data:
            image = Image.open(io.BytesIO(bytes(t.numpy())))
            assert image.format == "JPEG" and image.mode in ("RGB", "L")  # nvJPEG's kinds
            try:
                array = np.asarray(image.convert("RGB"))
            except OSError as e:  # as torchvision reports nvJPEG's errors
                raise RuntimeError(f"nvjpeg: {e}") from None
            out.append(torch.from_numpy(array.copy()).to(device).permute(2, 0, 1))
        return out

    tv = types.ModuleType("torchvision")
    tv.__version__ = version
    tv_io = types.ModuleType("torchvision.io")
    tv_io.decode_jpeg = decode_jpeg or decode
    tv_io.ImageReadMode = types.SimpleNamespace(RGB="RGB")
    tv.io = tv_io
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.io", tv_io)
    return calls


def no_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "torchvision.io", None)


def test_the_gpu_decoder_is_chosen_on_cuda_with_torchvision(monkeypatch, capsys) -> None:
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    fake_torchvision(monkeypatch, "0.20.1+cu124")
    assert decoders.choose(cuda) is decoders.GpuJpegDecoder
    assert decoders.choose(CPU) is decoders.PillowDecoder  # the CPU's own path
    fake_torchvision(monkeypatch, "0.18.0")  # decode_jpeg takes no lists before 0.19
    assert decoders.choose(cuda) is decoders.PillowDecoder
    assert "torchvision 0.19 or later" in capsys.readouterr().err


def test_without_torchvision_cuda_decodes_with_pillow_and_says_so_once(monkeypatch, capsys):
    no_torchvision(monkeypatch)
    cuda = torch.device("cuda")
    assert decoders.choose(cuda) is decoders.PillowDecoder
    assert decoders.choose(cuda) is decoders.PillowDecoder
    err = capsys.readouterr().err
    assert err.count("note: JPEGs are decoded with Pillow") == 1
    assert decoders.choose(CPU) is decoders.PillowDecoder
    assert capsys.readouterr().err == ""  # the CPU path is no fallback: no note


def stream(folder: Path, decoder: type) -> StreamData:
    source, _ = ImageNet.source(folder, True)
    return StreamData(
        source, ImageNet.mean, ImageNet.std, "resized_crop_flip", 32, 37, ImageNet.scale,
        ImageNet.ratio, CPU, workers=2, decoder=decoder,
    )  # fmt: skip


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalized images back to pixel levels (0 to 255)."""
    mean = torch.tensor(ImageNet.mean).view(1, 3, 1, 1)
    std = torch.tensor(ImageNet.std).view(1, 3, 1, 1)
    return (x * std + mean) * 255


def assert_close_to_pillow(a: torch.Tensor, b: torch.Tensor) -> None:
    diff = (pixels(a) - pixels(b)).abs()
    found = f"differ by up to {diff.max():.1f} levels, {diff.mean():.2f} on average"
    assert diff.max() <= LEVELS and diff.mean() < 1, found


def test_gpu_decoder_batches_jpegs_and_leaves_png_and_cmyk_to_pillow(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_torchvision(monkeypatch, "0.20.0")
    gpu, pillow = stream(folder, decoders.GpuJpegDecoder), stream(folder, decoders.PillowDecoder)
    index = torch.arange(24)
    # Training crops: the same boxes and flips (functions of the seeds), then test crops.
    a = gpu.copies_batch(index.view(1, -1), torch.Generator(), seeds=[7])[0]
    b = pillow.copies_batch(index.view(1, -1), torch.Generator(), seeds=[7])[0]
    assert a.shape == b.shape == (24, 3, 32, 32)
    assert_close_to_pillow(a, b)
    # One decode_jpeg call for the whole batch, without the CMYK JPEG and the PNG.
    assert len(calls) == 1 and len(calls[0]) == 22
    assert_close_to_pillow(gpu.batch(index)[0], pillow.batch(index)[0])
    assert len(calls) == 2
    # Flips and boxes come from the seeds: another seed, other crops.
    c = gpu.copies_batch(index.view(1, -1), torch.Generator(), seeds=[8])[0]
    assert (pixels(c) - pixels(a)).abs().mean() > 10


def test_a_batch_nvjpeg_refuses_is_decoded_with_pillow(folder: Path, monkeypatch, capsys) -> None:
    def refuse(data: list, mode: object, device: torch.device) -> list:
        raise RuntimeError("nvjpegDecodeBatched failed")

    fake_torchvision(monkeypatch, "0.20.0", decode_jpeg=refuse)
    gpu, pillow = stream(folder, decoders.GpuJpegDecoder), stream(folder, decoders.PillowDecoder)
    index = torch.arange(24)
    assert_close_to_pillow(gpu.batch(index)[0], pillow.batch(index)[0])
    assert_close_to_pillow(gpu.batch(index)[0], pillow.batch(index)[0])
    assert capsys.readouterr().err.count("note: nvJPEG failed") == 1


def test_a_truncated_jpeg_on_the_gpu_path_is_one_line_naming_it(tmp_path: Path, monkeypatch):
    fake_torchvision(monkeypatch, "0.20.0")
    folder = write_imagefolder(tmp_path / "imagenet")
    bad = sorted((folder / "train").glob("*/*_5.JPEG"))[0]
    truncate(bad)
    gpu = stream(folder, decoders.GpuJpegDecoder)
    with pytest.raises(UserError, match=f"cannot decode image {bad}"):
        gpu.batch(torch.arange(24))


@pytest.mark.skipif(
    not (torch.cuda.is_available() and decoders.gpu_decoder_available()),
    reason="needs CUDA and torchvision 0.19 or later",
)
def test_nvjpeg_batches_match_pillow_within_a_few_levels(folder: Path, capsys) -> None:
    cuda = torch.device("cuda")
    source, _ = ImageNet.source(folder, True)
    common = (ImageNet.mean, ImageNet.std, "resized_crop_flip", 32, 37, ImageNet.scale)
    gpu = StreamData(source, *common, ImageNet.ratio, cuda)
    assert isinstance(gpu.decoder, decoders.GpuJpegDecoder)
    pillow = StreamData(source, *common, ImageNet.ratio, CPU, decoder=decoders.PillowDecoder)
    index = torch.arange(24)
    a = gpu.copies_batch(index.view(1, -1), torch.Generator(), seeds=[7])[0]
    b = pillow.copies_batch(index.view(1, -1), torch.Generator(), seeds=[7])[0]
    assert_close_to_pillow(a.cpu(), b)
    assert_close_to_pillow(gpu.batch(index)[0].cpu(), pillow.batch(index)[0])
    # nvJPEG took the batch (the grayscale JPEG included): no fallback to Pillow.
    assert "nvJPEG failed" not in capsys.readouterr().err


def test_threads_follow_the_cores_the_task_may_use(folder: Path, monkeypatch) -> None:
    """A Slurm task bound to 3 of a node's cores reads with 3 threads, not one a core."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    source, _ = ImageNet.source(folder, True)
    split = StreamData(
        source, ImageNet.mean, ImageNet.std, "center_crop", 32, 37, ImageNet.scale,
        ImageNet.ratio, CPU,
    )  # fmt: skip
    assert split._decoders._max_workers == 3
