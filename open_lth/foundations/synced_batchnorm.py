"""BatchNorm over the global batch under torchrun: while a net trains, its BatchNorm2d
layers normalize with the statistics of every rank's examples together, gathered
differentiably, so that the ranks' gradients are those of one process (see
open_lth.foundations.distributed). Outside torchrun nothing changes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

from open_lth.foundations.distributed import active, rank, world_size


class _GatherRows(torch.autograd.Function):
    """Every rank's 1-d `row`, stacked in rank order: (ranks, len). The backward sums the
    ranks' gradients and keeps this rank's row: one collective each way."""

    @staticmethod
    def forward(ctx: object, row: torch.Tensor) -> torch.Tensor:
        rows = row.new_empty(world_size(), row.numel())
        dist.all_gather(list(rows.unbind(0)), row.contiguous())
        return rows

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[rank()]


class _SyncedBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, gathered
    differentiably, so the ranks' gradients are those of one process. torch's
    SyncBatchNorm does this on GPUs only; this runs on gloo's CPUs as well."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        c = x.shape[1]
        shape = (1, c, 1, 1)
        # One collective a layer (and its one in the backward), as torch's SyncBatchNorm:
        # each rank's count, mean and squares about its own mean, combined exactly (Chan
        # et al.'s pairwise update). Squares about a mean, not E[x²] - mean², which loses
        # digits where the mean is large against the spread (the first layer's features).
        local_mean = x.mean((0, 2, 3))
        local_squares = (x - local_mean.view(shape)).square().sum((0, 2, 3))
        local = torch.cat([local_mean, local_squares, x.new_full((1,), x.numel() // c)])
        stats = _GatherRows.apply(local)  # (ranks, 2c + 1)
        means, squares, counts = stats[:, :c], stats[:, c : 2 * c], stats[:, 2 * c :]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (squares.sum(0) + (counts * (means - mean).square()).sum(0)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            unbiased = var * n / (n - 1)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        scale = torch.rsqrt(var + self.eps) * self.weight
        return (x - mean.view(shape)) * scale.view(shape) + self.bias.view(shape)


@contextlib.contextmanager
def sync_batchnorm(net: torch.nn.Module) -> Iterator[None]:
    """While training under torchrun, the net's BatchNorm2d layers use the global batch's
    statistics (the layers change class in place; state dict and parameters stay)."""
    swapped = []
    if active():
        for module in net.modules():
            if type(module) is torch.nn.BatchNorm2d and module.momentum is not None:
                module.__class__ = _SyncedBatchNorm
                swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            module.__class__ = torch.nn.BatchNorm2d
