"""What a stage is and how it is asked to train: `Stage` describes one (its hparams,
data, copies, start and where it saves) and `Loop(models, stage).run()` trains its K
copies (open_lth.training.loop); `train` is the one-run shorthand for scripts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from open_lth.foundations.errors import TrainingDiverged, UserError
from open_lth.foundations.hparams import TrainingHparams
from open_lth.foundations.masks import Mask
from open_lth.foundations.model import Model
from open_lth.foundations.step import Step
from open_lth.training.data import DeviceData
from open_lth.training.loop import Loop


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


@dataclass
class Copy:
    """Where one copy writes, the seeds of its SGD noise, and (in a pack of independent
    runs) its own mask and the metrics logged with its first evaluation."""

    out: Path | None
    seeds: Seeds
    mask: Mask | None = None
    start_metrics: dict[str, float] | None = None


def training_end(training_steps: str, iterations_per_epoch: int) -> int:
    """--training_steps in iterations: the one place it is converted (a stage's end,
    a lottery's levels', the checks before anything is written)."""
    end = Step.from_str(training_steps, iterations_per_epoch, "--training_steps").iteration
    if end <= 0:
        raise UserError(f"--training_steps must be positive, got {training_steps}")
    return end


def iterations_per_epoch(train: DeviceData, batch_size: int) -> int:
    """Whole batches only: every step sees `batch_size` examples."""
    return max(1, len(train) // batch_size)


@dataclass
class Stage:
    """One stage: K ≥ 1 copies trained from `start_iteration` to the end of
    `hparams.training_steps` (turned into iterations here, once).

    `checkpoint`: the one stacked file of copies that are one job (an instability
    pair: a diverging copy stops them all); None: each copy checkpoints into its own
    folder exactly as it would alone (a lone run, or a pack of independent runs, where
    a copy whose loss turns NaN stops alone). `save_iterations` are extra weights to
    keep; `mask` applies to copies without their own.

    A stage that is not a run (Gem-Miner's score search) has no `test` data (no
    evaluation, no metrics) and copies without an `out` (no weights); it may set its
    own learning rate (`schedule`), work inside the step (`after_step`) and between
    steps (`at_iteration(loop, it)`, not again at the iteration it resumes at), and
    checkpoint at given iterations only (`checkpoint_iterations`), tagged with what
    made it (`checkpoint_tag`)."""

    hparams: TrainingHparams
    train: DeviceData
    test: DeviceData | None
    batch_size: int
    copies: list[Copy]
    options: TrainOptions
    checkpoint: Path | None = None
    mask: Mask | None = None
    start_iteration: int = 0
    save_iterations: tuple[int, ...] = ()
    schedule: Callable[[int], float] | None = None
    after_step: Callable[[], None] | None = None
    at_iteration: Callable[[Loop, int], None] | None = None
    checkpoint_iterations: tuple[int, ...] | None = None
    checkpoint_tag: dict | None = None
    iterations_per_epoch: int = dataclasses.field(init=False)
    end: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.iterations_per_epoch = iterations_per_epoch(self.train, self.batch_size)
        self.end = training_end(self.hparams.training_steps, self.iterations_per_epoch)

    def lanes(self) -> int:
        return lanes(len(self.copies), self.checkpoint, self.options)


def lanes(copies: int, checkpoint_path: Path | None, options: TrainOptions) -> int:
    """How many networks (Lanes) a pack of `copies` runs trains as: --pack_streams, or
    the largest divisor of `copies` below it. The copies of one job (an instability
    pair, with its one stacked checkpoint) stay one network."""
    if checkpoint_path is not None:
        return 1
    return max(d for d in range(1, min(options.pack_streams, copies) + 1) if copies % d == 0)


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
    `hparams.training_steps`, writing metrics, weights and checkpoints into `out`: a
    stage of one copy. Resumes from `out/checkpoint.pt` when there is one;
    `start_metrics` are logged with the first evaluation (e.g. a supermask accuracy)."""
    copies = [Copy(out, seeds, mask, start_metrics)]
    stage = Stage(hparams, train_data, test_data, batch_size, copies, options)
    stage.start_iteration, stage.save_iterations = start_iteration, save_iterations
    diverged = Loop([model], stage).run()
    if diverged:
        raise TrainingDiverged(diverged[0])
