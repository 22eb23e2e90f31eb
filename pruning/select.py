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
from collections.abc import Callable
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
    """Each layer's positions of the `n` lowest `values` across layers (`survivors`'
    output), exactly n, ties in layer order and then position: the plain statement of
    the rule, with a float64 copy of every score. IMP, pruning at initialization and
    Gem-Miner's prune events use `lowest_positions`, the same weights without that copy;
    this is what its tests and benchmarks/select_memory.py hold it against."""
    chosen = lowest(values, n)
    gone, start = [], 0
    for a in alive:
        here = chosen[(chosen >= start) & (chosen < start + len(a))] - start
        gone.append(a[here.to(a.device)])
        start += len(a)
    return gone


# The integer type of each float type's bits: a float's bits, the negatives' magnitude bits
# flipped, order the floats as the integers order (a key; NaN aside).
_BITS = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def _key(value: torch.Tensor) -> int:
    bits = int(value.reshape(()).cpu().view(_BITS[value.dtype]))
    return bits if bits >= 0 else bits ^ (2 ** (8 * value.element_size() - 1) - 1)


def _value(key: int, dtype: torch.dtype) -> torch.Tensor:
    bits = key if key >= 0 else key ^ (2 ** (torch.finfo(dtype).bits - 1) - 1)
    return torch.tensor(bits, dtype=_BITS[dtype]).view(dtype)


# Survivors drawn to bracket the threshold before the exact pass (0: bisection only).
SAMPLE = 2**18


def _bracketed(
    flat: list[torch.Tensor], alive: list[torch.Tensor], n: int, total: int
) -> torch.Tensor | None:
    """The n-th lowest survivor (1 ≤ n ≤ total) in three passes, or None where the sample
    misses it: a sample's quantiles around rank n bracket it, one pass counts the survivors
    below the bracket and gathers those inside (about 1% of them), and their stable sort
    gives it exactly. None where the bracket misses n or holds too many (wide ties)."""
    g = torch.Generator().manual_seed(0)
    numel = sum(len(s) for s in flat)
    drawn = []
    for s, a in zip(flat, alive, strict=True):
        at = torch.randint(0, max(len(s), 1), (min(SAMPLE, numel) * len(s) // numel,), generator=g)
        at = at.to(s.device)
        drawn.append(s[at][a[at]].cpu())
    sample = torch.cat(drawn).sort().values
    if not len(sample):
        return None
    middle, width = n / total * len(sample), 2 * math.sqrt(len(sample)) + 2
    low = sample[int(middle - width)] if middle - width >= 0 else sample.new_tensor(-math.inf)
    high = sample[int(middle + width)] if middle + width < len(sample) else None
    below, inside = 0, []
    for s, a in zip(flat, alive, strict=True):
        lo = s < low.to(s.device)
        below += int(lo.logical_and(a).sum())
        within = lo.logical_not_().logical_and_(a)
        if high is not None:
            within.logical_and_(s <= high.to(s.device))
        inside.append(s[within].cpu())
    between = torch.cat(inside)
    if not below < n <= below + len(between) or len(between) > total // 16 + 2**16:
        return None
    return torch.sort(between, stable=True).values[n - below - 1]


def lowest_positions(
    scores: list[torch.Tensor], masks: list[torch.Tensor], n: int
) -> list[torch.Tensor]:
    """Each layer's flat positions (ascending, int64, on its mask's device) of the `n`
    lowest surviving scores across layers: the same weights as `remove_lowest(*survivors(
    scores, masks), n)`, ties in layer order and then position, -0.0 equal to 0.0, NaN
    above everything (as torch.sort puts it).

    No copy of every score is made: the n-th lowest survivor t comes from `_bracketed`
    (a few passes layer by layer where the scores are, one sort of about 1% of them), or
    where that misses (wide ties), from a bisection over the floats' ordered bit patterns
    counting survivors ≤ a value (32 passes in float32, 64 in float64). Then every
    survivor < t goes, and the first survivors == t."""
    if len(scores) != len(masks):
        raise ValueError(f"{len(scores)} score tensors for {len(masks)} masks")
    dtype = scores[0].dtype if scores else torch.float64
    if any(s.dtype != dtype for s in scores) or dtype not in _BITS:
        dtype = torch.float64  # survivors' common type: exact for every float score
    flat = [s.detach().reshape(-1).to(dtype) for s in scores]
    alive = [m.reshape(-1).to(s.device, torch.bool) for s, m in zip(flat, masks, strict=True)]
    total = sum(int(a.sum()) for a in alive)
    if not 0 <= n <= total:
        raise ValueError(f"cannot remove {n} of {total} surviving weights")

    def count(chosen: Callable[[torch.Tensor], torch.Tensor]) -> int:
        return sum(int(chosen(s).logical_and_(a).sum()) for s, a in zip(flat, alive, strict=True))

    def number(s: torch.Tensor) -> torch.Tensor:
        return ~torch.isnan(s)

    if n > count(number):  # every number goes, then the first NaNs
        lower, tie = number, torch.isnan
    else:
        t = _bracketed(flat, alive, n, total) if n and SAMPLE else None
        # Else the smallest key whose value v has at least n survivors ≤ v: its value is t.
        low = _key(torch.tensor(-math.inf, dtype=dtype))
        high = _key(torch.tensor(math.inf, dtype=dtype))
        while t is None and low < high:
            v = _value((low + high) // 2, dtype)
            if count(lambda s, v=v: s <= v.to(s.device)) >= n:
                high = (low + high) // 2
            else:
                low = (low + high) // 2 + 1
        t = _value(low, dtype) if t is None else t

        def lower(s: torch.Tensor) -> torch.Tensor:
            return s < t.to(s.device)

        def tie(s: torch.Tensor) -> torch.Tensor:
            return s == t.to(s.device)

    # Every survivor below t goes; of those equal to t, the first in layer order, then
    # position, until n are gone.
    gone = [lower(s).logical_and_(a).nonzero().squeeze(1) for s, a in zip(flat, alive, strict=True)]
    rest = n - sum(len(here) for here in gone)
    for i, (s, a, m) in enumerate(zip(flat, alive, masks, strict=True)):
        equal = tie(s).logical_and_(a).nonzero().squeeze(1)[:rest]
        rest -= len(equal)
        gone[i] = torch.cat([gone[i], equal]).sort().values.to(m.device)
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
        alive = sum(int(mask[n].sum()) for n in group)
        counted = alive
        if scope == "global" and count_ignored:
            counted += sum(int(mask[n].sum()) for n in mask if n in ignore)
        k = count_to_prune(fraction, counted)
        if k > alive:
            raise UserError(
                f"pruning {fraction} of {counted} surviving weights removes {k}, but only "
                f"{alive} survive outside --pruning_layers_to_ignore"
            )
        gone_by_layer = lowest_positions([scores[n] for n in group], [mask[n] for n in group], k)
        for n, gone in zip(group, gone_by_layer, strict=True):
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
