"""Fisher pruning (Theis et al. 2018; the study's section 2): score_k = ½·w_k²·F̂_kk, with
F̂_kk = (1/N)·Σₙ g_nk² the empirical Fisher diagonal from per-example gradients g_n of the
cross-entropy at the true label.

The per-example squares are computed batched, never one backward per example: with the
loss summed over a batch (and BatchNorm in eval mode, so examples do not interact), row n
of a layer's output gradient δ is example n's own, and its weight gradient is δ_n a_nᵀ
for the layer input a_n. For a Linear layer Σₙ (δ_n a_nᵀ)² = (δ²)ᵀ(a²), one matmul.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import Hparams, hp
from open_lth.lottery.strategy import PruneContext
from open_lth.pruning.base import ScoreStrategy
from open_lth.training.data import DeviceData

# Bytes that the per-example tensors of one conv layer may take at once; the batch is split
# into chunks that fit. On a GPU a quarter of its free memory, where that is more.
MEMORY_BUDGET = 256 * 2**20

# How a conv layer's per-example weight gradients are formed (all give the same squares):
# shifted: stride-1 convs as k² batched matmuls over shifted views of the padded input, no
#          copy of it (strided convs as unfold);
# unfold:  the input's k² windows copied out (im2col), one batched matmul;
# grouped: the weight gradient of a convolution whose groups are the examples (one cuDNN or
#          oneDNN call, no im2col).
# "auto": shifted on a CPU; on a GPU the fastest for the layer's shapes, timed once per
# process (like cudnn.benchmark), or unfold when deterministic algorithms are asked for.
CONV_METHODS = ("shifted", "unfold", "grouped")
# Input values a Fisher batch holds at most: 1,000 CIFAR-10 images (MNIST and CIFAR-10
# runs keep their batch of 1,000, and so their numbers).
BATCH_ELEMENTS = 1000 * 3 * 32 * 32
_TUNED: dict[tuple, str] = {}


@dataclass
class FisherHparams(Hparams):
    fisher_examples: int | None = hp(
        None, "training examples used for the empirical Fisher (default: the whole training set)"
    )

    _name: ClassVar[str] = "Fisher Pruning Hyperparameters"
    _description: ClassVar[str] = "How the empirical Fisher diagonal is estimated."

    def validate(self) -> None:
        n = self.fisher_examples
        if n is not None and n <= 0:
            raise UserError(f"--fisher_examples must be a positive integer, got {n}")


def _check_supported(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(f"fisher: {name} has groups={layer.groups}; only 1 is supported")
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ValueError(f"fisher: {name} needs integer zero padding for unfold")


def _chunked_squares(delta: torch.Tensor, cols: torch.Tensor, chunk: int) -> torch.Tensor:
    """Σₙ (δ_n cols_nᵀ)² for δ (B, out, L) and cols (B, K, L): (out, K)."""
    total = None
    for start in range(0, len(delta), chunk):
        g = torch.bmm(delta[start : start + chunk], cols[start : start + chunk].transpose(1, 2))
        part = g.square_().sum(0)
        total = part if total is None else total.add_(part)
    return total


def _unfold(conv: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Σₙ g_n² with g_n = δ_n cols_nᵀ, cols_n example n's k² input windows (B, C_in·k², L),
    copied out of strided views of the padded input (F.unfold does the same, slower)."""
    (kh, kw), (dh, dw), (ph, pw) = conv.kernel_size, conv.dilation, conv.padding
    sh, sw = conv.stride
    b, c_out, h_out, w_out = delta.shape
    a = F.pad(a, (pw, pw, ph, ph))
    windows = a.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)
    windows = windows[:, :, :h_out, :w_out, ::dh, ::dw]  # (B, C_in, H_out, W_out, kh, kw)
    cols = windows.permute(0, 1, 4, 5, 2, 3).reshape(b, -1, h_out * w_out)
    g = torch.bmm(delta.reshape(b, c_out, -1), cols.transpose(1, 2))
    return g.square_().sum(0).view_as(conv.weight)


def _shifted(conv: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Stride 1 only. Flattened over rows of the padded width W_p, the window of kernel
    position (i, j) is the padded input shifted by i·d_h·W_p + j·d_w: a view, not a copy. δ,
    padded with zero columns to W_p, multiplies it, so the columns that wrap into the next
    row count nothing. One batched matmul per kernel position."""
    (kh, kw), (dh, dw), (ph, pw) = conv.kernel_size, conv.dilation, conv.padding
    b, c_out, h_out, w_out = delta.shape
    c_in = a.shape[1]
    a = F.pad(a, (pw, pw, ph, ph)).contiguous()
    h_p, w_p = a.shape[2:]
    a = a.view(b, c_in, h_p * w_p)
    # The last row's zero tail is dropped, so the last window ends at the input's end.
    length = (h_out - 1) * w_p + w_out
    d = F.pad(delta, (0, w_p - w_out)).contiguous().view(b, c_out, h_out * w_p)[:, :, :length]
    g = a.new_empty(kh * kw, b, c_out, c_in)
    for i in range(kh):
        for j in range(kw):
            shift = i * dh * w_p + j * dw
            torch.bmm(d, a[:, :, shift : shift + length].transpose(1, 2), out=g[i * kw + j])
    squares = g.square_().sum(1)  # (kh·kw, C_out, C_in)
    return squares.permute(1, 2, 0).reshape(conv.weight.shape)


def _grouped(conv: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Examples as groups: the input (1, B·C_in, H, W) and output gradient (1, B·C_out, ...)
    of a conv with B groups, whose weight gradient (B·C_out, C_in, kh, kw) is g_n stacked."""
    b, c_in = a.shape[:2]
    c_out = delta.shape[1]
    g = torch.nn.grad.conv2d_weight(
        a.reshape(1, b * c_in, *a.shape[2:]),
        (b * c_out, c_in, *conv.kernel_size),
        delta.reshape(1, b * c_out, *delta.shape[2:]),
        conv.stride,
        conv.padding,
        conv.dilation,
        groups=b,
    )
    return g.view(b, *conv.weight.shape).square_().sum(0)


_CONV = {"shifted": _shifted, "unfold": _unfold, "grouped": _grouped}


def _conv_method(conv: nn.Conv2d, method: str) -> Callable[..., torch.Tensor]:
    if method == "shifted" and conv.stride != (1, 1):
        method = "unfold"
    return _CONV[method]


def _fastest(conv: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor) -> str:
    """The quickest method for these shapes on this GPU, kept for the process: each is run
    up to three times (the first a warm-up) and its quickest run counts; one far slower than
    the best at its first run, or failing (e.g. out of memory), is passed over."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    key = (a.device, a.dtype, a.shape, a.stride(), delta.shape, delta.stride(), flags,
           conv.kernel_size, conv.stride, conv.padding, conv.dilation)  # fmt: skip
    if key in _TUNED:
        return _TUNED[key]
    seconds: dict[str, float] = {}
    for method in CONV_METHODS:
        if method == "shifted" and conv.stride != (1, 1):
            continue  # it would be unfold
        fn = _conv_method(conv, method)
        runs = []
        try:
            for _ in range(3):
                torch.cuda.synchronize(a.device)
                start = time.perf_counter()
                fn(conv, a, delta)
                torch.cuda.synchronize(a.device)
                runs.append(time.perf_counter() - start)
                if runs[0] > 10 * min(seconds.values(), default=float("inf")):
                    break
        except RuntimeError:
            continue
        seconds[method] = min(runs[1:] or runs)
    _TUNED[key] = min(seconds, key=seconds.get, default="unfold")
    return _TUNED[key]


def _conv_squares(
    conv: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor, method: str
) -> torch.Tensor:
    b, c_out = delta.shape[:2]
    k = conv.weight[0].numel()
    locations = delta[0, 0].numel()
    # Per example: its gradient (C_out·k) and at most its unfolded input (k·L), the largest
    # of the methods' own tensors.
    per_example = a.element_size() * k * (locations + c_out)
    budget = MEMORY_BUDGET
    if a.device.type == "cuda":
        budget = max(budget, torch.cuda.mem_get_info(a.device)[0] // 4)
    chunk = max(1, budget // per_example)
    if method == "auto":
        if a.device.type != "cuda":
            method = "shifted"
        elif torch.are_deterministic_algorithms_enabled():
            method = "unfold"
        else:
            method = _fastest(conv, a[:chunk], delta[:chunk])
    fn = _conv_method(conv, method)
    total = None
    for start in range(0, b, chunk):
        part = fn(conv, a[start : start + chunk], delta[start : start + chunk])
        total = part if total is None else total.add_(part)
    return total


def _linear_squares(a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    if a.dim() == 2:
        return delta.square().T @ a.square()
    # Extra dimensions (B, ..., in): example n's gradient sums over them, so square
    # the per-example products instead.
    b = len(a)
    a = a.reshape(b, -1, a.shape[-1]).transpose(1, 2)
    delta = delta.reshape(b, -1, delta.shape[-1]).transpose(1, 2)
    per_example = a.element_size() * delta.shape[1] * a.shape[1]
    return _chunked_squares(delta, a, max(1, MEMORY_BUDGET // per_example))


def batch_for(data: DeviceData) -> int:
    """Examples a forward takes: 1,000 up to CIFAR-10's size, fewer for larger images, so
    that a batch holds no more input than 1,000 CIFAR-10 images (ImageNet at 224×224: 20;
    1,000 would hold a ResNet-50's activations of 1,000 images at once). The shape of
    `data.images` says it (a streamed split's is a shape only), with nothing decoded."""
    return max(1, min(1000, BATCH_ELEMENTS // math.prod(data.images.shape[1:])))


def fisher_diagonal(
    model: nn.Module,
    data: DeviceData,
    index: torch.Tensor | None = None,
    batch_size: int | None = None,
    conv_method: str = "auto",
) -> dict[str, torch.Tensor]:
    """F̂ = (1/N)·Σₙ g_n² over the examples at `index` (default: all of `data`, unaugmented)
    for the weight of every Conv2d and Linear layer (e.g. 'fc.weight'), in float32.

    The model runs in eval mode (restored afterwards), so BatchNorm uses its running
    statistics and each example's gradient depends on that example alone. `conv_method`:
    "auto" or one of CONV_METHODS, how conv layers form their per-example gradients.
    `batch_size`: examples a forward takes (default `batch_for(data)`).
    """
    batch_size = batch_size or batch_for(data)
    if conv_method != "auto" and conv_method not in CONV_METHODS:
        raise ValueError(
            f"fisher: conv_method {conv_method!r}; known: auto, {', '.join(CONV_METHODS)}"
        )
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    for name, layer in layers.items():
        _check_supported(name, layer)
    if index is None:
        index = torch.arange(len(data), device=data.device)
    index = index.to(data.device)
    if len(index) == 0:
        raise ValueError("fisher: no examples")
    # Float64 sums across batches: N can be large and every term is positive.
    sums = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in layers.items()}
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor, int]]] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen.setdefault(name, []).append((inputs[0].detach(), output, output._version))

        return hook

    handles = [layer.register_forward_hook(keep(name)) for name, layer in layers.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            for start in range(0, len(index), batch_size):
                x, y = data.batch(index[start : start + batch_size])
                seen.clear()
                loss = F.cross_entropy(model(x), y, reduction="sum")
                names = list(seen)
                for name in names:
                    if len(seen[name]) != 1:
                        raise ValueError(f"fisher: {name} runs {len(seen[name])} times per forward")
                    _, output, version = seen[name][0]
                    # Else autograd would differentiate the modified tensor instead.
                    if output._version != version:
                        raise ValueError(f"fisher: an in-place operation changes {name}'s output")
                # Gradients of the layer outputs only: no weight gradients are formed,
                # and the parameters' .grad is left as it was.
                outputs = [seen[name][0][1] for name in names]
                deltas = torch.autograd.grad(loss, outputs, allow_unused=True)
                for name, delta in zip(names, deltas, strict=True):
                    if delta is None:  # the layer does not reach the loss
                        continue
                    a = seen[name][0][0]
                    layer = layers[name]
                    if isinstance(layer, nn.Conv2d):
                        squares = _conv_squares(layer, a, delta, conv_method)
                    else:
                        squares = _linear_squares(a, delta)
                    sums[name] += squares
                seen.clear()  # free the batch's activations before the next forward
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {f"{n}.weight": (s / len(index)).float() for n, s in sums.items()}


@registries.strategies.register("fisher")
class FisherStrategy(ScoreStrategy):
    hparams_type = FisherHparams
    description = "½·w²·(empirical Fisher diagonal), from per-example gradients"

    def score(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        hparams = self.hparams if self.hparams is not None else FisherHparams()
        n, k = len(ctx.train_data), hparams.fisher_examples
        index = None
        if k is not None and k < n:
            g = torch.Generator().manual_seed(ctx.seed)
            index = torch.randperm(n, generator=g)[:k]
        fisher = fisher_diagonal(ctx.model, ctx.train_data, index)
        weights = dict(ctx.model.named_parameters())
        # Pruned weights are 0 and so score 0; the selector never revives them anyway.
        return {
            name: 0.5 * weights[name].detach().float().square() * fisher[name] for name in ctx.mask
        }
