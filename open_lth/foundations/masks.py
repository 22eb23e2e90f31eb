"""Masks: prunable weight name -> bool tensor (True = kept); saved as plain tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from open_lth.foundations.model import Model
from open_lth.foundations.store import atomic_torch_save, torch_load

Mask = dict[str, torch.Tensor]  # prunable weight name -> bool tensor, True = kept


def apply_mask(model: torch.nn.Module, mask: Mask | None) -> None:
    """Zero the pruned weights in place."""
    if mask:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, keep in mask.items():
                params[name].mul_(keep.to(params[name].device, params[name].dtype))


def dense(model: Model) -> Mask:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in model.prunable_layer_names}


def save(mask: Mask, path: Path) -> None:
    atomic_torch_save(path, {n: m.cpu() for n, m in mask.items()})


def load(path: Path) -> Mask:
    return {n: m.bool() for n, m in torch_load(path).items()}


def report(mask: Mask, ignored: list[str]) -> dict:
    """Kept counts and fractions, in total and per layer (sparsity_report.json)."""
    layers = {
        n: {"kept": int(m.sum()), "total": m.numel(), "density": m.sum().item() / m.numel()}
        for n, m in mask.items()
    }
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["total"] for v in layers.values())
    return {
        "kept": kept,
        "total": total,
        "density": kept / total,
        "ignored": sorted(ignored),
        "layers": layers,
    }


def newly_pruned(previous: Mask, current: Mask) -> Mask:
    """The weights a level's strategy removed: with the previous level's trained weights
    these give the magnitudes of what was pruned (the study's Figure 1)."""
    return {n: previous[n] & ~current[n] for n in current}
