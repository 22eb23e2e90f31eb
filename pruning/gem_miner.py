"""Gem-Miner (Sreenivasan et al. 2022, "Rare Gems: Finding Lottery Tickets at
Initialization"): a sparse mask found at initialization by training scores, not weights,
as their released code does it for ResNet-20 (algo hc_iter with the configs the study's
fork vendored: 150 epochs, prune every 5, SGD 0.1 cosine, momentum 0.9, no weight decay,
L2 λ = 5e-5, non-affine BatchNorm, every layer scored, unflag before fine-tuning).

Every surviving prunable weight w gets a score s ∈ [0, 1] (U(0, 1) at the start). The
network runs with w·1[s > 0.5] and the frozen starting weights; the rounding passes its
gradient straight through (d mask/d s = 1), so the scores train by SGD on
cross-entropy + λ·Σ s², clamped to [0, 1] after every step. BatchNorm has no affine
parameters during the search (γ = 1, β = 0, batch statistics): the start model's γ,
random in [0, 1], would otherwise switch off the channels where it is near 0.

Pruning events follow the released loop, which counts epochs from 0 and prunes after
epoch e when e is a positive multiple of the period: after epochs 6, 11, ..., 146 of
150 (29 events; in steps when --gem_miner_prune_every is not whole epochs). Each removes
the lowest surviving scores globally, on a geometric schedule that lands exactly on the
target count at the last event:

    kept after event j of J = round(n₀ · (target / n₀)^(j / J)),   the last one = target

where n₀ counts the weights that survive the previous mask in the scored layers and
target = round(target_density × (all weights of the scored layers)). The released code
trains the scores on after its last event, then hands on the survivors of that event
("unflag": every score set to 1 before fine-tuning), so those steps cannot change the
mask and the search stops at the last event. Layers in --pruning_layers_to_ignore get no
scores and keep their mask.

The search trains through the one training loop (open_lth.training.loop) as a stage of
one copy: `ScoredNetwork` holds the scores (its only trained parameters), the survivors
and the masked weights, all updated in place at a prune event, so that on CUDA the
step is replayed from a CUDA graph like any training step and a replay sees the new
mask. It is a pure function of (seed, step): the data order of epoch e comes from
(seed, e) and the augmentation of step t from (seed, t), so a search resumed from its
checkpoint (`gem_miner_checkpoint.pt` in the level's folder, written at every pruning
event and on a signal, through the loop's checkpoint code) ends with the mask an
uninterrupted one finds.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from open_lth.foundations import distributed, formats, paths, registries
from open_lth.foundations.errors import TrainingDiverged, UserError
from open_lth.foundations.hparams import Hparams, PruningHparams, TrainingHparams, hp
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model
from open_lth.foundations.step import Step
from open_lth.lottery.strategy import PruneContext, Strategy
from open_lth.pruning.at_init import AtInitHparams, resolve_density
from open_lth.pruning.select import lowest_positions
from open_lth.training.checkpoints import tag_of
from open_lth.training.data import derive_seed
from open_lth.training.loop import Loop
from open_lth.training.signals import Interrupted
from open_lth.training.trainer import Copy, Seeds, Stage, TrainOptions, iterations_per_epoch

CHECKPOINT = paths.search_checkpoint(Path()).name


@dataclass
class GemMinerHparams(AtInitHparams):
    # target_density (the first field, from AtInitHparams, shared with the other one-shot
    # strategies): Gem-Miner counts it against the scored layers' weights only.
    gem_miner_steps: str = hp(
        "150ep",
        "length of the score search's schedule (the released 150 epochs; e.g. 3ep for a "
        "short one); it stops at its last prune event",
    )
    gem_miner_lr: float = hp(0.1, "SGD learning rate of the scores (cosine schedule)")
    gem_miner_momentum: float = hp(0.9, "SGD momentum of the scores")
    gem_miner_lambda: float = hp(5e-5, "weight λ of the regularizer λ·Σ score²")
    gem_miner_prune_every: str = hp(
        "5ep",
        "the period of the prune events: after 1 + j·period epochs (steps if not whole "
        "epochs), j = 1, 2, ..., as the released code",
    )

    _name: ClassVar[str] = "Gem-Miner Hyperparameters"
    _description: ClassVar[str] = "The score search that finds the mask at initialization."
    _step_fields: ClassVar[tuple[str, ...]] = ("gem_miner_steps", "gem_miner_prune_every")

    def validate(self) -> None:
        super().validate()
        if not self.gem_miner_lr > 0:
            raise UserError(f"--gem_miner_lr must be positive, got {self.gem_miner_lr}")
        momentum, lam = self.gem_miner_momentum, self.gem_miner_lambda
        if not 0 <= momentum < 1:
            raise UserError(f"--gem_miner_momentum must be in [0, 1), got {momentum}")
        if not lam >= 0:
            raise UserError(f"--gem_miner_lambda must be non-negative, got {lam}")
        for name in self._step_fields:
            # Zero in any epoch length: no `ep` part and no `it` part above zero.
            if Step.from_str(getattr(self, name), 1).iteration == 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")


class _MaskedWeight(torch.autograd.Function):
    """w·1[s > 0.5] forward; the straight-through backward d(mask)/ds = 1, so
    dL/ds = dL/d(w·mask) · w. Fused: no float mask is ever materialized."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, w: torch.Tensor, s: torch.Tensor):
        ctx.save_for_backward(w)
        return torch.where(s > 0.5, w, 0.0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):
        (w,) = ctx.saved_tensors
        return None, grad * w


def kept_after(event: int, events: int, n0: int, target: int) -> int:
    """Surviving scores after pruning event `event` (1..events): geometric from n0 to
    exactly `target`."""
    if event >= events:
        return target
    return max(target, min(n0, round(n0 * (target / n0) ** (event / events))))


def prune_events(steps: int, every: int, iterations_per_epoch: int) -> list[int]:
    """The steps after which the released loop prunes. It counts units (epochs when
    `every` is whole epochs, else steps) from 0 and prunes after unit u when u is a
    positive multiple of the period: 150 epochs every 5 -> after epochs 6, 11, ..., 146."""
    unit = iterations_per_epoch if every % iterations_per_epoch == 0 else 1
    period = every // unit
    return [(j * period + 1) * unit for j in range(1, (steps // unit - 1) // period + 1)]


def cosine_lr(lr: float, step: int, steps: int) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * step / steps))


@registries.strategies.register("gem_miner")
class GemMinerStrategy(Strategy):
    hparams_type = GemMinerHparams
    one_shot = True
    uses_model_ignore_list = False
    description = "Gem-Miner: train scores of the frozen initial weights, prune to --target_density"

    @classmethod
    def changed_since(cls, made: int, pruning: PruningHparams, model: Model) -> str | None:
        if made >= 2:
            return None
        return (
            "Gem-Miner's search is now the published one (BatchNorm without γ and β, the "
            "output layer scored unless named in --pruning_layers_to_ignore, 150 epochs "
            "pruning after epochs 6, 11, ..., 146, λ = 5e-5); the old search (affine "
            "BatchNorm, 2 epochs pruning every epoch and at the end, λ = 1e-4) is in commit "
            f"{formats.LAST_OF_FORMAT_1}; use another --root to run the new one"
        )

    def check(self, model: Model, ignored: list[str], iterations_per_epoch: int) -> None:
        hparams = self.hparams if self.hparams is not None else GemMinerHparams()
        names = [n for n in model.prunable_layer_names if n not in ignored]
        if not names:
            raise UserError(
                "gem_miner: every prunable layer is in --pruning_layers_to_ignore; "
                "leave at least one to score"
            )
        ipe = iterations_per_epoch
        steps = Step.from_str(hparams.gem_miner_steps, ipe, "--gem_miner_steps").iteration
        every = Step.from_str(hparams.gem_miner_prune_every, ipe, "--gem_miner_prune_every")
        if not prune_events(steps, every.iteration, ipe):
            raise UserError(
                f"--gem_miner_steps {hparams.gem_miner_steps} leaves no prune event: they come "
                f"after 1 + j·{hparams.gem_miner_prune_every} (j >= 1), so the search needs "
                "at least one period and one more epoch (step, for a period in steps)"
            )
        params = dict(model.named_parameters())
        total = sum(params[n].numel() for n in names)
        if hparams.target_density is not None and round(hparams.target_density * total) < 1:
            raise UserError(
                f"--target_density {hparams.target_density} keeps no weights of {total}"
            )

    @classmethod
    def resolve(
        cls, hparams: Hparams | None, levels: int, pruning: PruningHparams
    ) -> GemMinerHparams:
        hparams = hparams if hparams is not None else GemMinerHparams()
        return resolve_density(hparams, levels, pruning)

    def kept(self, previous: Mask, ignore: list[str], pruning: PruningHparams) -> int:
        """round(target_density × the scored layers' weights), plus the ignored layers'."""
        hparams = self.hparams if self.hparams is not None else GemMinerHparams()
        scored = [n for n in previous if n not in ignore]
        fixed = sum(int(previous[n].sum()) for n in previous if n in ignore)
        return round(hparams.target_density * sum(previous[n].numel() for n in scored)) + fixed

    def prune(self, ctx: PruneContext, ignore: list[str]) -> Mask:
        hparams = self.hparams if self.hparams is not None else GemMinerHparams()
        if hparams.target_density is None:
            raise ValueError("gem_miner: target_density is unset; call GemMinerStrategy.resolve")
        return _Search(ctx, ignore, hparams).run()


class ScoredNetwork(nn.Module):
    """The search's network: `model` (the level's starting weights, frozen, BatchNorm
    without γ and β) run with each scored layer's weight·1[score > 0.5] and each
    ignored layer's masked weight. The scores are its only trained parameters; the
    survivors (`alive{i}`) and the masked weights (`masked{i}` = weight·alive, made
    once, then zeroed in place where a prune event removes a weight) are buffers."""

    def __init__(
        self, model: Model, names: list[str], previous: Mask, seed: int, device: torch.device
    ) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.ignored = [n for n in previous if n not in names]
        params = dict(model.named_parameters())
        g = torch.Generator().manual_seed(seed)
        self.scores = nn.ParameterList()
        for i, n in enumerate(names):
            alive = previous[n].to(device, torch.bool)
            score = torch.rand(alive.shape, generator=g).to(device) * alive  # U(0, 1)
            self.scores.append(nn.Parameter(score))
            self.register_buffer(f"alive{i}", alive.clone())
            self.register_buffer(f"masked{i}", torch.empty_like(params[n]), persistent=False)
        for j, n in enumerate(self.ignored):  # constant
            keep = previous[n].to(device, params[n].dtype)
            self.register_buffer(f"fixed{j}", params[n].detach() * keep, persistent=False)
        self.refresh()
        # A resumed search's survivors arrive by load_state_dict: its masked weights follow.
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh())

    @property
    def is_convolutional(self) -> bool:  # channels_last on CUDA, as the model trains
        return getattr(self.model, "is_convolutional", False)

    def alive(self) -> list[torch.Tensor]:
        return [getattr(self, f"alive{i}") for i in range(len(self.names))]

    def refresh(self) -> None:
        """masked = weight·alive, in place (a captured step reads these tensors): a
        removed weight is 0, so its score gets no gradient."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for i, (n, a) in enumerate(zip(self.names, self.alive(), strict=True)):
                getattr(self, f"masked{i}").copy_(params[n] * a.to(params[n].dtype))

    def clamp_scores(self) -> None:
        """Scores back into [0, 1] after every step. A removed score stays 0: no gradient
        (its weight is masked), no momentum (cleared when removed), and 2λ·0 = 0."""
        with torch.no_grad():
            torch._foreach_clamp_min_(list(self.scores), 0.0)
            torch._foreach_clamp_max_(list(self.scores), 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {n: getattr(self, f"fixed{j}") for j, n in enumerate(self.ignored)}
        for i, (n, s) in enumerate(zip(self.names, self.scores, strict=True)):
            weights[n] = _MaskedWeight.apply(getattr(self, f"masked{i}"), s)
        return functional_call(self.model, weights, (x,))


class _Search:
    """One score search: the network, its schedule of prune events, and the stage the
    training loop runs; its checkpoint lives in ctx.workdir."""

    def __init__(self, ctx: PruneContext, ignore: list[str], hparams: GemMinerHparams) -> None:
        self.ctx = ctx
        self.hparams = hparams
        self.names = [n for n in ctx.mask if n not in ignore]
        if not self.names:
            raise UserError("gem_miner: every prunable layer is in --pruning_layers_to_ignore")
        total = sum(ctx.mask[n].numel() for n in self.names)
        self.n0 = sum(int(ctx.mask[n].sum()) for n in self.names)
        self.target = round(hparams.target_density * total)
        if self.target < 1:
            raise UserError(
                f"--target_density {hparams.target_density} keeps no weights of {total}"
            )
        if self.target > self.n0:
            raise UserError(
                f"--target_density {hparams.target_density} keeps {self.target} weights, but "
                f"only {self.n0} survive the previous mask"
            )
        self._schedule(iterations_per_epoch(ctx.train_data, ctx.batch_size))
        self.net = ScoredNetwork(
            _non_affine(ctx.start_model), self.names, ctx.mask, ctx.seed, ctx.train_data.device
        )
        self.path = paths.search_checkpoint(ctx.workdir)
        self.config = {
            "seed": ctx.seed,
            "names": self.names,
            "steps": self.steps,
            "events": self.event_steps,
            "batchnorm": "non-affine",
            "n0": self.n0,
            "target": self.target,
            "hparams": hparams.to_dict(),
        }

    def _schedule(self, ipe: int) -> None:
        hparams = self.hparams
        self.steps = Step.from_str(hparams.gem_miner_steps, ipe, "--gem_miner_steps").iteration
        every = Step.from_str(hparams.gem_miner_prune_every, ipe, "--gem_miner_prune_every")
        self.event_steps = prune_events(self.steps, every.iteration, ipe)
        if not self.event_steps:
            raise UserError(
                f"--gem_miner_steps {hparams.gem_miner_steps} leaves no prune event with "
                f"--gem_miner_prune_every {hparams.gem_miner_prune_every}"
            )
        self.events = len(self.event_steps)

    def stage(self) -> Stage:
        """The search as a stage of one copy: SGD on the scores (the regularizer λ·Σ s²
        enters as its gradient 2λ·s through weight decay: the same update, without a
        reduction and its backward every step), cosine over the whole schedule, to the
        last prune event; a checkpoint at every event before it."""
        h, ctx = self.hparams, self.ctx
        last = self.event_steps[-1]
        sgd = TrainingHparams(
            "sgd", h.gem_miner_lr, f"{last}it", momentum=h.gem_miner_momentum,
            weight_decay=2 * h.gem_miner_lambda,
        )  # fmt: skip
        seeds = Seeds(
            derive_seed("gem_miner_order", ctx.seed), derive_seed("gem_miner_augment", ctx.seed)
        )
        return Stage(
            sgd, ctx.train_data, None, ctx.batch_size, [Copy(None, seeds)],
            TrainOptions(quiet=ctx.quiet, cuda_graphs=ctx.cuda_graphs), checkpoint=self.path,
            schedule=lambda it: cosine_lr(h.gem_miner_lr, it, self.steps),
            after_step=self.net.clamp_scores, at_iteration=self.at_iteration,
            checkpoint_iterations=tuple(self.event_steps[:-1]), checkpoint_tag=self.config,
        )  # fmt: skip

    def at_iteration(self, loop: Loop, it: int) -> None:
        if it in self.event_steps:
            loop.check_finite()
            self._prune_event(self.event_steps.index(it) + 1, loop.optimizer)
            if not self.ctx.quiet and distributed.is_primary():
                print(self._progress(loop, it), flush=True)

    def _progress(self, loop: Loop, it: int) -> str:
        """One line an event, so that a long search shows in a log without a terminal:
        where it is, what is left, the mean loss since the last line, the rate."""
        event, last = self.event_steps.index(it) + 1, self.event_steps[-1]
        kept = sum(int(a.sum()) for a in self.net.alive())
        total = sum(a.numel() for a in self.net.alive())
        state, now = loop.state, time.perf_counter()
        loss_sum, steps = float(state.loss_sum.sum()), state.steps
        before = self._said or (0.0, 0, self._began, loop.resumed_at or 0)
        loss = (loss_sum - before[0]) / max(1, steps - before[1])
        rate = (it - before[3]) / max(now - before[2], 1e-9)
        left = tqdm.format_interval((last - it) / rate) if rate > 0 else "?"
        self._said = (loss_sum, steps, now, it)
        return (
            f"gem_miner step {it}/{last}: prune event {event}/{self.events}, {kept:,} of "
            f"{total:,} scored weights left ({100 * kept / total:.2f}%), train loss "
            f"{loss:.4f}, {rate:.1f} it/s, {left} left"
        )

    def _prune_event(self, event: int, optimizer: torch.optim.Optimizer) -> None:
        """Remove the lowest surviving scores, in place: survivors, scores, their momentum
        and the masked weights."""
        keep = kept_after(event, self.events, self.n0, self.target)
        scores, alive = list(self.net.scores), self.net.alive()
        remaining = sum(int(a.sum()) for a in alive)
        if keep >= remaining:
            return
        gone = lowest_positions(scores, alive, remaining - keep)
        with torch.no_grad():
            for s, a, g in zip(scores, alive, gone, strict=True):
                # By (row-major) position, whatever the layout: on CUDA a convolution's
                # scores, survivors and momentum are channels_last, not views of a line.
                at = torch.unravel_index(g.to(a.device), a.shape)
                a[at] = False
                s[at] = 0
                buffer = optimizer.state.get(s, {}).get("momentum_buffer")
                if buffer is not None:
                    buffer[at] = 0
        self.net.refresh()

    def run(self) -> Mask:
        if tag_of(self.path) not in (None, self.config):
            # Another search's (the code or the context changed): start afresh.
            self.path.unlink()
            paths.previous_of(self.path).unlink(missing_ok=True)
        loop = Loop([self.net], self.stage())
        self._began, self._said = time.perf_counter(), None
        try:
            with distributed.alone():  # every rank searches in full, as one process
                loop.run()
        except Interrupted as stop:
            raise Interrupted(stop.signum, stop.iteration, "gem_miner step") from None
        except TrainingDiverged:
            raise TrainingDiverged(
                f"gem_miner: the loss became NaN or infinite by step {loop.state.iteration}; "
                "lower --gem_miner_lr"
            ) from None
        mask = {n: m.clone() for n, m in self.ctx.mask.items()}
        for n, a in zip(self.names, self.net.alive(), strict=True):
            mask[n] = a.to(self.ctx.mask[n].device).contiguous().clone()
        kept = sum(int(mask[n].sum()) for n in self.names)
        if kept != self.target:  # the schedule's last event lands on the target
            raise AssertionError(f"gem_miner kept {kept}, expected {self.target}")
        return mask


def _non_affine(start_model: Model) -> Model:
    """A copy (the lottery trains the start model) whose BatchNorm layers have no affine
    parameters (γ = 1, β = 0), as the released code's NonAffineBatchNorm, normalizing
    with the batch statistics; every parameter frozen."""
    model = copy.deepcopy(start_model).train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.weight, module.bias, module.affine = None, None, False
    return model.requires_grad_(False)
