"""The one training loop: a stage (open_lth.training.trainer.Stage) trains K ≥ 1 copies
(one run, a pack, an instability pair) to its end, in named parts: `build` (the
network, stacked for K > 1, its optimizer and mask), `start` (resume from the
checkpoint, or save the starting weights), `make_step`, and per iteration `evaluate`,
`checkpoint` (also on a signal, then `Interrupted`), `check_finite` (divergence) and
`step`. The modes differ by data only: K, and whether the copies share one checkpoint
(one job) or keep one each (a pack of independent runs).

Randomness is a function of (seed, step): the data order of epoch e comes from
(data_order_seed, e) and the augmentation of step s from (augmentation_seed, s). A run
resumed from a checkpoint therefore draws exactly what an uninterrupted run draws, and
its weights end identical.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from open_lth.foundations import distributed, paths
from open_lth.foundations.errors import TrainingDiverged, UserError
from open_lth.foundations.masks import Mask, apply_mask
from open_lth.foundations.model import Model
from open_lth.foundations.step import Step
from open_lth.foundations.store import atomic_torch_save
from open_lth.foundations.synced_batchnorm import sync_batchnorm
from open_lth.training.checkpoints import Checkpoints
from open_lth.training.data import BatchesInStep, derive_seed
from open_lth.training.loop_state import LoopState, log_evaluation
from open_lth.training.metrics import MetricLogger
from open_lth.training.precision import note_bf16, note_fp16, uses_channels_last
from open_lth.training.progress import Progress
from open_lth.training.schedule import build_optimizer, lr_schedule
from open_lth.training.signals import Interrupted, StopFlag, signals_to_flag
from open_lth.training.stacked import Lanes, stack, stack_state, unstack_state
from open_lth.training.trackers import Tracker, open_trackers
from open_lth.training.train_step import StepParts, make_step, replays, set_capturable

if TYPE_CHECKING:
    from open_lth.training.trainer import Stage, TrainOptions


class Loop:
    """One stage's training; `run` returns the copies that diverged (index -> what
    happened), which only a pack of independent runs survives."""

    def __init__(self, models: list[Model], stage: Stage) -> None:
        self.models, self.stage = models, stage
        self.device = stage.train.device
        self.k = len(models)
        self.end = stage.end
        ipe = stage.iterations_per_epoch
        self.eval_every = _every(stage.options.eval_every, ipe, "--eval_every")
        self.checkpoint_every = _every(stage.options.checkpoint_every, ipe, "--checkpoint_every")
        self.lr_at = stage.schedule or lr_schedule(stage.hparams, ipe)
        outs = [c.out for c in stage.copies]
        self.checkpoints = Checkpoints(stage.checkpoint, outs, stage.checkpoint_tag)
        self.resumed_at: int | None = None

    def run(self) -> dict[int, str]:
        copies = self.stage.copies
        if not self.checkpoints.exist() and all(
            c.out is not None and paths.weights(c.out, self.end).exists() for c in copies
        ):
            return {}  # finished; killed before the caller wrote its summary
        self.build()
        try:
            self.start()
            self.make_step()
            self.train()
        finally:  # the end of the stage, an interruption or an error: the trackers' runs end
            for logger in self.loggers:
                logger.close()
        if self.live():
            self.save_weights(self.end)
        if distributed.is_primary():
            self.checkpoints.remove(self.live())
        distributed.barrier()  # what the next stage reads is written
        return dict(self.state.diverged)

    # --- the parts ---

    def build(self) -> None:
        stage, hparams, k = self.stage, self.stage.hparams, self.k
        if hparams.bf16:
            note_bf16(self.device)
        if hparams.fp16:
            note_fp16(self.device)
        models = self.models
        net = models[0] if k == 1 else stack(models, stage.lanes()).to(self.device)
        if isinstance(net, Lanes) and hparams.compile:
            raise UserError("--pack_streams does not combine with --compile; leave one out")
        masks = [c.mask if c.mask is not None else stage.mask for c in stage.copies]
        if any(m is None for m in masks) and any(masks):
            raise ValueError("either every copy has a mask or none has")
        self.mask = masks[0] if k == 1 else (stack_state(masks, net) if masks[0] else None)
        distributed.broadcast_(self.mask)  # under torchrun every rank holds rank 0's mask
        self.state = LoopState(self.device, k)
        if hparams.fp16:
            # One scale for the pack: the K copies share one optimizer, whose fused kernels
            # take one found-inf flag, and Adam's step count is one per stacked tensor.
            self.state.scaler = torch.amp.GradScaler(self.device.type)
        self.base_net = net
        if uses_channels_last(net, self.device):
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        # Frozen parameters (Gem-Miner's weights, under its trained scores) stay out.
        trained = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(hparams, trained)
        apply_mask(net, self.mask)
        forward_net = distributed.wrap(net, self.device)  # DDP under torchrun
        self.step_net = torch.compile(forward_net) if hparams.compile else forward_net
        self.loggers = [
            MetricLogger(paths.metrics(c.out), functools.partial(_trackers, c.out, stage.options))
            for c in stage.copies
            if stage.test is not None
        ]

    def start(self) -> None:
        """Resume from the checkpoint, or begin: save the starting weights and log the
        copies' start metrics."""
        if self.checkpoints.exist():
            self.resume()
            return
        start = self.stage.start_iteration
        self.state.iteration = start
        self.save_weights(start)
        for logger, c in zip(self.loggers, self.stage.copies[: len(self.loggers)], strict=True):
            logger.keep_until(start - 1)
            for name, value in (c.start_metrics or {}).items():
                logger.log(start, name, value)

    def resume(self) -> None:
        state = self.state
        model_state, optimizer_state, ckpts = self.checkpoints.load(self.base_net, self.device)
        self.base_net.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)
        # The saved groups carry the saving run's step path; this run sets its own.
        for group in self.optimizer.param_groups:
            group["lr"] = self.stage.hparams.lr
        set_capturable(self.optimizer, False)
        state.load(ckpts)
        if not distributed.is_primary():  # rank 0 carries the checkpoint's running sums
            state.loss_sum.zero_()
            state.correct.zero_()
            state.seen = 0
        torch.set_rng_state(ckpts[0]["rng_cpu"].cpu())
        self.resumed_at = state.iteration
        if not self.stage.options.quiet and distributed.is_primary():
            saved = self.checkpoints.paths
            where = saved[0].parent if len(saved) == 1 else f"{self.k} runs"
            if saved[0] != paths.checkpoint(saved[0].parent):  # e.g. Gem-Miner's search
                where = saved[0]
            print(f"resuming from iteration {self.resumed_at} ({where})", flush=True)
        for logger in self.loggers:
            logger.keep_until(self.resumed_at)

    def make_step(self) -> None:
        hparams, state, net = self.stage.hparams, self.state, self.base_net
        self.parts = StepParts(
            self.net, self.step_net, self.optimizer, _mask_pairs(self.net, self.mask), self.k,
            hparams.bf16, state.loss_sum, state.correct, scaler=state.scaler,
            after_step=self.stage.after_step,
        )  # fmt: skip
        # DDP's gradient all-reduce does not go into a CUDA graph: its steps run eagerly.
        graphs = "off" if distributed.active() else self.stage.options.cuda_graphs
        name = type(net).__name__
        if isinstance(net, Lanes):
            name = f"{type(net.lanes[0]).__name__} in {len(net.lanes)} lanes"
        self.take_step = make_step(self.parts, graphs, self.device, name)
        # A graphed step draws a batch without augmentation itself (see BatchesInStep).
        train_data = self.stage.train
        self.source = None
        if replays(self.take_step) and not train_data.augmentation:
            self.source = BatchesInStep(train_data, self.k, self.stage.batch_size)
            self.parts.source = self.source

    def train(self) -> None:
        stage, state = self.stage, self.state
        self.generator = torch.Generator(self.device) if stage.train.augmentation else None
        self.order_epoch = -1
        progress = Progress(state.iteration, self.end, stage.options.quiet)
        self.tick = time.perf_counter()
        self.net.train()
        with signals_to_flag() as stop, progress, sync_batchnorm(self.net):
            while True:
                it = state.iteration
                # A checkpoint at `it` is written after the evaluation at `it`, so a
                # resumed run has that evaluation already.
                due = it == self.end or it % self.eval_every == 0 or it == stage.start_iteration
                if due and it != self.resumed_at and stage.test is not None:
                    self.evaluate(it, progress)
                if not self.live():
                    break  # every run of the pack diverged
                if it in stage.save_iterations and it != stage.start_iteration:
                    self.save_weights(it)
                if stage.at_iteration is not None and it != self.resumed_at:
                    stage.at_iteration(self, it)
                if it == self.end:
                    break
                self.checkpoint_or_stop(it, stop)
                self.step(it)
                if self.device.type == "cpu" or state.iteration % 100 == 0:
                    self.check_finite()
                progress.step()

    def evaluate(self, it: int, progress: Progress) -> None:
        state = self.state
        state.wall += time.perf_counter() - self.tick
        self.check_finite()
        lr = self.lr_at(min(it, self.end - 1))
        log_evaluation(self.step_net, self.stage.test, self.stage.hparams, state, self.loggers, lr)
        progress.evaluated(it, state.last_train_losses, state.last_test_accuracies)
        self.tick = time.perf_counter()

    def checkpoint_or_stop(self, it: int, stop: StopFlag) -> None:
        """A checkpoint every --checkpoint_every, and on a signal before `Interrupted`."""
        signum = distributed.agree_on_stop(stop.signum, self.device, it)  # ranks stop together
        if signum is None and (not self.checkpoint_due(it) or it == self.resumed_at):
            return
        self.state.wall += time.perf_counter() - self.tick
        self.tick = time.perf_counter()
        self.save_checkpoint()
        if signum is not None:
            distributed.barrier()  # rank 0 has written the checkpoint
            raise Interrupted(signum, it)

    def step(self, it: int) -> None:
        """One optimizer step of every copy, on each copy's batch of iteration `it`."""
        stage, state = self.stage, self.state
        train_data, batch_size = stage.train, stage.batch_size
        epoch = it // stage.iterations_per_epoch
        if epoch != self.order_epoch:
            seeds = [c.seeds.data_order for c in stage.copies]
            self.orders = torch.stack([train_data.order(s, epoch) for s in seeds])
            self.order_epoch = epoch
            if self.source is not None:
                self.source.set_epoch(self.orders)
        position = (it % stage.iterations_per_epoch) * batch_size
        if self.source is not None:
            self.source.set_step(position)
            self.take_step(None, None, self.lr_at(it))
            state.seen += batch_size
        else:
            seeds = None
            if self.generator is not None:
                seeds = [derive_seed("augment", c.seeds.augmentation, it) for c in stage.copies]
            index = self.orders[:, position : position + batch_size]
            x, y = train_data.copies_batch(index, self.generator, seeds)
            # Under torchrun the global batch was drawn above; each rank takes its slice.
            x, y = distributed.shard(x), distributed.shard(y)
            self.take_step(x, y, self.lr_at(it))
            state.seen += len(x)
        state.steps += 1
        state.iteration = it + 1

    # --- what the parts share ---

    def checkpoint_due(self, it: int) -> bool:
        if self.stage.checkpoint_iterations is not None:
            return it in self.stage.checkpoint_iterations
        return it % self.checkpoint_every == 0

    def live(self) -> list[int]:
        return [j for j in range(self.k) if j not in self.state.diverged]

    def save_weights(self, iteration: int) -> None:
        state = self.base_net.state_dict()
        states = [state] if self.k == 1 else unstack_state(state, self.base_net)
        for j in self.live():
            out = self.stage.copies[j].out
            if out is not None:
                atomic_torch_save(paths.weights(out, iteration), states[j])

    def save_checkpoint(self) -> None:
        state = self.state
        state.seen = distributed.gather_sums([state.loss_sum, state.correct], state.seen)
        self.check_finite()
        optimizer_state = self.optimizer.state_dict()
        for group in optimizer_state["param_groups"]:  # a graphed step's lr is a tensor
            group["lr"] = float(group["lr"])
        self.checkpoints.save(self.base_net, optimizer_state, state, self.live())

    def check_finite(self) -> None:
        """A copy whose loss is NaN or infinite: an error (one job), or (a pack) it
        stops alone, keeping its last checkpoint."""
        state = self.state
        finite = torch.isfinite(state.loss_sum).tolist()
        for j in self.live():
            if finite[j]:
                continue
            saved = self.checkpoints.of(j).exists()
            kept = "the last checkpoint is kept" if saved else "no checkpoint"
            message = (
                f"the training loss became NaN or infinite by iteration {state.iteration} "
                f"({kept}); lower --lr or check the data"
            )
            if not self.checkpoints.per_copy:
                raise TrainingDiverged(message)
            state.diverged[j] = message
            out = self.stage.copies[j].out
            print(f"error: {out}: {message}; the pack's other runs go on", file=sys.stderr)


def _trackers(out: Path, options: TrainOptions, after: int) -> list[Tracker]:
    """The --loggers of one copy's folder, opened where its metrics.csv is cut back."""
    return open_trackers(options.loggers, out, options.root, after, options.quiet)


def _every(text: str | None, ipe: int, flag: str) -> int:
    return max(1, Step.from_str(text, ipe, flag).iteration) if text else ipe


def _mask_pairs(
    model: torch.nn.Module, mask: Mask | None
) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    if not mask:
        return []
    params = dict(model.named_parameters())
    return [(params[n], m.to(params[n].device, params[n].dtype)) for n, m in mask.items()]
