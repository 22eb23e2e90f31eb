"""One training stage in one directory: what `train`, each lottery level and each
branch copy share. It is done when `summary.json` exists (written last)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from open_lth.foundations import paths, registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.hparams import DatasetHparams, TrainingHparams
from open_lth.foundations.model import Model
from open_lth.foundations.platform import check_dataset_root
from open_lth.foundations.step import Step
from open_lth.foundations.store import atomic_write_json, torch_load
from open_lth.training import data
from open_lth.training.data import DeviceData
from open_lth.training.job import Job
from open_lth.training.loop import Loop
from open_lth.training.metrics import read_rows
from open_lth.training.trainer import Copy, Seeds, Stage, iterations_per_epoch, training_end


@dataclass
class Data:
    train: DeviceData
    test: DeviceData
    num_classes: int
    batch_size: int

    @property
    def iterations_per_epoch(self) -> int:
        return iterations_per_epoch(self.train, self.batch_size)

    def step(self, text: str, what: str) -> int:
        return Step.from_str(text, self.iterations_per_epoch, what).iteration

    def end(self, training: TrainingHparams) -> int:
        """Where training ends, in iterations (a user error when not positive)."""
        return training_end(training.training_steps, self.iterations_per_epoch)


def load_data(hparams: DatasetHparams, job: Job) -> Data:
    check_dataset_root(job.platform)
    device = job.platform.device
    train_split, classes = data.load(hparams, job.platform.dataset_root, True, device)
    test_split, _ = data.load(hparams, job.platform.dataset_root, False, device)
    return Data(train_split, test_split, classes, hparams.batch_size)


def check_model_fits(model: Model, d: Data, model_name: str, dataset_name: str) -> None:
    """A model made for other images (LeNet on CIFAR-10, a CIFAR ResNet on MNIST) would
    fail at its first step, after its run folder is made. One forward pass of a single
    zero example of the data set's shape, without gradients, finds that for every model
    and data set before anything is written, and so does a wrong number of classes."""
    shape = tuple(d.test.images.shape[1:])
    size = "x".join(map(str, shape))
    was_training = model.training
    model.eval()  # BatchNorm on one example, and nothing to update
    try:
        with torch.no_grad():
            x = torch.zeros((1, *shape), device=next(model.parameters()).device)
            out = model(x)
    except RuntimeError as e:  # the shape errors of conv, linear and view
        reason = str(e).strip().splitlines()[0]
        raise UserError(
            f"model {model_name} does not fit {dataset_name}'s {size} images ({reason}); "
            f"{models_made_for(dataset_name)}"
        ) from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, d.num_classes):
        raise UserError(
            f"model {model_name} gives {tuple(out.shape)[1:]} outputs for {dataset_name}'s "
            f"{d.num_classes} classes; {models_made_for(dataset_name)}"
        )


def models_made_for(dataset_name: str) -> str:
    """The registered models whose defaults train on `dataset_name`."""
    names = [
        name
        for name in registries.models.names()
        if registries.models.get(name).default_hparams(name).dataset.dataset_name == dataset_name
    ]
    return f"models made for {dataset_name}: {', '.join(names) or '(none registered)'}"


def summary_path(out: Path) -> Path:
    return paths.summary(out)


def is_done(out: Path) -> bool:
    return summary_path(out).exists()


def read_summary(out: Path) -> dict:
    return json.loads(summary_path(out).read_text())


def default_seeds(training: TrainingHparams, replicate: int) -> Seeds:
    order = training.data_order_seed
    augmentation = training.augmentation_seed
    return Seeds(
        data_order=replicate if order is None else order,
        augmentation=replicate if augmentation is None else augmentation,
    )


def describe(
    d: Data, training: TrainingHparams, copies: list[Copy], job: Job, **where: object
) -> Stage:
    """The stage that trains `copies` on `d` (`where`: Stage's checkpoint, mask,
    start_iteration and save_iterations)."""
    return Stage(training, d.train, d.test, d.batch_size, copies, job.options, **where)


def run_stage(model: Model, stage: Stage, job: Job) -> dict:
    """Train a stage of one copy (resuming if it was interrupted; a divergence is an
    error) and write its summary.json."""
    out = stage.copies[0].out
    out.mkdir(parents=True, exist_ok=True)
    model.to(job.platform.device)
    Loop([model], stage).run()
    summary = summarize(out)
    atomic_write_json(summary_path(out), summary)
    return summary


def summarize(out: Path) -> dict:
    rows = read_rows(paths.metrics(out))
    accuracy = [(it, v) for it, name, v in rows if name == "test_accuracy"]
    loss = [v for _, name, v in rows if name == "test_loss"]
    wall = [v for _, name, v in rows if name == "wall_seconds"]
    extra = {name: v for _, name, v in rows if name.startswith("supermask_")}
    # The evaluation at the stage's first iteration (0, or k when rewound) is of the
    # weights before this stage trained them: not a candidate for its best accuracy.
    start = accuracy[0][0]
    trained = [v for it, v in accuracy if it != start] or [accuracy[0][1]]
    return {
        **extra,
        "start_iteration": start,
        "end_iteration": accuracy[-1][0],
        "final_test_accuracy": accuracy[-1][1],
        "best_test_accuracy": max(trained),
        "final_test_loss": loss[-1],
        "wall_seconds": wall[-1],
    }


def load_weights(model: torch.nn.Module, path: Path) -> None:
    model.load_state_dict(torch_load(path))
