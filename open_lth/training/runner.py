"""`main.py train`: train one model and keep its curve, weights and checkpoints.

<root>/train_<hash>/replicate_<r>/main/
    hparams.json, hparams.txt   the run's description
    weights_it0.pt              weights at the start
    weights_it<end>.pt          weights at the end
    metrics.csv                 iteration,name,value (appended as training goes)
    checkpoint.pt               while running: resume point (removed at the end)
    summary.json                written last: the run is done
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from open_lth.foundations import paths, registries
from open_lth.foundations.desc import Desc
from open_lth.foundations.hparams import (
    DatasetHparams,
    DefaultHparams,
    ModelHparams,
    TrainingHparams,
)
from open_lth.foundations.model import build_model
from open_lth.foundations.runner import Runner
from open_lth.foundations.store import RunLock
from open_lth.training import stage
from open_lth.training.job import Job, add_job_args, create_job
from open_lth.training.trainer import Copy


@dataclass
class TrainingDesc(Desc):
    dataset: DatasetHparams
    model: ModelHparams
    training: TrainingHparams

    prefix: ClassVar[str] = "train"


@registries.subcommands.register("train")
class TrainingRunner(Runner):
    description = "Train a model."

    def __init__(self, desc: TrainingDesc, job: Job) -> None:
        self.desc = desc
        self.job = job

    @staticmethod
    def add_args(parser: argparse.ArgumentParser, defaults: DefaultHparams | None) -> None:
        add_job_args(parser)
        TrainingDesc.add_args(parser, defaults)

    @classmethod
    def create_from_args(cls, args: argparse.Namespace) -> TrainingRunner:
        desc = TrainingDesc.create_from_args(args)
        registries.models.get(desc.model.model_name)
        registries.datasets.get(desc.dataset.dataset_name)
        registries.initializers.get(desc.model.model_init)
        return cls(desc, create_job(args))

    @property
    def output_location(self) -> Path:
        run_dir = self.job.platform.root / self.desc.hashname
        return paths.main(paths.replicate(run_dir, self.job.replicate))

    def run(self) -> None:
        out = self.output_location
        if stage.is_done(out):
            print(f"already finished; results in {out}")
            return
        # Everything that can fail on bad input happens before the first file is written.
        d = stage.load_data(self.desc.dataset, self.job)
        d.end(self.desc.training)  # a user error before anything is written
        model = build_model(self.desc.model, d.num_classes, seed=self.job.replicate)
        stage.check_model_fits(model, d, self.desc.model.model_name, self.desc.dataset.dataset_name)
        if not self.job.options.quiet:
            print(self.desc.display())
            print(f"Output location: {out}")
        with RunLock(out.parent):
            self.desc.save(out)
            seeds = stage.default_seeds(self.desc.training, self.job.replicate)
            described = stage.describe(d, self.desc.training, [Copy(out, seeds)], self.job)
            summary = stage.run_stage(model, described, self.job)
        print(
            f"done: test accuracy {summary['final_test_accuracy']:.4f} at iteration "
            f"{summary['end_iteration']}; results in {out}"
        )
