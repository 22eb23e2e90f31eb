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
    if scope == "layerwise":
        groups = [[n] for n in names]
    else:
        groups = [names]
    for group in groups:
        # The surviving weights' scores, flattened in a fixed layer order.
        alive = [mask[n].reshape(-1).nonzero().squeeze(1) for n in group]
        values = torch.cat(
            [
                scores[n].reshape(-1)[a].to(torch.float64).cpu()
                for n, a in zip(group, alive, strict=True)
            ]
        )
        counted = len(values)
        if scope == "global" and count_ignored:
            counted += sum(int(mask[n].sum()) for n in mask if n in ignore)
        k = count_to_prune(fraction, counted)
        if k > len(values):
            raise UserError(
                f"pruning {fraction} of {counted} surviving weights removes {k}, but only "
                f"{len(values)} survive outside --pruning_layers_to_ignore"
            )
        chosen = lowest(values, k)
        offsets = torch.tensor([0] + [len(a) for a in alive]).cumsum(0)
        for i, n in enumerate(group):
            here = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
            flat = new[n].view(-1)
            flat[alive[i][here.to(alive[i].device)]] = False
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
