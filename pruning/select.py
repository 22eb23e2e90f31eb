"""The shared selector: remove exactly ⌈fraction × remaining⌉ of the surviving weights
with the lowest scores, globally (one threshold across layers) or layer by layer.

Globally, `remaining` counts every surviving prunable weight, the ignored layers
included, and the count is removed from the other layers only: open_lth's
sparse_global, so that L levels leave (1 - fraction)^L of all prunable weights
(ResNet-20 with fc.weight ignored: 16.78% at level 8). open_lth removes one weight
more (its `> threshold` keeps none equal to the k-th smallest); this removes exactly
the count. `count_ignored=False` is the count without the ignored layers (this
framework's rule before format 2)."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from open_lth.foundations.errors import UserError
from open_lth.foundations.masks import Mask


def count_to_prune(fraction: float, remaining: int) -> int:
    """⌈fraction × remaining⌉ computed exactly: 0.2 × 266200 is 53240, not 53240.000001."""
    return math.ceil(Fraction(repr(fraction)) * remaining)


def lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k lowest scores; ties go to the lower index (a stable sort), so
    the same scores always give the same mask."""
    return torch.sort(scores, stable=True).indices[:k]


def survivors(
    scores: list[torch.Tensor], masks: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The surviving weights' scores flattened in layer order (float64 on the CPU, so
    every caller sorts the same numbers the same way), and each layer's surviving
    positions."""
    alive = [m.reshape(-1).nonzero().squeeze(1) for m in masks]
    values = torch.cat(
        [
            s.detach().reshape(-1)[a.to(s.device)].to(torch.float64).cpu()
            for s, a in zip(scores, alive, strict=True)
        ]
    )
    return values, alive


def remove_lowest(values: torch.Tensor, alive: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """The one rule of IMP, pruning at initialization and Gem-Miner's prune events:
    each layer's positions of the `n` lowest `values` across layers (`survivors`'
    output), exactly n, ties in layer order and then position."""
    chosen = lowest(values, n)
    gone, start = [], 0
    for a in alive:
        here = chosen[(chosen >= start) & (chosen < start + len(a))] - start
        gone.append(a[here.to(a.device)])
        start += len(a)
    return gone


def select(
    scores: dict[str, torch.Tensor],
    mask: Mask,
    fraction: float,
    scope: str,
    ignore: list[str],
    count_ignored: bool = True,
) -> Mask:
    """Level L's mask from level L-1's: never revives a pruned weight, never touches
    a layer in `ignore`."""
    names = [n for n in mask if n not in ignore]
    new = {n: m.clone() for n, m in mask.items()}
    groups = [[n] for n in names] if scope == "layerwise" else [names]
    for group in groups:
        values, alive = survivors([scores[n] for n in group], [mask[n] for n in group])
        counted = len(values)
        if scope == "global" and count_ignored:
            counted += sum(int(mask[n].sum()) for n in mask if n in ignore)
        k = count_to_prune(fraction, counted)
        if k > len(values):
            raise UserError(
                f"pruning {fraction} of {counted} surviving weights removes {k}, but only "
                f"{len(values)} survive outside --pruning_layers_to_ignore"
            )
        for n, gone in zip(group, remove_lowest(values, alive, k), strict=True):
            new[n].view(-1)[gone] = False
    return new


def kept_count(
    mask: Mask, fraction: float, scope: str, ignore: list[str], count_ignored: bool = True
) -> int:
    """How many weights `select` keeps in total, from the counts alone (the lottery
    checks every level's mask against it)."""
    names = [n for n in mask if n not in ignore]
    alive = {n: int(mask[n].sum()) for n in mask}
    if scope == "layerwise":
        removed = sum(count_to_prune(fraction, alive[n]) for n in names)
    else:
        counted = sum(alive[n] for n in (mask if count_ignored else names))
        removed = count_to_prune(fraction, counted)
    return sum(alive.values()) - removed
