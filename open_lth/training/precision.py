"""Precision and memory layout on the device: bf16 or fp16 autocast on a GPU, the notes
that say where --bf16 or --fp16 do not pay, and channels_last for convolutional models
on a GPU. The step, the evaluation and the interpolation all take them from here."""

from __future__ import annotations

import contextlib

import torch

from open_lth.foundations.errors import note_once

# Convolutional models run channels_last on a GPU (see docs/speed.md's GPU figures).
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
