"""Data on the device: the whole split is one uint8 tensor, a batch is an index tensor,
and normalization and augmentation run batched on the device. No per-example Python,
no DataLoader: on a GPU this is what keeps small models from starving."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from open_lth.foundations import distributed, registries
from open_lth.foundations.dataset import StreamedDataset
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DatasetHparams

# A batch's examples (positions in the split), its images and labels, the generator of
# its augmentation (None: none), and each copy's augmentation seed for the step.
Index = torch.Tensor
XY = tuple[torch.Tensor, torch.Tensor]
Draws = torch.Generator | None
SeedList = list[int] | None


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts; stable across processes and Python versions
    (unlike `hash`), so (seed, epoch) always gives the same permutation."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def crop_flip_draws(
    b: int, pad: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """The random offsets (dy, dx) and flips of `crop_flip` for a batch of b images."""
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=device, generator=generator)
    flip = torch.rand((b, 1, 1), device=device, generator=generator) < 0.5
    return dy, dx, flip


def crop_flip_apply(
    x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Crop after zero padding by `pad` at (dy, dx), then flip where `flip`, for a whole
    batch (B, C, H, W) at once with one gather."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    device = x.device
    cols = torch.arange(w, device=device).view(1, 1, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx  # a flip is a reversed column index
    rows = torch.arange(h, device=device).view(1, h, 1) + dy
    batch = torch.arange(b, device=device).view(b, 1, 1)
    # Advanced indexing moves the channel axis last: (B, H, W, C) -> (B, C, H, W).
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


def crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by `pad`, then a random horizontal flip."""
    return crop_flip_apply(x, pad, *crop_flip_draws(len(x), pad, generator, x.device))


def resized_crop_draws(
    b: int,
    shape: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """RandomResizedCrop's boxes (left, top, width, height) and flips for b images of
    one shape, drawn for the whole batch at once: 10 tries of area and aspect ratio per
    image, the first that fits wins, else the central crop of the clamped ratio."""
    h, w = shape
    tries = (b, 10)
    area = h * w * torch.empty(tries, device=device).uniform_(*scale, generator=generator)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.empty(tries, device=device).uniform_(*log_ratio, generator=generator).exp()
    cw = torch.sqrt(area * aspect).round()
    ch = torch.sqrt(area / aspect).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.int().argmax(1, keepdim=True)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    fw, fh = w, h  # the fallback: the whole image, its ratio clamped into `ratio`
    if w / h < ratio[0]:
        fh = round(w / ratio[0])
    elif w / h > ratio[1]:
        fw = round(h * ratio[1])
    found = fits.any(1)
    cw = torch.where(found, cw, torch.full_like(cw, fw))
    ch = torch.where(found, ch, torch.full_like(ch, fh))
    u = torch.rand((b, 2), device=device, generator=generator)
    top = torch.where(found, (u[:, 0] * (h - ch + 1)).floor(), torch.full_like(ch, (h - fh) // 2))
    left = torch.where(found, (u[:, 1] * (w - cw + 1)).floor(), torch.full_like(cw, (w - fw) // 2))
    flip = torch.rand(b, device=device, generator=generator) < 0.5
    return torch.stack([left, top, cw, ch], 1), flip


def resized_crop_apply(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Each image's box resized (bilinear) to the image's own size and flipped where
    `flip`, in one grid_sample for the batch: float (B, C, H, W)."""
    b, c, h, w = x.shape
    left, top, cw, ch = boxes.unbind(1)
    theta = torch.zeros((b, 2, 3), device=x.device)
    # Output coordinate u in [-1, 1] (pixel edges) maps to the box's edges in the input.
    theta[:, 0, 0] = torch.where(flip, -cw / w, cw / w)
    theta[:, 0, 2] = (2 * left + cw) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * top + ch) / h - 1
    grid = torch.nn.functional.affine_grid(theta, [b, c, h, w], align_corners=False)
    return torch.nn.functional.grid_sample(
        x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of n examples for one epoch (on the CPU)."""
    g = torch.Generator().manual_seed(derive_seed("order", seed, epoch))
    return torch.randperm(n, generator=g)


class DeviceData:
    """One split of a registered data set, resident on `device`."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augmentation: str | None,
        pad: int,
        device: torch.device,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.images = images.to(device)
        self.scale, self.ratio = scale, ratio
        self.labels = labels.to(device)
        self.device = device
        self.augmentation = augmentation
        self.pad = pad
        shape = (1, len(mean), 1, 1)
        # (x/255 - mean)/std = x·scale + shift: one fused multiply-add per batch.
        self._scale = 1 / (torch.tensor(std, device=device).view(shape) * 255)
        self._shift = -torch.tensor(mean, device=device).view(shape) / torch.tensor(
            std, device=device
        ).view(shape)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized float images and labels at `index`; augmented when a generator is
        given and the data set has an augmentation."""
        x = self.images[index]
        if generator is not None and self.augmentation == "crop_flip":
            x = crop_flip(x, self.pad, generator)
        elif generator is not None and self.augmentation == "resized_crop_flip":
            x = resized_crop_apply(x, *self._resized_crop_draws(len(x), generator))
        return torch.addcmul(self._shift, x.float(), self._scale), self.labels[index]

    def copies_batch(self, index: Index, generator: Draws = None, seeds: SeedList = None) -> XY:
        """K copies' batches at once: `index` (K, B) holds each copy's examples, and
        `seeds` each copy's augmentation seed for this step. Returns images laid out for
        a stacked network, (B, K·C, H, W), and labels (B, K). Each copy's images are
        those `batch` gives it alone, to the bit (the same draws from its own seed), in
        a fixed number of operations whatever K, so that a pack's step does not pay
        for its data copy by copy."""
        k, b = index.shape
        x = self.images[index.reshape(-1)]
        if generator is not None and self.augmentation == "crop_flip":
            draws = []
            for seed in seeds or []:
                generator.manual_seed(seed)
                draws.append(crop_flip_draws(b, self.pad, generator, x.device))
            dy, dx, flip = (torch.cat(d) for d in zip(*draws, strict=True))
            x = crop_flip_apply(x, self.pad, dy, dx, flip)
        elif generator is not None and self.augmentation == "resized_crop_flip":
            draws = []
            for seed in seeds or []:
                generator.manual_seed(seed)
                draws.append(self._resized_crop_draws(b, generator))
            boxes, flip = (torch.cat(d) for d in zip(*draws, strict=True))
            x = resized_crop_apply(x, boxes, flip)
        x = torch.addcmul(self._shift, x.float(), self._scale)
        if k > 1:
            x = x.view(k, b, *x.shape[1:]).transpose(0, 1).reshape(b, -1, *x.shape[2:])
        return x, self.labels[index].t()

    def _resized_crop_draws(self, b: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        shape = tuple(self.images.shape[2:])
        return resized_crop_draws(b, shape, self.scale, self.ratio, generator, self.device)

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        """The seeded permutation of the examples for one epoch (on the device)."""
        return epoch_order(len(self), seed, epoch).to(self.device)


class BatchesInStep:
    """The batches of data without augmentation drawn inside the training step, so that a
    CUDA graph replays the drawing with the step and the host writes one number a step
    instead of launching the gather, normalization and copies itself. The epoch's order
    (K, N) sits in a static device buffer and the step's first position in a device
    scalar; calling it gathers `orders[:, p : p + B]`, the very indices (hence, to the
    bit, the batch) that the trainer draws outside the step."""

    def __init__(self, data: DeviceData, copies: int, batch_size: int) -> None:
        if data.augmentation:
            # The augmentation draws reseed a generator per copy and step (functions of
            # seed and step), which a replayed graph cannot do.
            raise ValueError("only data without augmentation is drawn inside the step")
        self.data = data
        self.orders = torch.zeros((copies, len(data)), dtype=torch.int64, device=data.device)
        self.start = torch.zeros((), dtype=torch.int64, device=data.device)
        self.span = torch.arange(batch_size, device=data.device)

    def set_epoch(self, orders: torch.Tensor) -> None:
        self.orders.copy_(orders)

    def set_step(self, position: int) -> None:
        self.start.fill_(position)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.copies_batch(self.orders.index_select(1, self.start + self.span))


def load(
    hparams: DatasetHparams, root: Path, train: bool, device: torch.device
) -> tuple[DeviceData, int]:
    """A split on the device and the data set's number of classes. The training split is
    subsampled (fixed seed, so every run sees the same subset) when asked."""
    dataset = registries.datasets.get(hparams.dataset_name)
    if issubclass(dataset, StreamedDataset):
        source, classes = dataset.source(Path(root), train)
        labels = torch.from_numpy(source.labels)
    else:
        images, labels = dataset.load(Path(root), train)
        classes = dataset.num_classes
    if train and hparams.subsample_fraction is not None:
        g = torch.Generator().manual_seed(0)
        keep = (
            torch.randperm(len(labels), generator=g)[
                : max(1, round(hparams.subsample_fraction * len(labels)))
            ]
            .sort()
            .values
        )
        if issubclass(dataset, StreamedDataset):
            source = source.subset(keep.numpy())
        else:
            images = images[keep]
        labels = labels[keep]
    augmentation = None if hparams.do_not_augment or not train else dataset.augmentation
    world = distributed.world_size()
    if train and hparams.batch_size % world:
        raise UserError(
            f"--batch_size {hparams.batch_size} does not split over {world} processes: under "
            "torchrun the batch size is the global batch, divided evenly among the ranks"
        )
    if train and len(labels) < hparams.batch_size:
        raise UserError(
            f"--batch_size {hparams.batch_size} is larger than the {len(labels)} training examples"
        )
    if issubclass(dataset, StreamedDataset):
        from open_lth.training.streaming import StreamData  # Pillow, only for these

        stream = StreamData(
            source, dataset.mean, dataset.std, augmentation or "center_crop", dataset.size,
            dataset.resize, dataset.scale, dataset.ratio, device,
        )  # fmt: skip
        return stream, classes  # type: ignore[return-value]  # DeviceData's interface
    data = DeviceData(
        images, labels, dataset.mean, dataset.std, augmentation, dataset.pad, device,
        dataset.scale, dataset.ratio,
    )  # fmt: skip
    return data, classes
