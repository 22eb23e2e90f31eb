"""The training loop: the whole step on the device, resumable to the bit.

Randomness is a function of (seed, step): the data order of epoch e comes from
(data_order_seed, e) and the augmentation of step s from (augmentation_seed, s).
A run resumed from a checkpoint therefore draws exactly what an uninterrupted run
draws, and its weights end identical.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from open_lth.foundations import distributed, paths
from open_lth.foundations.errors import TrainingDiverged, UserError
from open_lth.foundations.hparams import TrainingHparams
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model
from open_lth.foundations.step import Step
from open_lth.foundations.store import atomic_torch_save
from open_lth.training.checkpoints import Checkpoints
from open_lth.training.data import BatchesInStep, DeviceData, derive_seed
from open_lth.training.evaluation import (
    evaluate_copies,
    note_bf16,
    note_fp16,
    uses_channels_last,
)
from open_lth.training.metrics import MetricLogger
from open_lth.training.progress import Progress
from open_lth.training.schedule import build_optimizer, lr_schedule
from open_lth.training.stacked import Lanes, stack, stack_state, unstack_state
from open_lth.training.trackers import Tracker, open_trackers
from open_lth.training.train_step import StepParts, make_step, replays, set_capturable


@dataclass
class TrainOptions:
    """How a run is watched, not what it computes: these never enter the run name."""

    eval_every: str | None = None  # default: once per epoch
    checkpoint_every: str | None = None  # default: once per epoch
    quiet: bool = False
    cuda_graphs: str = "auto"  # auto: replay the step from a CUDA graph on CUDA
    pack_streams: int = 1  # a pack as this many networks, each on its own CUDA stream
    loggers: tuple[str, ...] = ()  # trackers beside metrics.csv: tensorboard, wandb
    root: Path | None = None  # the runs' root: trackers name a run by its folder below it


@dataclass
class Seeds:
    data_order: int
    augmentation: int


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGUSR2 arrived; a checkpoint was saved first."""

    def __init__(self, signum: int, iteration: int, where: str = "iteration") -> None:
        super().__init__(f"interrupted at {where} {iteration}; checkpoint saved")
        self.signum = signum
        self.iteration = iteration


def iterations_per_epoch(train: DeviceData, batch_size: int) -> int:
    """Whole batches only: every step sees `batch_size` examples."""
    return max(1, len(train) // batch_size)


def apply_mask(model: torch.nn.Module, mask: Mask | None) -> None:
    """Zero the pruned weights in place."""
    if mask:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, keep in mask.items():
                params[name].mul_(keep.to(params[name].device, params[name].dtype))


def train(
    model: Model,
    hparams: TrainingHparams,
    train_data: DeviceData,
    test_data: DeviceData,
    batch_size: int,
    out: Path,
    seeds: Seeds,
    options: TrainOptions,
    mask: Mask | None = None,
    start_iteration: int = 0,
    save_iterations: tuple[int, ...] = (),
    start_metrics: dict[str, float] | None = None,
) -> None:
    """Train `model` (already on the device, with its starting weights) to the end of
    `hparams.training_steps`, writing metrics, weights and checkpoints into `out`.

    Resumes from `out/checkpoint.pt` when there is one. `start_iteration` > 0 continues
    the schedule from there (rewinding); `save_iterations` are extra weights to keep;
    `start_metrics` are logged with the first evaluation (e.g. a supermask accuracy).
    """
    diverged = train_copies(
        [model],
        hparams,
        train_data,
        test_data,
        batch_size,
        [Copy(out, seeds, mask, start_metrics)],
        None,
        options,
        start_iteration=start_iteration,
        save_iterations=save_iterations,
    )
    if diverged:
        raise TrainingDiverged(diverged[0])


@dataclass
class Copy:
    """Where one copy writes, the seeds of its SGD noise, and (in a pack of independent
    runs) its own mask and the metrics logged with its first evaluation."""

    out: Path
    seeds: Seeds
    mask: Mask | None = None
    start_metrics: dict[str, float] | None = None


def train_copies(
    models: list[Model],
    hparams: TrainingHparams,
    train_data: DeviceData,
    test_data: DeviceData,
    batch_size: int,
    copies: list[Copy],
    checkpoint_path: Path | None,
    options: TrainOptions,
    mask: Mask | None = None,
    start_iteration: int = 0,
    save_iterations: tuple[int, ...] = (),
) -> dict[int, str]:
    """`train` for K copies at once, each with its own data order and augmentation:
    for K > 1 they are stacked into one network (open_lth.training.stacked) and take each step
    together. Each copy's metrics and weights go to its own folder.

    With a `checkpoint_path`, the copies are one job (the two copies of an instability
    branch): one stacked checkpoint, and a diverging copy stops them all. Without one,
    they are independent runs (a pack): each checkpoints into its own folder exactly
    as it would alone, so it can resume alone or in another pack, and a copy whose loss
    turns NaN stops alone while the others train on. Returns the diverged copies (index
    -> what happened); copies given a checkpoint must all be at the same iteration.
    """
    loggers = [
        MetricLogger(paths.metrics(c.out), functools.partial(_trackers, c.out, options))
        for c in copies
    ]
    try:
        return _train_copies(
            models, hparams, train_data, test_data, batch_size, copies, checkpoint_path,
            options, loggers, mask, start_iteration, save_iterations,
        )  # fmt: skip
    finally:  # the end of the stage, an interruption or an error: the trackers' runs end
        for logger in loggers:
            logger.close()


def _trackers(out: Path, options: TrainOptions, after: int) -> list[Tracker]:
    return open_trackers(options.loggers, out, options.root, after, options.quiet)


def _train_copies(
    models: list[Model],
    hparams: TrainingHparams,
    train_data: DeviceData,
    test_data: DeviceData,
    batch_size: int,
    copies: list[Copy],
    checkpoint_path: Path | None,
    options: TrainOptions,
    loggers: list[MetricLogger],
    mask: Mask | None,
    start_iteration: int,
    save_iterations: tuple[int, ...],
) -> dict[int, str]:
    device = train_data.device
    k = len(models)
    ipe = iterations_per_epoch(train_data, batch_size)
    end = Step.from_str(hparams.training_steps, ipe).iteration
    eval_every = _every(options.eval_every, ipe, "--eval_every")
    checkpoint_every = _every(options.checkpoint_every, ipe, "--checkpoint_every")
    lr_at = lr_schedule(hparams, ipe)
    checkpoints = Checkpoints(checkpoint_path, [c.out for c in copies])
    if not checkpoints.exist() and all(paths.weights(c.out, end).exists() for c in copies):
        return {}  # finished; killed before the caller wrote its summary

    if hparams.bf16:
        note_bf16(device)
    if hparams.fp16:
        note_fp16(device)
    net = models[0] if k == 1 else stack(models, lanes(k, checkpoint_path, options)).to(device)
    if isinstance(net, Lanes) and hparams.compile:
        raise UserError("--pack_streams does not combine with --compile; leave one out")
    masks = [c.mask if c.mask is not None else mask for c in copies]
    if any(m is None for m in masks) and any(masks):
        raise ValueError("either every copy has a mask or none has")
    mask = masks[0] if k == 1 else (stack_state(masks, net) if masks[0] else None)
    distributed.broadcast_(mask)  # under torchrun every rank holds rank 0's mask

    def unstack(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [state] if k == 1 else unstack_state(state, net)

    state = _State(device, k)
    if hparams.fp16:
        # One scale for the pack: the K copies share one optimizer, whose fused kernels
        # take one found-inf flag, and Adam's step count is one per stacked tensor.
        state.scaler = torch.amp.GradScaler(device.type)
    live = lambda: [j for j in range(k) if j not in state.diverged]  # noqa: E731

    def save_weights(iteration: int) -> None:
        states = unstack(net.state_dict())
        for j in live():
            atomic_torch_save(paths.weights(copies[j].out, iteration), states[j])

    base_net = net
    if uses_channels_last(net, device):
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(hparams, list(net.parameters()))
    apply_mask(net, mask)
    forward_net = distributed.wrap(net, device)  # DDP under torchrun
    step_net = torch.compile(forward_net) if hparams.compile else forward_net

    resumed_at = None
    if checkpoints.exist():
        model_state, optimizer_state, ckpts = checkpoints.load(base_net, device)
        base_net.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        # The saved groups carry the saving run's step path; this run sets its own.
        for group in optimizer.param_groups:
            group["lr"] = hparams.lr
        set_capturable(optimizer, False)
        state.load(ckpts)
        if not distributed.is_primary():  # rank 0 carries the checkpoint's running sums
            state.loss_sum.zero_()
            state.correct.zero_()
            state.seen = 0
        torch.set_rng_state(ckpts[0]["rng_cpu"].cpu())
        resumed_at = state.iteration
        if not options.quiet and distributed.is_primary():
            where = checkpoints.paths[0].parent if len(checkpoints.paths) == 1 else f"{k} runs"
            print(f"resuming from iteration {resumed_at} ({where})", flush=True)
        for logger in loggers:
            logger.keep_until(resumed_at)
    else:
        state.iteration = start_iteration
        save_weights(start_iteration)
        for logger, c in zip(loggers, copies, strict=True):
            logger.keep_until(start_iteration - 1)
            for name, value in (c.start_metrics or {}).items():
                logger.log(start_iteration, name, value)

    def check_finite() -> None:
        """A copy whose loss is NaN or infinite: an error (one job), or (a pack) it
        stops alone, keeping its last checkpoint."""
        finite = torch.isfinite(state.loss_sum).tolist()
        for j in live():
            if finite[j]:
                continue
            kept = "the last checkpoint is kept" if checkpoints.of(j).exists() else "no checkpoint"
            message = (
                f"the training loss became NaN or infinite by iteration {state.iteration} "
                f"({kept}); lower --lr or check the data"
            )
            if not checkpoints.per_copy:
                raise TrainingDiverged(message)
            state.diverged[j] = message
            print(
                f"error: {copies[j].out}: {message}; the pack's other runs go on", file=sys.stderr
            )

    def save_checkpoint() -> None:
        state.seen = distributed.gather_sums([state.loss_sum, state.correct], state.seen)
        check_finite()
        optimizer_state = optimizer.state_dict()
        for group in optimizer_state["param_groups"]:  # a graphed step's lr is a tensor
            group["lr"] = float(group["lr"])
        checkpoints.save(base_net, optimizer_state, state, live())

    parts = StepParts(
        net, step_net, optimizer, _mask_pairs(net, mask), k, hparams.bf16,
        state.loss_sum, state.correct, scaler=state.scaler,
    )  # fmt: skip
    # DDP's gradient all-reduce does not go into a CUDA graph: its steps run eagerly.
    graphs = "off" if distributed.active() else options.cuda_graphs
    name = type(base_net).__name__
    if isinstance(base_net, Lanes):
        name = f"{type(base_net.lanes[0]).__name__} in {len(base_net.lanes)} lanes"
    take_step = make_step(parts, graphs, device, name)
    # A graphed step draws a batch without augmentation itself (see BatchesInStep).
    source = None
    if replays(take_step) and not train_data.augmentation:
        parts.source = source = BatchesInStep(train_data, k, batch_size)

    generator = torch.Generator(device) if train_data.augmentation else None
    orders = torch.empty(0)
    order_epoch = -1
    progress = Progress(state.iteration, end, options.quiet)
    tick = time.perf_counter()
    net.train()
    with signals_to_flag() as stop, progress, distributed.sync_batchnorm(net):
        while True:
            it = state.iteration
            # A checkpoint at `it` is written after the evaluation at `it`, so a resumed
            # run has that evaluation already.
            if (it == end or it % eval_every == 0 or it == start_iteration) and it != resumed_at:
                state.wall += time.perf_counter() - tick
                check_finite()
                lr = lr_at(min(it, end - 1))
                _log_eval(step_net, test_data, hparams, state, loggers, lr)
                progress.evaluated(it, state.last_train_losses, state.last_test_accuracies)
                tick = time.perf_counter()
            if not live():
                break  # every run of the pack diverged
            if it in save_iterations and it != start_iteration:
                save_weights(it)
            if it == end:
                break
            signum = distributed.agree_on_stop(stop.signum, device, it)  # ranks stop together
            if signum is not None or (it % checkpoint_every == 0 and it != resumed_at):
                state.wall += time.perf_counter() - tick
                tick = time.perf_counter()
                save_checkpoint()
                if signum is not None:
                    distributed.barrier()  # rank 0 has written the checkpoint
                    raise Interrupted(signum, it)

            epoch = it // ipe
            if epoch != order_epoch:
                orders = torch.stack([train_data.order(c.seeds.data_order, epoch) for c in copies])
                order_epoch = epoch
                if source is not None:
                    source.set_epoch(orders)
            position = (it % ipe) * batch_size
            if source is not None:
                source.set_step(position)
                take_step(None, None, lr_at(it))
                state.seen += batch_size
            else:
                seeds = None
                if generator is not None:
                    seeds = [derive_seed("augment", c.seeds.augmentation, it) for c in copies]
                index = orders[:, position : position + batch_size]
                x, y = train_data.copies_batch(index, generator, seeds)
                # Under torchrun the global batch was drawn above; each rank takes its slice.
                x, y = distributed.shard(x), distributed.shard(y)
                take_step(x, y, lr_at(it))
                state.seen += len(x)
            state.steps += 1
            state.iteration = it + 1
            if device.type == "cpu" or state.iteration % 100 == 0:
                check_finite()
            progress.step()

    if live():
        save_weights(end)
    if distributed.is_primary():
        checkpoints.remove(live())
    distributed.barrier()  # what the next stage reads is written
    return dict(state.diverged)


def lanes(copies: int, checkpoint_path: Path | None, options: TrainOptions) -> int:
    """How many networks (Lanes) a pack of `copies` runs trains as: --pack_streams, or
    the largest divisor of `copies` below it. The copies of one job (an instability
    pair, with its one stacked checkpoint) stay one network."""
    if checkpoint_path is not None:
        return 1
    return max(d for d in range(1, min(options.pack_streams, copies) + 1) if copies % d == 0)


class _State:
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


def _log_eval(
    net: torch.nn.Module,
    test_data: DeviceData,
    hparams: TrainingHparams,
    state: _State,
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


def _every(text: str | None, ipe: int, flag: str) -> int:
    return max(1, Step.from_str(text, ipe, flag).iteration) if text else ipe


def _mask_pairs(
    model: torch.nn.Module, mask: Mask | None
) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    if not mask:
        return []
    params = dict(model.named_parameters())
    return [(params[n], m.to(params[n].device, params[n].dtype)) for n, m in mask.items()]


class _StopFlag:
    signum: int | None = None


@contextlib.contextmanager
def signals_to_flag() -> Iterator[_StopFlag]:
    """Turn SIGINT/SIGTERM into a flag the loop checks, so it can checkpoint first. Also
    SIGUSR2: Slurm's and submitit's warning of preemption or of the time limit."""
    flag = _StopFlag()

    def handler(signum: int, frame: object) -> None:
        flag.signum = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
