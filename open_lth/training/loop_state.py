"""What the training loop carries between steps (all of it in the checkpoint), and the
evaluation that logs it: each copy's train loss and accuracy since the last evaluation,
its test loss and accuracy, the learning rate and the wall-clock time."""

from __future__ import annotations

import torch

from open_lth.foundations import distributed
from open_lth.foundations.hparams import TrainingHparams
from open_lth.training.data import DeviceData
from open_lth.training.evaluation import evaluate_copies
from open_lth.training.metrics import MetricLogger


class LoopState:
    """What the loop carries between steps, all of it in the checkpoint. The step adds
    each copy's loss and correct count to `loss_sum` and `correct` in place. `wall` is
    this process's training time; each copy adds the time it had when resumed."""

    def __init__(self, device: torch.device, copies: int) -> None:
        self.iteration = 0
        self.wall = 0.0
        self.wall_before = [0.0] * copies
        self.loss_sum = torch.zeros(copies, device=device, dtype=torch.float64)
        self.correct = torch.zeros(copies, device=device, dtype=torch.int64)
        self.seen = 0
        self.steps = 0
        self.diverged: dict[int, str] = {}
        # The last evaluation's, of the live copies: what the progress shows.
        self.last_train_losses: list[float] = []
        self.last_test_accuracies: list[float] = []
        self.scaler: torch.amp.GradScaler | None = None

    def dump(self, copy: int | None = None) -> dict:
        """The whole state (one job), or one copy's as if it ran alone."""
        one = slice(None) if copy is None else slice(copy, copy + 1)
        out = {
            "iteration": self.iteration,
            "wall_seconds": self.wall_before[copy or 0] + self.wall,
            "loss_sum": self.loss_sum[one],
            "correct": self.correct[one],
            "seen": self.seen,
            "steps": self.steps,
        }
        if self.scaler is not None:  # the pack's one scale, in each copy's file
            out["grad_scaler"] = self.scaler.state_dict()
        return out

    def load(self, ckpts: list[dict]) -> None:
        """From one checkpoint (one job) or one per copy (a pack)."""
        first = ckpts[0]
        self.iteration = int(first["iteration"])
        walls = [float(c["wall_seconds"]) for c in ckpts]
        self.wall_before = (
            walls if len(walls) == len(self.wall_before) else [walls[0]] * len(self.wall_before)
        )
        self.loss_sum.copy_(torch.cat([c["loss_sum"].reshape(-1) for c in ckpts]))
        self.correct.copy_(torch.cat([c["correct"].reshape(-1) for c in ckpts]))
        self.seen = int(first["seen"])
        self.steps = int(first["steps"])
        saved = [c["grad_scaler"] for c in ckpts if "grad_scaler" in c]
        if self.scaler is not None and saved:
            # Runs saved by different packs may hold different scales: the pack goes on
            # from the smallest, the side that overflows less. One pack's agree.
            low = min(saved, key=lambda d: (d["scale"], d["_growth_tracker"]))
            self.scaler.load_state_dict(low)


def log_evaluation(
    net: torch.nn.Module,
    test_data: DeviceData,
    hparams: TrainingHparams,
    state: LoopState,
    loggers: list[MetricLogger],
    lr: float,
) -> None:
    it = state.iteration
    k = len(loggers)
    live = [j for j in range(k) if j not in state.diverged]
    if state.steps:
        # Means over the steps since the last evaluation, on augmented batches; under
        # torchrun, rank 0 holds the sums of every rank's mean losses.
        state.seen = distributed.gather_sums([state.loss_sum, state.correct], state.seen)
        train_loss = (state.loss_sum / (state.steps * distributed.world_size())).tolist()
        train_accuracy = (state.correct.double() / state.seen).tolist()
        state.last_train_losses = [train_loss[j] for j in live]
        for j in live:
            loggers[j].log(it, "train_loss", train_loss[j])
            loggers[j].log(it, "train_accuracy", train_accuracy[j])
        state.loss_sum.zero_()
        state.correct.zero_()
        state.steps = state.seen = 0
    else:
        state.last_train_losses = []
    if not live:
        state.last_test_accuracies = []
        return
    results = evaluate_copies(net, test_data, k, bf16=hparams.bf16, fp16=hparams.fp16)
    state.last_test_accuracies = [results[j][1] for j in live]
    for j in live:
        test_loss, test_accuracy = results[j]
        loggers[j].log(it, "test_loss", test_loss)
        loggers[j].log(it, "test_accuracy", test_accuracy)
        loggers[j].log(it, "learning_rate", lr)
        loggers[j].log(it, "wall_seconds", state.wall_before[j] + state.wall)
        loggers[j].flush()
