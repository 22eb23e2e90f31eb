"""Evaluation of one network, or of the K copies of a stacked one, over a split."""

from __future__ import annotations

import torch

from open_lth.training.data import DeviceData
from open_lth.training.precision import autocast, layout
from open_lth.training.stacked import repeat_input, split_output


def evaluate_copies(
    net: torch.nn.Module,
    data: DeviceData,
    copies: int = 1,
    batch_size: int | None = None,
    bf16: bool = False,
    fp16: bool = False,
) -> list[tuple[float, float]]:
    """Mean loss and accuracy of each copy of a (stacked) network over a split, in eval
    mode, with one sync at the end."""
    batch_size = batch_size or default_batch_size(data.device, copies)
    was_training = net.training
    net.eval()
    loss_sum = torch.zeros(copies, device=data.device, dtype=torch.float64)
    correct = torch.zeros(copies, device=data.device, dtype=torch.int64)
    with torch.inference_mode(), autocast(data.device, bf16, fp16=fp16):
        for start in range(0, len(data), batch_size):
            index = torch.arange(start, min(start + batch_size, len(data)), device=data.device)
            x, y = data.batch(index)
            out = split_output(net(layout(net, repeat_input(x, copies))), copies).float()
            y = y.unsqueeze(1).expand(-1, copies)
            loss_sum += per_copy_loss(out, y).sum(0).double()
            correct += (out.argmax(-1) == y).sum(0)
    net.train(was_training)
    n = len(data)
    return [(loss / n, c / n) for loss, c in zip(loss_sum.tolist(), correct.tolist(), strict=True)]


def default_batch_size(device: torch.device, copies: int = 1) -> int:
    """1,000 examples a pass on a CPU; on a GPU, where a pass of 1,000 small images is
    launch-bound, up to 5,000 (fewer when K copies share the pass)."""
    return max(1000, 5000 // copies) if device.type == "cuda" else 1000


def evaluate(
    model: torch.nn.Module, data: DeviceData, batch_size: int | None = None, bf16: bool = False
) -> tuple[float, float]:
    """Mean loss and accuracy of one network over a split."""
    return evaluate_copies(model, data, 1, batch_size, bf16)[0]


def per_copy_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (N, K, classes) outputs against (N, K) labels: (N, K)."""
    n, k, classes = output.shape
    flat = torch.nn.functional.cross_entropy(
        output.reshape(n * k, classes), y.reshape(n * k), reduction="none"
    )
    return flat.view(n, k)
