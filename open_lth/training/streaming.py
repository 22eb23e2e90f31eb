"""A split that streams from disk (ImageNet), with DeviceData's interface (`len`,
`labels`, `batch`, `copies_batch`, `order`), so that the training loop, evaluation and
the strategies use it unchanged.

A pool of threads reads a batch's files; a decoder (open_lth/training/decoders.py) makes
the crops: Pillow in those threads (Pillow releases the GIL while it decodes and
resizes), or, on CUDA with torchvision, nvJPEG on the GPU, the whole batch at once.
The crops are normalized on the device.

The loop asks for the batches of an order it got from `order(seed, epoch)`, so
the examples of the next batches are known: their decoding starts while the current
step runs. Each example's crop and flip are drawn from a seed that is a function of the
step's augmentation seed (itself a function of the run's seed and the iteration) and the
example's position in the batch, so a resumed run sees the very images and crops an
uninterrupted one sees. Under torchrun the loop keeps each rank's slice of the global
batch (`distributed.shard`): each rank decodes only that slice."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from open_lth.foundations import distributed
from open_lth.foundations.images import Source
from open_lth.training import decoders
from open_lth.training.data import XY, Draws, Index, SeedList, derive_seed, epoch_order

# How many batches ahead of the one being served are decoded.
AHEAD = 2
# ... and at most this many examples (decoded ImageNet images are ~0.5 MB each).
AHEAD_EXAMPLES = 2048
# Orders remembered to guess the next batches (the current and the next epoch's, of a
# pack's copies).
REMEMBERED_ORDERS = 16


def usable_cores() -> int:
    """The cores this process may run on: under Slurm a task's --cpus-per-task, not the
    node's (8 ranks of a node would each start a thread per core of the node)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class StreamData:
    """One split, read from a Source batch by batch.

    `augmentation` is "resized_crop_flip" (a random resized crop and flip when the loop
    gives a generator) or "center_crop" (--do_not_augment): never None, because a
    streamed batch is made on the host and so is never drawn inside a graphed step
    (open_lth.training.data.BatchesInStep)."""

    def __init__(
        self,
        source: Source,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augmentation: str,
        size: int,
        resize: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        device: torch.device,
        workers: int | None = None,
        decoder: type[decoders.PillowDecoder] | type[decoders.GpuJpegDecoder] | None = None,
    ) -> None:
        self.source = source
        self.labels = torch.from_numpy(np.asarray(source.labels, dtype=np.int64)).to(device)
        # The shape only (check_model_fits, SynFlow): no memory, no example read.
        self.images = torch.empty((len(source), 3, size, size), dtype=torch.uint8, device="meta")
        self.device = device
        self.augmentation = augmentation
        self.pad = 0
        self.size, self.resize, self.scale, self.ratio = size, resize, scale, ratio
        shape = (1, len(mean), 1, 1)
        self._scale = 1 / (torch.tensor(std, device=device).view(shape) * 255)
        self._shift = -torch.tensor(mean, device=device).view(shape) / torch.tensor(
            std, device=device
        ).view(shape)
        workers = workers or min(32, usable_cores())
        crop = decoders.Crop(size, resize, scale, ratio)
        self.decoder = (decoder or decoders.choose(device))(crop, device, workers)
        self._decoders = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._decoded: dict[int, Future] = {}  # what decoder.load made of each file
        self._orders: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.source)

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        order = epoch_order(len(self), seed, epoch)
        self._remember(seed, epoch, order.numpy())
        return order.to(self.device)

    def batch(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized images and labels at `index`; randomly cropped when a generator is
        given (its next draw seeds the batch's crops) and the split augments."""
        seed = None
        if generator is not None and self.augmentation == "resized_crop_flip":
            seed = int(torch.randint(1 << 62, (1,), generator=generator, device=generator.device))
        x, y = self._make(index.view(1, -1), None if seed is None else [seed], shard=False)
        return x, y[:, 0]

    def copies_batch(self, index: Index, generator: Draws = None, seeds: SeedList = None) -> XY:
        """K copies' batches (see DeviceData.copies_batch): images (B, K·C, H, W) and
        labels (B, K). Under torchrun only this rank's rows of the images are made (the
        others are left unset; the loop keeps this rank's slice)."""
        crop = generator is not None and self.augmentation == "resized_crop_flip"
        return self._make(index, seeds if crop else None, shard=True)

    def _make(
        self, index: torch.Tensor, seeds: list[int] | None, shard: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, b = index.shape
        rows = index.cpu().numpy()
        lo, hi = self._rank_slice(b) if shard else (0, b)
        following = self._following(rows, lo, hi)
        self._forget(set(rows[:, lo:hi].reshape(-1).tolist()) | set(following))
        loaded, crop_seeds = [], []
        for copy in range(k):
            for j in range(lo, hi):
                loaded.append(self._decode_future(int(rows[copy, j])))
                crop_seeds.append(None if seeds is None else derive_seed("crop", seeds[copy], j))
        for example in following:  # read (and decoded) while this batch's step runs
            self._decode_future(example)
        part = self.decoder.images(loaded, crop_seeds)  # (K·n, 3, H, W) on the device
        # Laid out (N, C, H, W) while still uint8: a quarter of the bytes to move.
        part = torch.addcmul(self._shift, part.contiguous().float(), self._scale)
        n = hi - lo
        if k > 1:
            part = part.view(k, n, *part.shape[1:]).transpose(0, 1).reshape(n, -1, *part.shape[2:])
        if n == b:
            x = part
        else:
            x = torch.empty((b, *part.shape[1:]), device=self.device)
            x[lo:hi] = part
        return x, self.labels[index.to(self.labels.device)].t()

    def _rank_slice(self, b: int) -> tuple[int, int]:
        if not distributed.active():
            return 0, b
        size = b // distributed.world_size()
        return distributed.rank() * size, (distributed.rank() + 1) * size

    def _decode_future(self, example: int) -> Future:
        future = self._decoded.get(example)
        if future is None:
            future = self._decoders.submit(self._decode, example)
            self._decoded[example] = future
        return future

    def _decode(self, example: int) -> object:
        return self.decoder.load(self.source.read(example), self.source.name(example))

    def _forget(self, keep: set[int]) -> None:
        """Drop decoded examples that are neither wanted now nor guessed next (a wrong
        guess, e.g. a Fisher pass between two steps), bounding memory."""
        for example in list(self._decoded):
            if example not in keep:
                self._decoded.pop(example).cancel()

    def _following(self, rows: np.ndarray, lo: int, hi: int) -> list[int]:
        """This rank's examples of the batches that follow `rows`: up to AHEAD batches
        and AHEAD_EXAMPLES examples (an evaluation's batches are large)."""
        found: list[int] = []
        current = rows
        for _ in range(AHEAD):
            following = [self._next_row(row) for row in current]
            if any(f is None for f in following):
                break
            current = np.stack(following)
            examples = current[:, lo:hi].reshape(-1).tolist()
            if found and len(found) + len(examples) > AHEAD_EXAMPLES:
                break
            found += examples
        return found

    def _next_row(self, row: np.ndarray) -> np.ndarray | None:
        """The batch after `row`: the next slice of the order it is a slice of (the next
        epoch's first at an epoch's end), or the next range (evaluation)."""
        b, n = len(row), len(self)
        if b and np.array_equal(row, np.arange(row[0], row[0] + b)):
            end = int(row[0]) + b
            return np.arange(end, min(end + b, n)) if end < n and b else None
        for (seed, epoch), (order, inverse) in list(self._orders.items()):
            at = int(inverse[row[0]])
            if not np.array_equal(order[at : at + b], row):
                continue
            if at + 2 * b <= n:
                return order[at + b : at + 2 * b]
            following = epoch_order(n, seed, epoch + 1).numpy()
            self._remember(seed, epoch + 1, following)
            return following[:b]
        return None

    def _remember(self, seed: int, epoch: int, order: np.ndarray) -> None:
        if (seed, epoch) in self._orders:
            return
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        self._orders[(seed, epoch)] = (order, inverse)
        while len(self._orders) > REMEMBERED_ORDERS:
            self._orders.pop(next(iter(self._orders)))

    def close(self) -> None:
        self._decoders.shutdown(wait=False, cancel_futures=True)
        self.decoder.close()

    def __del__(self) -> None:
        if hasattr(self, "_decoders"):  # made (__init__ may have failed before)
            self.close()  # the pools' threads end with the split
