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

The search is a pure function of (seed, step): the data order of epoch e comes from
(seed, e) and the augmentation of step t from (seed, t), so a search resumed from its
checkpoint (`gem_miner_checkpoint.pt` in the level's folder, written at every pruning
event) ends with the mask an uninterrupted one finds.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm import tqdm

from open_lth.foundations import formats, registries
from open_lth.foundations.errors import TrainingDiverged, UserError
from open_lth.foundations.hparams import Hparams, PruningHparams, hp
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model
from open_lth.foundations.step import Step
from open_lth.foundations.store import atomic_torch_save, torch_load
from open_lth.lottery.strategy import PruneContext, Strategy
from open_lth.pruning.at_init import AtInitHparams, resolve_density
from open_lth.pruning.select import remove_lowest, survivors
from open_lth.training.data import derive_seed
from open_lth.training.signals import Interrupted, signals_to_flag
from open_lth.training.trainer import iterations_per_epoch

CHECKPOINT = "gem_miner_checkpoint.pt"


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


class _Search:
    """One score search: its state lives on the device, its checkpoint in ctx.workdir."""

    def __init__(self, ctx: PruneContext, ignore: list[str], hparams: GemMinerHparams) -> None:
        self.ctx = ctx
        self.hparams = hparams
        self.device = device = ctx.train_data.device
        self.names = [n for n in ctx.mask if n not in ignore]
        if not self.names:
            raise UserError("gem_miner: every prunable layer is in --pruning_layers_to_ignore")
        previous = {n: m.to(device, torch.bool) for n, m in ctx.mask.items()}
        total = sum(previous[n].numel() for n in self.names)
        self.n0 = sum(int(previous[n].sum()) for n in self.names)
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
        ipe = iterations_per_epoch(ctx.train_data, ctx.batch_size)
        self.ipe = ipe
        self.steps = Step.from_str(hparams.gem_miner_steps, ipe, "--gem_miner_steps").iteration
        every = Step.from_str(hparams.gem_miner_prune_every, ipe, "--gem_miner_prune_every")
        self.every = every.iteration
        self.event_steps = prune_events(self.steps, self.every, ipe)
        if not self.event_steps:
            raise UserError(
                f"--gem_miner_steps {hparams.gem_miner_steps} leaves no prune event with "
                f"--gem_miner_prune_every {hparams.gem_miner_prune_every}"
            )
        self.events = len(self.event_steps)

        # A copy (the lottery trains ctx.start_model) in train mode, whose BatchNorm
        # layers have no affine parameters (γ = 1, β = 0), as the released code's
        # NonAffineBatchNorm, and normalize with the batch statistics.
        self.model = copy.deepcopy(ctx.start_model).to(device).train()
        for module in self.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight, module.bias, module.affine = None, None, False
        self.model.requires_grad_(False)
        params = dict(self.model.named_parameters())
        self.weights = {n: params[n].detach() for n in self.names}
        # Ignored layers: their masked weights, constant.
        ignored = [n for n in ctx.mask if n not in self.names]
        self.fixed = {n: params[n].detach() * previous[n].to(params[n].dtype) for n in ignored}

        g = torch.Generator().manual_seed(ctx.seed)
        self.alive = [previous[n].clone() for n in self.names]
        self.scores = [
            (torch.rand(previous[n].shape, generator=g).to(device) * a).requires_grad_()
            for n, a in zip(self.names, self.alive, strict=True)
        ]
        # The regularizer λ·Σ s² enters as its gradient 2λ·s through SGD's weight decay:
        # the same update, without a reduction and its backward every step.
        self.optimizer = torch.optim.SGD(
            self.scores,
            lr=hparams.gem_miner_lr,
            momentum=hparams.gem_miner_momentum,
            weight_decay=2 * hparams.gem_miner_lambda,
        )
        self.step = 0
        self._update_masked()
        self.path = ctx.workdir / CHECKPOINT
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

    # --- checkpoint ---

    def _save(self) -> None:
        atomic_torch_save(
            self.path,
            {
                "config": self.config,
                "step": self.step,
                "scores": {n: s.detach() for n, s in zip(self.names, self.scores, strict=True)},
                "alive": dict(zip(self.names, self.alive, strict=True)),
                "optimizer": self.optimizer.state_dict(),
            },
        )

    def _resume(self) -> None:
        if not self.path.exists():
            return
        ckpt = torch_load(self.path, self.device)
        if ckpt.get("config") != self.config:
            return  # another search's (the code or the context changed): start afresh
        with torch.no_grad():
            for n, s, a in zip(self.names, self.scores, self.alive, strict=True):
                s.copy_(ckpt["scores"][n])
                a.copy_(ckpt["alive"][n])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])

    # --- the search ---

    def _update_masked(self) -> None:
        """The frozen weights with the current survivors (and the previous mask) applied:
        a removed weight is 0, so its score gets no gradient."""
        self.masked = [
            self.weights[n] * a.to(self.weights[n].dtype)
            for n, a in zip(self.names, self.alive, strict=True)
        ]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The cross-entropy of the network with weight·1[score > 0.5] (the regularizer
        λ·Σ score² enters through the optimizer's weight decay)."""
        weights = dict(self.fixed)
        for n, w, s in zip(self.names, self.masked, self.scores, strict=True):
            weights[n] = _MaskedWeight.apply(w, s)
        output = functional_call(self.model, weights, (x,))
        return F.cross_entropy(output.float(), y)

    def _prune_event(self, event: int) -> None:
        keep = kept_after(event, self.events, self.n0, self.target)
        values, alive = survivors(self.scores, self.alive)
        if keep >= len(values):
            return
        with torch.no_grad():
            for s, a, gone in zip(
                self.scores,
                self.alive,
                remove_lowest(values, alive, len(values) - keep),
                strict=True,
            ):
                a.view(-1)[gone] = False
                s.view(-1)[gone] = 0
                buffer = self.optimizer.state.get(s, {}).get("momentum_buffer")
                if buffer is not None:
                    buffer.view(-1)[gone] = 0

    def run(self) -> Mask:
        self._resume()
        hparams, ctx = self.hparams, self.ctx
        data = ctx.train_data
        order_seed = derive_seed("gem_miner_order", ctx.seed)
        augment_seed = derive_seed("gem_miner_augment", ctx.seed)
        generator = torch.Generator(self.device) if data.augmentation else None
        order, order_epoch = None, -1
        bs = ctx.batch_size
        self._update_masked()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        last = self.event_steps[-1]
        bar = tqdm(
            total=last,
            initial=self.step,
            disable=ctx.quiet or not sys.stderr.isatty(),
            unit="it",
            desc="gem_miner",
            dynamic_ncols=True,
        )
        with signals_to_flag() as stop, bar:
            while self.step < last:
                if stop.signum is not None:  # preempted, or Slurm's time limit: save, stop
                    self._save()
                    raise Interrupted(stop.signum, self.step, "gem_miner step")
                it = self.step
                epoch = it // self.ipe
                if epoch != order_epoch:
                    order, order_epoch = data.order(order_seed, epoch), epoch
                index = order[(it % self.ipe) * bs : (it % self.ipe + 1) * bs]
                if generator is not None:
                    generator.manual_seed(derive_seed("augment", augment_seed, it))
                x, y = data.batch(index, generator)
                for group in self.optimizer.param_groups:
                    group["lr"] = cosine_lr(hparams.gem_miner_lr, it, self.steps)
                loss = self.loss(x, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                with torch.no_grad():
                    # Removed scores stay 0: no gradient (their weight is masked), no
                    # momentum (cleared when removed), and 2λ·0 = 0.
                    torch._foreach_clamp_min_(self.scores, 0.0)
                    torch._foreach_clamp_max_(self.scores, 1.0)
                    loss_sum += loss.detach()
                self.step = it + 1
                bar.update(1)
                if self.step in self.event_steps:
                    if not torch.isfinite(loss_sum):
                        raise TrainingDiverged(
                            f"gem_miner: the loss became NaN or infinite by step {self.step}; "
                            "lower --gem_miner_lr"
                        )
                    self._prune_event(self.event_steps.index(self.step) + 1)
                    self._update_masked()
                    self._save()
                    loss_sum.zero_()

        mask = {n: m.clone() for n, m in ctx.mask.items()}
        for n, a in zip(self.names, self.alive, strict=True):
            mask[n] = a.to(ctx.mask[n].device).clone()
        kept = sum(int(mask[n].sum()) for n in self.names)
        if kept != self.target:  # the schedule's last event lands on the target
            raise AssertionError(f"gem_miner kept {kept}, expected {self.target}")
        self.path.unlink(missing_ok=True)
        return mask
