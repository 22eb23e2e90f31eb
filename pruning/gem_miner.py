"""Gem-Miner (Sreenivasan et al. 2022, "Rare Gems: Finding Lottery Tickets at
Initialization"): a sparse mask found at initialization by training scores, not weights.

Every surviving prunable weight w gets a score s ∈ [0, 1] (U(0, 1) at the start). The
network runs with w·1[s > 0.5] and the frozen starting weights; the rounding passes its
gradient straight through (d mask/d s = 1), so the scores train by SGD on
cross-entropy + λ·Σ s², clamped to [0, 1] after every step. Every `--gem_miner_prune_every`
steps (and at the last step) the lowest surviving scores are removed globally, on a
geometric schedule that lands exactly on the target count at the last step:

    kept after event j of J = round(n₀ · (target / n₀)^(j / J)),   the last one = target

where n₀ counts the weights that survive the previous mask in the scored layers and
target = round(target_density × (all weights of the scored layers)). The mask is those
survivors. Layers in --pruning_layers_to_ignore get no scores and keep their mask.

The search is a pure function of (seed, step): the data order of epoch e comes from
(seed, e) and the augmentation of step t from (seed, t), so a search resumed from its
checkpoint (`gem_miner_checkpoint.pt` in the level's folder, written at every pruning
event) ends with the mask an uninterrupted one finds.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm import tqdm

from open_lth import registries
from open_lth.data import derive_seed
from open_lth.errors import TrainingDiverged, UserError
from open_lth.hparams import Hparams, PruningHparams, hp
from open_lth.step import Step
from open_lth.store import atomic_torch_save, torch_load
from open_lth.strategy_base import Mask, PruneContext, Strategy
from open_lth.trainer import iterations_per_epoch
from pruning.select import lowest

CHECKPOINT = "gem_miner_checkpoint.pt"


@dataclass
class GemMinerHparams(Hparams):
    target_density: float | None = hp(
        None,
        "fraction of the prunable (non-ignored) weights kept; default: the density that "
        "--levels levels of --pruning_fraction pruning reach, e.g. 0.8^8 = 0.168",
    )
    gem_miner_steps: str = hp("2ep", "length of the score search, e.g. 2ep or 4000it")
    gem_miner_lr: float = hp(0.1, "SGD learning rate of the scores (cosine schedule)")
    gem_miner_momentum: float = hp(0.9, "SGD momentum of the scores")
    gem_miner_lambda: float = hp(1e-4, "weight λ of the regularizer λ·Σ score²")
    gem_miner_prune_every: str = hp(
        "1ep", "remove the lowest scores every this many search steps (and at the end)"
    )

    _name: ClassVar[str] = "Gem-Miner Hyperparameters"
    _description: ClassVar[str] = "The score search that finds the mask at initialization."
    _step_fields: ClassVar[tuple[str, ...]] = ("gem_miner_steps", "gem_miner_prune_every")

    def validate(self) -> None:
        d = self.target_density
        if d is not None and not 0 < d < 1:
            raise UserError(f"--target_density must be in (0, 1), got {d}")
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


def cosine_lr(lr: float, step: int, steps: int) -> float:
    return 0.5 * lr * (1 + math.cos(math.pi * step / steps))


@registries.strategies.register("gem_miner")
class GemMinerStrategy(Strategy):
    hparams_type = GemMinerHparams
    one_shot = True
    description = "Gem-Miner: train scores of the frozen initial weights, prune to --target_density"

    @classmethod
    def resolve(
        cls, hparams: Hparams | None, levels: int, pruning: PruningHparams
    ) -> GemMinerHparams:
        hparams = hparams if hparams is not None else GemMinerHparams()
        if hparams.target_density is not None:
            return hparams
        # Exact: (1 - 0.2)^8 is 0.16777216, not 0.1677721600000001, in the run name.
        density = float((1 - Fraction(repr(pruning.pruning_fraction))) ** max(levels, 1))
        if density <= 0:
            raise UserError(
                f"--levels {levels} of --pruning_fraction {pruning.pruning_fraction} keep no "
                "weights; give --target_density"
            )
        return dataclasses.replace(hparams, target_density=density)

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
        self.events = math.ceil(self.steps / self.every)

        # BatchNorm runs in train mode on a copy: the lottery trains ctx.start_model.
        self.model = copy.deepcopy(ctx.start_model).to(device).train()
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
            "every": self.every,
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
        alive = [a.reshape(-1).nonzero().squeeze(1) for a in self.alive]
        count = sum(len(a) for a in alive)
        if keep >= count:
            return
        values = torch.cat(
            [s.detach().reshape(-1)[a] for s, a in zip(self.scores, alive, strict=True)]
        )
        # Ties go to the lower index (layer order, then position), as in the selector.
        chosen = lowest(values, count - keep)
        offsets = [0]
        for a in alive:
            offsets.append(offsets[-1] + len(a))
        with torch.no_grad():
            for i, (s, a) in enumerate(zip(self.scores, self.alive, strict=True)):
                here = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
                gone = alive[i][here]
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
        bar = tqdm(
            total=self.steps,
            initial=self.step,
            disable=ctx.quiet or not sys.stderr.isatty(),
            unit="it",
            desc="gem_miner",
            dynamic_ncols=True,
        )
        with bar:
            while self.step < self.steps:
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
                if self.step % self.every == 0 or self.step == self.steps:
                    if not torch.isfinite(loss_sum):
                        raise TrainingDiverged(
                            f"gem_miner: the loss became NaN or infinite by step {self.step}; "
                            "lower --gem_miner_lr"
                        )
                    self._prune_event(math.ceil(self.step / self.every))
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
