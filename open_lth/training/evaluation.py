"""Evaluation of one network, or of the K copies of a stacked one, over a split."""

from __future__ import annotations

import contextlib

import torch

from open_lth.foundations.errors import note_once
from open_lth.training.data import DeviceData
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


# Convolutional models run channels_last on a GPU (see the README's GPU figures).
CHANNELS_LAST = True


def uses_channels_last(model: torch.nn.Module, device: torch.device) -> bool:
    return CHANNELS_LAST and device.type == "cuda" and getattr(model, "is_convolutional", False)


def layout(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if uses_channels_last(model, x.device):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def bf16_note(device: torch.device) -> str | None:
    """Why --bf16 will not pay on `device`, or None where it may: it is a no-op on a CPU,
    and a GPU older than Ampere (compute capability 8.0; Colab's T4 is 7.5) has no
    bfloat16 tensor cores, so its bf16 runs emulated, slower than float32."""
    if device.type != "cuda":
        return f"--bf16 has no effect on {device}: this run trains in float32"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return (
            f"--bf16 on {torch.cuda.get_device_name(device)} (compute capability "
            f"{major}.{minor}) runs emulated, slower than float32: it has no bfloat16 "
            "tensor cores (Ampere, 8.0, and newer have)"
        )
    return None


def note_bf16(device: torch.device) -> None:
    """`bf16_note`, once per process and device."""
    note = bf16_note(device)
    if note is not None:
        note_once(f"bf16 {device}", note)


def fp16_note(device: torch.device) -> str | None:
    """Why --fp16 is only half on `device`: on a CPU autocast stays off (float16 matmuls
    there are slow or missing), while the loss scaler runs as on a GPU."""
    if device.type != "cuda":
        return f"--fp16 on {device}: autocast is off (float32); only the loss scaler runs"
    return None


def note_fp16(device: torch.device) -> None:
    """`fp16_note`, once per process and device."""
    note = fp16_note(device)
    if note is not None:
        note_once(f"fp16 {device}", note)


def autocast(
    device: torch.device, bf16: bool, cache: bool = True, fp16: bool = False
) -> contextlib.AbstractContextManager:
    if (bf16 or fp16) and device.type == "cuda":
        dtype = torch.float16 if fp16 else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype, cache_enabled=cache)
    return contextlib.nullcontext()
