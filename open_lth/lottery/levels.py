"""The levels of a lottery run: where each level lives, its mask, and where its
surviving weights start. The lottery runner and the branches share these.

<root>/lottery_<hash>/replicate_<r>/level_<L>/main/
    mask.pt                 the level's mask (level 0: all ones)
    sparsity_report.json    kept counts and fractions, total and per layer
    weights_it<k>.pt        the starting weights (k = 0, or the rewinding step)
    weights_it<end>.pt      the trained weights; with level L+1's mask they give the
                            magnitudes of what level L+1 pruned
    metrics.csv, summary.json, hparams.json/txt   as for `train`, plus the supermask
                            accuracy at the first step: the masked network before
                            training (untrained, except at the levels past 0 of a
                            rewinding run, where it holds the dense run's step-k
                            weights); with BatchNorm also with re-estimated statistics
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from open_lth.foundations import formats, masks, paths
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import PruningHparams
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model, build_model
from open_lth.foundations.store import atomic_write_json
from open_lth.lottery.desc import LotteryDesc
from open_lth.lottery.strategy import PruneContext, Strategy
from open_lth.training import stage
from open_lth.training.data import derive_seed
from open_lth.training.evaluation import evaluate
from open_lth.training.interpolation import recompute_bn_stats
from open_lth.training.stage import Data, check_model_fits, load_weights


def parse_levels(text: str, flag: str = "--levels") -> list[int]:
    """'0,3-5' -> [0, 3, 4, 5] (also --replicates)."""
    what = flag.removeprefix("--")
    levels: set[int] = set()
    ranges: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            ranges.append((int(low), int(high or low)))
    except ValueError:
        raise UserError(f"{flag} '{text}': write {what} like 0,3-5") from None
    for low, high in ranges:
        if high < low:  # an empty range would silently drop these levels
            raise UserError(
                f"{flag} '{text}': the range {low}-{high} is reversed; write {high}-{low}"
            )
        levels.update(range(low, high + 1))
    if not levels or min(levels) < 0:
        raise UserError(f"{flag} '{text}': write {what} like 0,3-5")
    return sorted(levels)


def level_dir(replicate_dir: Path, level: int) -> Path:
    return paths.level_main(replicate_dir, level)


@dataclass
class Levels:
    """One replicate of a lottery run, with its data loaded."""

    desc: LotteryDesc
    replicate: int
    replicate_dir: Path
    data: Data
    quiet: bool = False
    cuda_graphs: str = "auto"

    @property
    def end(self) -> int:
        return self.data.end(self.desc.training)

    @property
    def rewind(self) -> int:
        steps = self.desc.lottery.rewinding_steps
        return self.data.step(steps, "--rewinding_steps") if steps else 0

    @property
    def ignored(self) -> list[str]:
        return self.desc.pruning.ignored

    def strategy(self) -> Strategy:
        return self.desc.make_strategy()

    def start_iteration(self, level: int) -> int:
        """Where the level's training starts: k for the levels past 0 of a rewinding
        run, else 0."""
        if level == 0 or self.desc.lottery.reinitialize:
            return 0
        return self.rewind

    def new_model(self, seed: int | None = None) -> Model:
        seed = self.replicate if seed is None else seed
        return build_model(self.desc.model, self.data.num_classes, seed=seed)

    def check(self, model: Model) -> None:
        """Bad values that need the model or the data; raised before anything is written."""
        check_model_fits(
            model, self.data, self.desc.model.model_name, self.desc.dataset.dataset_name
        )
        unknown = [n for n in self.ignored if n not in model.prunable_layer_names]
        if unknown:
            raise UserError(
                f"--pruning_layers_to_ignore: {', '.join(unknown)} is not a prunable weight of "
                f"{self.desc.model.model_name}; prunable: {', '.join(model.prunable_layer_names)}"
            )
        if self.rewind >= self.end:
            raise UserError(
                f"--rewinding_steps {self.desc.lottery.rewinding_steps} is not before the end "
                f"of training ({self.desc.training.training_steps} = {self.end}it)"
            )
        self.strategy().check(model, self.ignored, self.data.iterations_per_epoch)

    def mask(self, level: int) -> Mask:
        """The level's mask, made (and saved with its report) the first time it is asked
        for: pruning the previous level's trained weights with the strategy."""
        path = paths.mask(level_dir(self.replicate_dir, level))
        if path.exists():
            return masks.load(path)
        if level == 0:
            mask = masks.dense(self.new_model())
        else:
            previous = level_dir(self.replicate_dir, level - 1)
            trained = self.new_model()
            load_weights(trained, paths.weights(previous, self.end))
            trained.to(self.data.train.device)
            start_model, _ = self.starting_model(level)
            p = self.desc.pruning
            ctx = PruneContext(
                model=trained,
                mask=masks.load(paths.mask(previous)),
                train_data=self.data.train,
                pruning=p,
                seed=derive_seed("prune", self.replicate, level),
                level=level,
                start_model=start_model.to(self.data.train.device),
                batch_size=self.data.batch_size,
                workdir=path.parent,
                quiet=self.quiet,
                cuda_graphs=self.cuda_graphs,
            )
            strategy = self.strategy()
            mask = strategy.prune(ctx, self.ignored)
            intended = strategy.kept(ctx.mask, self.ignored, p)
            check_level_mask(ctx.mask, mask, self.ignored, intended, level, p)
        masks.save(mask, path)
        report = masks.report(mask, self.ignored)
        atomic_write_json(path.parent / "sparsity_report.json", report)
        return mask

    def starting_model(self, level: int) -> tuple[Model, int]:
        """The level's starting weights (unmasked) and the iteration training starts at:
        the trunk's init (reset), its step-k weights (rewind), or a fresh init."""
        if level > 0 and self.desc.lottery.reinitialize:
            return self.new_model(seed=derive_seed("reinit", self.replicate, level)), 0
        model = self.new_model()
        start = self.start_iteration(level)
        if level > 0:
            load_weights(model, paths.weights(level_dir(self.replicate_dir, 0), start))
        return model, start


def check_level_mask(
    previous: Mask,
    mask: Mask,
    ignored: list[str],
    intended: int | None,
    level: int,
    pruning: PruningHparams,
) -> None:
    """Before a level's mask is saved: it removes only surviving weights, none of an
    ignored layer, keeps exactly the count its strategy intends (an internal error if
    not), and leaves no layer empty unless --allow_layer_collapse (a user's line)."""
    strategy = pruning.pruning_strategy
    for n, m in mask.items():
        if (m & ~previous[n]).any() or (n in ignored and not torch.equal(m, previous[n])):
            raise RuntimeError(f"{strategy} at level {level} revived or pruned {n} wrongly")
    kept = sum(int(m.sum()) for m in mask.values())
    if intended is not None and kept != intended:
        raise RuntimeError(f"{strategy} at level {level} kept {kept} weights, intended {intended}")
    refuse_collapse(mask, pruning, f"--pruning_strategy={strategy} at level {level}", "prune less")


def refuse_collapse(mask: Mask, pruning: PruningHparams, what: str, instead: str) -> None:
    """A user's line if `mask` leaves a layer empty and the lottery does not allow it."""
    empty = [n for n, m in mask.items() if not m.any()]
    if empty and not pruning.allow_layer_collapse:
        raise UserError(
            f"layer collapse: {what} removes every weight of {', '.join(empty)}, so the output "
            f"no longer depends on the input; {instead}, or add --allow_layer_collapse (a new run)"
        )


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def supermask_metrics(model: Model, data: Data, bf16: bool = False) -> dict[str, float]:
    """The test accuracy of the masked network before training (`model`, on the device,
    with its mask applied): with the BatchNorm running statistics it holds (after a
    reset: mean 0, variance 1, which normalize nothing) and, for a model with
    BatchNorm, with them re-estimated for the masked network on the unaugmented
    training data, on a copy, so that `model` (saved and trained next) is untouched."""
    _, accuracy = evaluate(model, data.test, bf16=bf16)
    metrics = {"supermask_test_accuracy": accuracy}
    if has_batchnorm(model):
        net = copy.deepcopy(model)
        recompute_bn_stats(net, data.train, 1, data.batch_size)
        _, metrics["supermask_test_accuracy_bn_recomputed"] = evaluate(net, data.test, bf16=bf16)
    return metrics


def existing_levels(replicate_dir: Path) -> list[int]:
    return [n for n, _ in paths.numbered(replicate_dir, "level")]


def check_format(desc: LotteryDesc, replicate_dir: Path) -> None:
    """Refuse a replicate with a pruned level made under rules that changed what this
    description computes (see open_lth.foundations.formats). Level 0, the dense run, is the same
    under every format."""
    strategy = desc.strategy_type
    model = None
    for level in existing_levels(replicate_dir):
        out = level_dir(replicate_dir, level)
        made = formats.of(out)
        if level == 0 or made is None or made >= formats.FORMAT:
            continue
        # A change may touch some networks only (SNIP's BatchNorm mode): built once, and
        # only for an old folder.
        if model is None:
            model = build_model(desc.model)
        what = strategy.changed_since(made, desc.pruning, model)
        if what:
            raise formats.refuse(out, made, what)


def summary_table(replicate_dir: Path) -> str:
    """Level, % of weights remaining, best and final test accuracy, supermask accuracy
    (with re-estimated BatchNorm statistics too where the model has BatchNorm)."""
    rows, bn, rewound = [], False, set()
    level = 0
    while (level_dir(replicate_dir, level) / "sparsity_report.json").exists():
        out = level_dir(replicate_dir, level)
        density = json.loads((out / "sparsity_report.json").read_text())["density"]
        s = stage.read_summary(out) if stage.is_done(out) else None
        if s is not None:
            bn |= "supermask_test_accuracy_bn_recomputed" in s
            if s.get("start_iteration"):
                rewound.add(s["start_iteration"])
        rows.append((level, density, s))
        level += 1
    if level == 0:
        return f"no levels yet in {replicate_dir}"
    keys = ["best_test_accuracy", "final_test_accuracy", "supermask_test_accuracy"]
    header = f"{'level':>5} {'remaining %':>12} {'best acc':>9} {'final acc':>9} {'supermask':>9}"
    if bn:
        keys.append("supermask_test_accuracy_bn_recomputed")
        header += f" {'supermask (BN re-estimated)':>27}"
    lines = [header]
    for level, density, s in rows:
        if s is None:
            cells = f"{'(not finished)':>29}"
        else:
            cells = " ".join(f"{s.get(k, float('nan')):>9.4f}" for k in keys[:3])
            if bn:
                cells += f" {s.get(keys[3], float('nan')):>27.4f}"
        lines.append(f"{level:>5} {100 * density:>12.2f} {cells}")
    if rewound:
        k = ", ".join(f"{i}it" for i in sorted(rewound))
        lines.append(
            f"(levels past 0 start from the dense run's weights at step {k}: their supermask "
            "is the masked network with those weights, not an untrained one)"
        )
    return "\n".join(lines)
