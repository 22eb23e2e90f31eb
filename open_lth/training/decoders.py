"""How a streamed split (open_lth/training/streaming.py) turns a batch's encoded files
into a batch of crops: on the CPU with Pillow, or on a GPU with nvJPEG.

Both take each example's crop box and flip from `crop_box(width, height, seed, ...)`
(or the center crop), so the crops are functions of (seed, epoch, index) whichever
decodes; the two may differ in the last bits of a pixel (two JPEG decoders, two
resampling filters).

- `PillowDecoder`: the reading threads decode with Pillow, a second pool crops.
- `GpuJpegDecoder`: the reading threads read the bytes and look at the header only;
  the batch's JPEGs are decoded in one call of torchvision.io.decode_jpeg(list,
  device="cuda") (nvJPEG's batched decode), then cropped, resized (bilinear with
  antialiasing, as Pillow's) and flipped on the device. A file nvJPEG cannot decode (a
  PNG named .JPEG, a CMYK JPEG: both in real ImageNet) is decoded with Pillow and sent
  to the device as its crop.

DALI is not used: its pipelines own the reading, the order and the random draws, and
the crops would no longer be this project's functions of (seed, epoch, index)."""

from __future__ import annotations

import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from open_lth.foundations.errors import note_once
from open_lth.foundations.images import center_crop, crop_box, decode, train_crop

# torchvision decodes a list of JPEGs on the GPU in one call from this version on.
TORCHVISION_BATCHED = (0, 19)


@dataclass
class Crop:
    """What a decoder needs to crop: the crop's size, the center crop's resize, and
    RandomResizedCrop's scale and ratio."""

    size: int
    resize: int
    scale: tuple[float, float]
    ratio: tuple[float, float]


class PillowDecoder:
    """Decode with Pillow in the reading threads; crop in a pool of its own (a crop
    waits for its example's decode, and a decode queued for a later batch must not
    hold up the crops of the batch being served)."""

    def __init__(self, crop: Crop, device: torch.device, workers: int) -> None:
        self.crop, self.device = crop, device
        self._croppers = ThreadPoolExecutor(workers, thread_name_prefix="crop")

    def load(self, data: bytes, name: str) -> Image.Image:
        return decode(data, name)

    def images(self, loaded: list[Future[Any]], seeds: list[int | None]) -> torch.Tensor:
        """(n, 3, size, size) uint8 on the device."""
        crop = self._crop
        futures = [self._croppers.submit(crop, f, s) for f, s in zip(loaded, seeds, strict=True)]
        part = torch.from_numpy(np.stack([f.result() for f in futures]))  # (n, H, W, 3)
        if self.device.type == "cuda":  # an asynchronous copy from pinned memory
            part = part.pin_memory()
        return part.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def _crop(self, loaded: Future[Image.Image], seed: int | None) -> np.ndarray:
        return pillow_crop(loaded.result(), seed, self.crop)

    def close(self) -> None:
        self._croppers.shutdown(wait=False, cancel_futures=True)


def pillow_crop(image: Image.Image, seed: int | None, crop: Crop) -> np.ndarray:
    if seed is None:
        return center_crop(image, crop.size, crop.resize)
    return train_crop(image, crop.size, seed, crop.scale, crop.ratio)


@dataclass
class Encoded:
    """A file as the GPU decoder's reading threads leave it: its bytes (a uint8 tensor,
    as decode_jpeg takes them) and header's size, or, when nvJPEG cannot decode it, the
    image Pillow decoded."""

    data: torch.Tensor
    name: str
    width: int
    height: int
    pillow: Image.Image | None


class GpuJpegDecoder:
    """Decode a batch's JPEGs on the device in one torchvision.io.decode_jpeg call."""

    def __init__(self, crop: Crop, device: torch.device, workers: int) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        self.crop, self.device = crop, device
        self._decode_jpeg, self._rgb = decode_jpeg, ImageReadMode.RGB

    def load(self, data: bytes, name: str) -> Encoded:
        """The header only (no decode): nvJPEG takes RGB and grayscale JPEGs."""
        tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # here, not per batch
        try:
            header = Image.open(io.BytesIO(data))
            fmt, mode, (w, h) = header.format, header.mode, header.size
        except Exception:  # unreadable: Pillow's decode says which file, as one line
            return Encoded(tensor, name, 0, 0, decode(data, name))
        if fmt != "JPEG" or mode not in ("RGB", "L"):
            return Encoded(tensor, name, w, h, decode(data, name))
        return Encoded(tensor, name, w, h, None)

    def images(self, loaded: list[Future[Any]], seeds: list[int | None]) -> torch.Tensor:
        """(n, 3, size, size) float in [0, 255] on the device."""
        files: list[Encoded] = [f.result() for f in loaded]
        on_gpu = [i for i, f in enumerate(files) if f.pillow is None]
        decoded = dict(zip(on_gpu, self._decode([files[i] for i in on_gpu]), strict=True))
        s = self.crop.size
        out = torch.empty((len(files), 3, s, s), device=self.device)
        for i, (file, seed) in enumerate(zip(files, seeds, strict=True)):
            if i in decoded:
                out[i] = self._crop(decoded[i], seed)
            else:
                assert file.pillow is not None
                array = pillow_crop(file.pillow, seed, self.crop)
                out[i] = torch.from_numpy(array.copy()).to(self.device).permute(2, 0, 1)
        return out

    def _decode(self, files: list[Encoded]) -> list[torch.Tensor]:
        if not files:
            return []
        try:
            data = [f.data for f in files]
            return list(self._decode_jpeg(data, mode=self._rgb, device=self.device))
        except RuntimeError as e:  # one file nvJPEG refuses: each with Pillow
            note_once("nvjpeg-failed", f"nvJPEG failed on a batch ({e}); decoding it with Pillow")
            return [self._pillow(f) for f in files]

    def _pillow(self, file: Encoded) -> torch.Tensor:
        image = np.array(decode(file.data.numpy().tobytes(), file.name))  # a bad file: one line
        return torch.from_numpy(image).to(self.device).permute(2, 0, 1)

    def _crop(self, image: torch.Tensor, seed: int | None) -> torch.Tensor:
        """One image (3, H, W) uint8 to its crop (3, size, size), float, on the device."""
        _, h, w = image.shape
        s = self.crop.size
        if seed is None:  # the shorter side to `resize`, then the center (center_crop)
            r = self.crop.resize
            new = (max(1, int(r * h / w)), r) if w <= h else (r, max(1, int(r * w / h)))
            resized = resize(image, new)
            top, left = int(round((new[0] - s) / 2.0)), int(round((new[1] - s) / 2.0))
            return resized[:, top : top + s, left : left + s]
        (left, top, right, bottom), flip = crop_box(w, h, seed, self.crop.scale, self.crop.ratio)
        out = resize(image[:, top:bottom, left:right], (s, s))
        return out.flip(-1) if flip else out

    def close(self) -> None:
        pass


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear with antialiasing (Pillow's filter when shrinking), float (3, h, w)."""
    x = image.unsqueeze(0).float()
    out = torch.nn.functional.interpolate(
        x, size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return out[0].clamp_(0, 255)


def gpu_decoder_available() -> bool:
    """Whether torchvision is installed and decodes lists of JPEGs (0.19 or later)."""
    try:
        import torchvision
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    parts = torchvision.__version__.split("+")[0].split(".")[:2]
    return tuple(int(p) for p in parts if p.isdigit()) >= TORCHVISION_BATCHED


def choose(device: torch.device) -> type[PillowDecoder] | type[GpuJpegDecoder]:
    """The GPU decoder on CUDA where torchvision can decode batches; Pillow otherwise
    (the CPU's own path, so a note only where a GPU goes without)."""
    if device.type != "cuda":
        return PillowDecoder
    if not gpu_decoder_available():
        note_once(
            "gpu-jpeg",
            "JPEGs are decoded with Pillow on the CPU: decoding on the GPU needs "
            "torchvision 0.19 or later (pip install -e .[torchvision])",
        )
        return PillowDecoder
    return GpuJpegDecoder
