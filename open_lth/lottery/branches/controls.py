"""The standard lottery-ticket controls, each training one network into `main/`:

- randomly_reinitialize: the level's mask on fresh random weights;
- randomly_prune: a random mask of the level's density (per layer or global) on the
  level's starting weights, where weights the lottery pruned keep their values;
- retrain: the level's mask and starting weights with other training hparams.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from open_lth.foundations import masks, paths, registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import Hparams, TrainingHparams, hp
from open_lth.foundations.masks import Mask, apply_mask
from open_lth.foundations.model import Model
from open_lth.foundations.store import atomic_write_json
from open_lth.lottery.branches.base import Branch, BranchContext
from open_lth.lottery.levels import refuse_collapse
from open_lth.training import stage
from open_lth.training.data import derive_seed
from open_lth.training.trainer import Copy


class TrainingBranch(Branch):
    """A control: one network, trained like a level, into `<branch>/main/`."""

    def is_done(self, out: Path) -> bool:
        return stage.is_done(paths.main(out))

    def training(self, ctx: BranchContext) -> TrainingHparams:
        return ctx.levels.desc.training

    @staticmethod
    def network(branch: Branch, ctx: BranchContext) -> tuple[Model, Mask, int]:
        raise NotImplementedError

    def run(self, ctx: BranchContext) -> str:
        model, mask, start = self.network(ctx)
        out = paths.main(ctx.out)
        out.mkdir(parents=True, exist_ok=True)
        masks.save(mask, paths.mask(out))
        atomic_write_json(out / "sparsity_report.json", masks.report(mask, ctx.levels.ignored))
        model.to(ctx.job.platform.device)
        apply_mask(model, mask)
        training = self.training(ctx)
        seeds = stage.default_seeds(training, ctx.levels.replicate)
        copies = [Copy(out, seeds, mask)]
        described = stage.describe(
            ctx.levels.data, training, copies, ctx.job, start_iteration=start
        )
        summary = stage.run_stage(model, described, ctx.job)
        return f"test accuracy {summary['final_test_accuracy']:.4f}"


@dataclass
class ReinitHparams(Hparams):
    reinit_seed: int = hp(1, "seed of the fresh random weights")
    start_at_step_zero: bool = hp(
        False,
        "train from step 0 of the schedule (default: from the level's start, the rewinding "
        "step k, like the ticket it controls, as open_lth's branch)",
    )

    _name: ClassVar[str] = "Random Reinitialization Hyperparameters"


@registries.branches.register("randomly_reinitialize")
class RandomlyReinitialize(TrainingBranch):
    hparams_type = ReinitHparams
    description = "the level's mask on fresh random weights (seeded), trained from its start"

    def start_iteration(self, ctx: BranchContext) -> int:
        if self.hparams.start_at_step_zero:
            return 0
        return ctx.levels.start_iteration(ctx.level)

    def changed_since(self, made: int, ctx: BranchContext) -> str | None:
        k = self.start_iteration(ctx)
        if made >= 2 or k == 0:
            return None
        return (
            f"randomly_reinitialize trained from step 0, it now trains from the level's start "
            f"(step {k}) as open_lth does; for the old behaviour add --start_at_step_zero "
            "(a new branch folder), or move this one away to recompute it"
        )

    def network(self, ctx: BranchContext) -> tuple[Model, Mask, int]:
        seed = derive_seed(
            "branch_reinit", self.hparams.reinit_seed, ctx.levels.replicate, ctx.level
        )
        model = ctx.levels.new_model(seed=seed)
        return model, ctx.levels.mask(ctx.level), self.start_iteration(ctx)


@dataclass
class RandomPruneHparams(Hparams):
    random_mask_seed: int = hp(1, "seed of the random mask")
    random_mask_scope: str = hp(
        "layerwise", "keep the level's density per layer (layerwise) or in total (global)"
    )

    _name: ClassVar[str] = "Random Pruning Hyperparameters"

    def validate(self) -> None:
        if self.random_mask_scope not in ("layerwise", "global"):
            raise UserError(
                f"--random_mask_scope must be layerwise or global; got '{self.random_mask_scope}'"
            )


def random_mask(mask: Mask, ignored: list[str], scope: str, seed: int) -> Mask:
    """As many kept weights as `mask` (per layer, or in total over the non-ignored
    layers), placed uniformly at random; ignored layers keep their mask."""
    g = torch.Generator().manual_seed(seed)
    names = [n for n in mask if n not in ignored]
    new = {n: m.clone() for n, m in mask.items()}
    groups = [[n] for n in names] if scope == "layerwise" else [names]
    for group in groups:
        sizes = [mask[n].numel() for n in group]
        kept = sum(int(mask[n].sum()) for n in group)
        flat = torch.zeros(sum(sizes), dtype=torch.bool)
        flat[torch.randperm(len(flat), generator=g)[:kept]] = True
        for n, part in zip(group, flat.split(sizes), strict=True):
            new[n] = part.view_as(mask[n])
    return new


@registries.branches.register("randomly_prune")
class RandomlyPrune(TrainingBranch):
    hparams_type = RandomPruneHparams
    description = "a random mask of the level's density on the level's starting weights"

    def mask(self, ctx: BranchContext) -> Mask:
        levels = ctx.levels
        seed = derive_seed(
            "random_mask", self.hparams.random_mask_seed, levels.replicate, ctx.level
        )
        return random_mask(
            levels.mask(ctx.level), levels.ignored, self.hparams.random_mask_scope, seed
        )

    def check(self, ctx: BranchContext) -> None:
        # A global draw at high sparsity can leave a small layer (LeNet's output layer)
        # empty, though the level's own mask keeps some of it.
        scope = self.hparams.random_mask_scope
        what = f"randomly_prune --random_mask_scope={scope} at level {ctx.level}"
        instead = "use --random_mask_scope=layerwise or another --random_mask_seed"
        refuse_collapse(self.mask(ctx), ctx.levels.desc.pruning, what, instead)

    def network(self, ctx: BranchContext) -> tuple[Model, Mask, int]:
        model, start = ctx.levels.starting_model(ctx.level)  # unmasked: nothing zeroed before
        return model, self.mask(ctx), start


# `--retrain_<field>` for every training hparam; unset ones keep the lottery's value.
RetrainHparams = dataclasses.make_dataclass(
    "RetrainHparams",
    [
        (f"retrain_{f.name}", f"{f.type} | None" if f.type != "bool" else "bool",
         hp(False if f.type == "bool" else None, f"{f.metadata['help']} (default: the lottery's)"))
        for f in dataclasses.fields(TrainingHparams)
    ],
    bases=(Hparams,),
    namespace={"_name": "Retraining Hyperparameters"},
)  # fmt: skip


@registries.branches.register("retrain")
class Retrain(TrainingBranch):
    hparams_type = RetrainHparams
    description = "the level's mask and starting weights, trained with other training hparams"

    def training(self, ctx: BranchContext) -> TrainingHparams:
        base = ctx.levels.desc.training
        changes = {
            name.removeprefix("retrain_"): value
            for name, value in self.hparams.to_dict().items()
            if value is not None and value is not False
        }
        return dataclasses.replace(base, **changes)

    def check(self, ctx: BranchContext) -> None:
        training = self.training(ctx)
        end = ctx.levels.data.end(training)
        start = ctx.levels.start_iteration(ctx.level)
        if end <= start:
            raise UserError(f"--retrain_training_steps must be past the level's start ({start}it)")

    def network(self, ctx: BranchContext) -> tuple[Model, Mask, int]:
        model, start = ctx.levels.starting_model(ctx.level)
        return model, ctx.levels.mask(ctx.level), start
