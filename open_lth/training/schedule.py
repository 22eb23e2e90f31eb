"""The optimizer and its learning-rate schedule, both built from TrainingHparams.

The learning rate is a pure function of the iteration, so a resumed run needs no
scheduler state to continue exactly where it stopped (and a rewound run continues
the schedule from step k)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from open_lth.foundations.hparams import TrainingHparams
from open_lth.foundations.step import Step


def build_optimizer(
    hparams: TrainingHparams, params: list[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    decay = hparams.weight_decay or 0.0
    # Fused kernels update every tensor in one call: on small models such as LeNet the
    # per-tensor Python loop of the default implementation costs as much as the matmuls.
    if hparams.optimizer_name == "sgd":
        return torch.optim.SGD(
            params,
            lr=hparams.lr,
            momentum=hparams.momentum,
            weight_decay=decay,
            nesterov=hparams.nesterov_momentum,
            fused=True,
        )
    return torch.optim.Adam(params, lr=hparams.lr, weight_decay=decay, fused=True)


def lr_schedule(hparams: TrainingHparams, iterations_per_epoch: int) -> Callable[[int], float]:
    """iteration -> learning rate: linear warmup, then ×gamma at each milestone."""
    milestones = []
    if hparams.milestone_steps:
        parts = hparams.milestone_steps.split(",")
        milestones = [Step.from_str(p, iterations_per_epoch).iteration for p in parts]
    warmup = 0
    if hparams.warmup_steps:
        warmup = Step.from_str(hparams.warmup_steps, iterations_per_epoch).iteration

    def lr(iteration: int) -> float:
        value = hparams.lr * (hparams.gamma or 1.0) ** sum(iteration >= m for m in milestones)
        if iteration < warmup:
            value *= (iteration + 1) / warmup
        return value

    return lr
