"""One optimizer step of the K copies a trainer holds: eager, or replayed from a CUDA graph.

A ResNet-20 or LeNet step is far too small to fill a GPU: the time goes to launching a few
hundred kernels from Python. On CUDA the step (forward, backward, gradient masking,
optimizer step, running sums of loss and accuracy) is captured once in a CUDA graph and
replayed, one launch per step. The learning rate is a device tensor filled before each
replay. A batch of data without augmentation is drawn inside the step (`source`,
open_lth.training.data.BatchesInStep: the host writes the step's position); an augmented
batch (its crops and flips reseed a generator per copy and step) is prepared eagerly and
copied into static input buffers. Either way a graphed run sees exactly the batches and
schedule of an eager one.

`StaticStep(capture=False)` runs the same static-buffer code eagerly; on a CPU it is the
test that guards the graph path's logic (it must equal `EagerStep`).

With --fp16 a `torch.amp.GradScaler` scales the loss, and the fused SGD and Adam take
its scale and found-inf flag as device tensors: they unscale, and skip a step whose
gradients are not finite (Adam's step count too), inside the kernel; `update` halves
or grows the scale with `torch._amp_update_scale_`, in place. Nothing reads a value
back to the host, so the scaled step is captured in the graph like any other.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from open_lth.foundations.errors import UserError, note_once
from open_lth.training.evaluation import per_copy_loss
from open_lth.training.precision import autocast, layout
from open_lth.training.stacked import Lanes, split_output

GRAPH_MODES = ("auto", "on", "off")
# Eager steps before capture: they create the optimizer state (SGD's momentum buffers are
# made by the first step) and run cuDNN/cuBLAS's lazy set-up outside the graph.
WARMUP_STEPS = 3


@dataclass
class StepParts:
    """What a step reads and updates. `loss_sum` (K, float64) and `correct` (K, int64)
    accumulate per copy until the next evaluation reads and zeroes them."""

    net: torch.nn.Module  # the parameters the optimizer holds
    forward: torch.nn.Module  # `net`, or torch.compile(net)
    optimizer: torch.optim.Optimizer
    masked: list[tuple[torch.nn.Parameter, torch.Tensor]]
    copies: int
    bf16: bool
    loss_sum: torch.Tensor
    correct: torch.Tensor
    # --fp16: float16 autocast (on CUDA) and this loss scaler (one for the K copies).
    scaler: torch.amp.GradScaler | None = None
    # Draws the batch inside the step when the caller passes none (x, y = None).
    source: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
    # A Lanes network's CUDA streams, one a lane (made at its first step).
    streams: list = field(default_factory=list)
    # In-place work after the optimizer step, inside the step (so in its CUDA graph):
    # Gem-Miner clamps its scores to [0, 1].
    after_step: Callable[[], None] | None = None


Batch = torch.Tensor | None


def _forward_backward(
    parts: StepParts,
    net: torch.nn.Module,
    copies: int,
    x: torch.Tensor,
    y: torch.Tensor,
    cache: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (N, K, classes) and mean losses (K) of `net`'s K copies; their gradients."""
    forward = parts.forward if net is parts.net else net
    fp16 = parts.scaler is not None
    with autocast(x.device, parts.bf16, cache, fp16):
        output = split_output(forward(layout(net, x)), copies).float()
        losses = per_copy_loss(output, y).mean(0)
    # Summed over copies: each copy's gradient is that of its own mean loss.
    total = losses.sum()
    (parts.scaler.scale(total) if fp16 else total).backward()
    return output.detach(), losses.detach()


def _lanes_forward_backward(
    parts: StepParts, x: torch.Tensor, y: torch.Tensor, cache: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_forward_backward` lane by lane (open_lth.training.stacked.Lanes), each lane on its
    own CUDA stream forked from the current one and joined back before the optimizer
    step: in a CUDA graph, L independent branches. A lane's backward runs on its
    forward's stream, so no tensor crosses streams but the batch (read after the fork)
    and the lanes' outputs and gradients (read after the join). On a CPU, in turn."""
    net, n = parts.net, len(parts.net.lanes)
    main = torch.cuda.current_stream(x.device) if x.is_cuda else None
    if main is not None and not parts.streams:
        parts.streams = [torch.cuda.Stream(x.device) for _ in range(n)]
    results = []
    for i, (lane, xl, yl) in enumerate(zip(net.lanes, x.chunk(n, 1), y.chunk(n, 1), strict=True)):
        on_lane = contextlib.nullcontext()
        if main is not None:
            parts.streams[i].wait_stream(main)  # fork
            on_lane = torch.cuda.stream(parts.streams[i])
        with on_lane:
            results.append(_forward_backward(parts, lane, net.per_lane, xl, yl, cache))
    if main is not None:
        for stream in parts.streams:
            main.wait_stream(stream)  # join
    outputs, losses = zip(*results, strict=True)
    return torch.cat(outputs, 1), torch.cat(losses)


def _body(parts: StepParts, x: Batch, y: Batch, cache: bool = True) -> None:
    if x is None:
        x, y = parts.source()
    if isinstance(parts.net, Lanes):
        output, losses = _lanes_forward_backward(parts, x, y, cache)
    else:
        output, losses = _forward_backward(parts, parts.net, parts.copies, x, y, cache)
    if parts.masked:
        # Pruned weights get no gradient, so no momentum or Adam state builds up and
        # they stay exactly zero through the optimizer step.
        grads = [p.grad for p, _ in parts.masked]
        torch._foreach_mul_(grads, [m for _, m in parts.masked])
    if parts.scaler is None:
        parts.optimizer.step()
    else:
        # A step with a non-finite gradient changes neither the weights nor the
        # optimizer's state; the scale halves (and grows after 2,000 finite steps).
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    if parts.after_step is not None:
        parts.after_step()
    parts.loss_sum += losses.double()
    parts.correct += (output.argmax(-1) == y).sum(0)


class EagerStep:
    """The plain step: a float learning rate in the optimizer, fresh gradients each time."""

    def __init__(self, parts: StepParts) -> None:
        self.parts = parts

    def __call__(self, x: Batch, y: Batch, lr: float) -> None:
        for group in self.parts.optimizer.param_groups:
            group["lr"] = lr
        self.parts.optimizer.zero_grad(set_to_none=True)
        _body(self.parts, x, y)


class StaticStep:
    """The step on static buffers with the learning rate in a device tensor; with
    `capture`, recorded in a CUDA graph after `WARMUP_STEPS` eager steps and replayed."""

    def __init__(self, parts: StepParts, capture: bool) -> None:
        self.parts = parts
        self.capture = capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        device = parts.loss_sum.device
        # float32, as the fused optimizers read a tensor learning rate.
        self.lr = torch.zeros((), dtype=torch.float32, device=device)
        for group in parts.optimizer.param_groups:
            group["lr"] = self.lr
        set_capturable(parts.optimizer, capture)

    def __call__(self, x: Batch, y: Batch, lr: float) -> None:
        """One step on the batch (x, y), or (None, None) on the batch `parts.source`
        draws inside the step; a step object keeps to one of the two."""
        if x is not None:
            if self.x is None:
                self.x = torch.empty_like(layout(self.parts.net, x))
                self.y = torch.empty_like(y)
            self.x.copy_(x)
            self.y.copy_(y)
        self.lr.fill_(lr)
        if self.graph is not None:
            self.graph.replay()
        elif not self.capture:
            self.parts.optimizer.zero_grad(set_to_none=True)
            _body(self.parts, self.x, self.y)
        elif self.warm < WARMUP_STEPS:
            self._warmup_step()
        else:
            self._capture()
            self.graph.replay()  # capture records the step; replay runs it

    def _warmup_step(self) -> None:
        # On a side stream, as PyTorch's whole-network capture recipe does, so that lazy
        # initialization happens outside the capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This instance was constructed with capturable")
            self.parts.optimizer.zero_grad(set_to_none=True)
            _body(self.parts, self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        self.warm += 1

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        # Gradients allocated inside the capture live in the graph's pool, and every
        # replay writes them in place.
        self.parts.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            # autocast's weight cache would hold tensors from outside the graph's pool.
            _body(self.parts, self.x, self.y, cache=False)
        self.graph = graph


def set_capturable(optimizer: torch.optim.Optimizer, on: bool) -> None:
    """Adam's flag for a step inside a CUDA graph (its step count then stays on the GPU);
    SGD has none and needs none."""
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = on


def make_step(
    parts: StepParts, mode: str, device: torch.device, model_name: str
) -> EagerStep | FallbackStep:
    """The step for `--cuda_graphs`: auto replays a CUDA graph on CUDA (falling back to
    eager, with a note, for a model that cannot be captured) and is eager elsewhere."""
    check_mode(mode, device)
    if mode == "off" or device.type != "cuda":
        return EagerStep(parts)
    if device.index is not None:
        torch.cuda.set_device(device)  # graphs and their streams belong to the current GPU
    return FallbackStep(StaticStep(parts, capture=True), mode, model_name)


def replays(step: object) -> bool:
    """Whether `step` is (or may become) a replayed graph, so the batch is best drawn
    inside it."""
    return isinstance(step, StaticStep | FallbackStep)


def check_mode(mode: str, device: torch.device) -> None:
    if mode not in GRAPH_MODES:
        raise UserError(f"--cuda_graphs must be one of {', '.join(GRAPH_MODES)}, got '{mode}'")
    if mode == "on" and device.type != "cuda":
        raise UserError(f"--cuda_graphs=on needs a CUDA device; this run is on {device}")


class FallbackStep:
    """A graphed step that turns eager for good if its capture fails: with `auto` it says
    so once and goes on; with `on` the failure is an error."""

    def __init__(self, step: StaticStep, mode: str, model_name: str) -> None:
        self.step = step
        self.mode = mode
        self.model_name = model_name
        self.eager: EagerStep | None = None

    def __call__(self, x: Batch, y: Batch, lr: float) -> None:
        if self.eager is not None:
            self.eager(x, y, lr)
            return
        try:
            self.step(x, y, lr)
        except Exception as e:
            if self.step.graph is not None or self.step.warm < WARMUP_STEPS:
                raise  # not a capture failure
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if self.mode == "on":
                raise UserError(
                    f"--cuda_graphs=on: {self.model_name} cannot be captured in a CUDA graph "
                    f"({reason}); use --cuda_graphs=auto or off"
                ) from None
            note_once(
                f"graphs {self.model_name}",
                f"{self.model_name} cannot be captured in a CUDA graph ({reason}); "
                "training without graphs",
            )
            self._to_eager()
            self.eager(x, y, lr)

    def _to_eager(self) -> None:
        parts = self.step.parts
        parts.optimizer.zero_grad(set_to_none=True)
        set_capturable(parts.optimizer, False)
        if parts.scaler is not None:
            # The failed capture may have left the scaler between its step and update;
            # setting the scale it holds clears that and keeps the scale.
            parts.scaler.update(parts.scaler.get_scale())
        self.eager = EagerStep(parts)
