"""Instability analysis (Frankle et al. 2020, linear mode connectivity): two copies of
a level's network, from the same weights, trained with different SGD noise, then
evaluated along the straight line between them.

level_<L>/instability_<hash>/
    trunk/             only when --branch_rewinding_steps=k is past the level's start:
                       the level's network trained to k (with the level's own seeds)
    copy_1/, copy_2/   each copy's metrics.csv, start and end weights, summary.json
    curve.csv          alpha, split (train/test), error, loss
    instability.json   the barriers and the end errors (written last: done)
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from open_lth.foundations import paths, registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import Hparams, hp
from open_lth.foundations.masks import apply_mask
from open_lth.foundations.store import atomic_write_json, torch_load
from open_lth.lottery.branches.base import Branch, BranchContext
from open_lth.lottery.levels import has_batchnorm, level_dir
from open_lth.training import stage
from open_lth.training.interpolation import alphas, barrier, evaluate_path
from open_lth.training.loop import Loop
from open_lth.training.trainer import Copy, Seeds


@dataclass
class InstabilityHparams(Hparams):
    noise_seeds: str = hp("1,2", "the two copies' data-order and augmentation seeds, e.g. 1,2")
    interpolation_points: int = hp(30, "evenly spaced α from 0 to 1, ends included")
    bn_stats: str = hp(
        "interpolate", "BatchNorm statistics of θ(α): interpolate (like the study) or recompute"
    )
    branch_rewinding_steps: str | None = hp(
        None, "start the copies from the level's network trained to this step (default: its start)"
    )

    _name: ClassVar[str] = "Instability Hyperparameters"
    _description: ClassVar[str] = "Two copies, different SGD noise, the path between them."
    _step_fields: ClassVar[tuple[str, ...]] = ("branch_rewinding_steps",)

    @property
    def seeds(self) -> tuple[int, int]:
        try:
            a, b = (int(s) for s in self.noise_seeds.split(","))
        except ValueError:
            raise UserError(
                f"--noise_seeds '{self.noise_seeds}': give two integers, e.g. 1,2"
            ) from None
        return a, b

    def validate(self) -> None:
        a, b = self.seeds
        if a == b:
            raise UserError(f"--noise_seeds {self.noise_seeds}: the two seeds must differ")
        points = self.interpolation_points
        if points < 2:
            raise UserError(f"--interpolation_points must be at least 2 (the ends), got {points}")
        if self.bn_stats not in ("interpolate", "recompute"):
            raise UserError(f"--bn_stats must be interpolate or recompute; got '{self.bn_stats}'")


@registries.branches.register("instability")
class InstabilityBranch(Branch):
    hparams_type = InstabilityHparams
    description = "train two copies with different SGD noise; error along the path between them"

    def start(self, ctx: BranchContext) -> int:
        k = self.hparams.branch_rewinding_steps
        if k:
            return ctx.levels.data.step(k, "--branch_rewinding_steps")
        return ctx.levels.start_iteration(ctx.level)

    def start_iteration(self, ctx: BranchContext) -> int:
        return self.start(ctx)

    def check(self, ctx: BranchContext) -> None:
        levels = ctx.levels
        own = levels.start_iteration(ctx.level)
        k = self.start(ctx)
        if not own <= k < levels.end:
            raise UserError(
                f"--branch_rewinding_steps {self.hparams.branch_rewinding_steps} must be from the "
                f"level's start ({own}it) to before the end of training ({levels.end}it)"
            )

    def is_done(self, out: Path) -> bool:
        return paths.instability(out).exists()

    def run(self, ctx: BranchContext) -> str:
        levels, level, out = ctx.levels, ctx.level, ctx.out
        training = levels.desc.training
        mask = levels.mask(level)
        model, own_start = levels.starting_model(level)
        model.to(ctx.job.platform.device)
        apply_mask(model, mask)
        k = self.start(ctx)
        if k > own_start:
            trunk = level_dir(levels.replicate_dir, level)
            if not paths.weights(trunk, k).exists():
                trunk = out / "trunk"
                short = dataclasses.replace(training, training_steps=f"{k}it")
                seeds = stage.default_seeds(training, levels.replicate)
                copies = [Copy(trunk, seeds, mask)]
                described = stage.describe(
                    levels.data, short, copies, ctx.job, start_iteration=own_start
                )
                stage.run_stage(model, described, ctx.job)
            model.load_state_dict(torch_load(paths.weights(trunk, k)))
            apply_mask(model, mask)

        a, b = self.hparams.seeds
        copies = [Copy(paths.copy(out, 1), Seeds(a, a)), Copy(paths.copy(out, 2), Seeds(b, b))]
        for c in copies:
            c.out.mkdir(parents=True, exist_ok=True)
        models = [model, copy.deepcopy(model)]
        # One job: one stacked checkpoint, and a diverging copy stops both.
        where = {"checkpoint": paths.checkpoint(out), "mask": mask, "start_iteration": k}
        data = levels.data
        Loop(models, stage.describe(data, training, copies, ctx.job, **where)).run()
        for c in copies:
            atomic_write_json(stage.summary_path(c.out), stage.summarize(c.out))

        first, second = (torch_load(paths.weights(c.out, levels.end)) for c in copies)
        points = self.hparams.interpolation_points
        curve = evaluate_path(
            levels.new_model(), first, second, {"train": data.train, "test": data.test},
            points, self.hparams.bn_stats, out / "curve.csv", data.batch_size,
        )  # fmt: skip
        result = {"bn_stats": self.hparams.bn_stats, "interpolation_points": points}
        for split in ("train", "test"):
            errors = [curve[(alpha, split)][0] for alpha in alphas(points)]
            result[f"{split}_instability"] = barrier(errors)
            result[f"{split}_end_errors"] = [errors[0], errors[-1]]
        density = json.loads(
            (level_dir(levels.replicate_dir, level) / "sparsity_report.json").read_text()
        )
        result.update(start_iteration=k, level=level, density=density["density"])
        atomic_write_json(paths.instability(out), result)
        # --bn_stats only matters, and is only worth a word, where there is BatchNorm.
        bn = f" (BatchNorm statistics: {self.hparams.bn_stats})" if has_batchnorm(model) else ""
        return (
            f"train instability {result['train_instability']:.4f}, test instability "
            f"{result['test_instability']:.4f}{bn}"
        )
