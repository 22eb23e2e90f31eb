"""The job flags: where a run lives and how it is watched. None of them changes the
numbers, so none of them enters the run name."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch

from open_lth.foundations import registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.platform import Platform
from open_lth.foundations.step import Step, check_step_syntax
from open_lth.training.trackers import parse_loggers
from open_lth.training.train_step import check_mode
from open_lth.training.trainer import TrainOptions


def use_deterministic_algorithms() -> None:
    """Kernels that give the same bits every time. cuBLAS needs its workspace fixed before
    its first use. `warn_only`: PyTorch flags adaptive_avg_pool2d's CUDA backward although,
    for the whole-map pooling of these models (sizes divisible), it is the kernel without
    atomics; a test checks that a resumed GPU run is bit-identical in this mode."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


@dataclass
class Job:
    replicate: int
    platform: Platform
    options: TrainOptions


def add_job_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Job", "Where the run lives and how it is watched.")
    group.add_argument(
        "--default_hparams",
        metavar="MODEL",
        help="start from this model's default hparams, e.g. mnist_lenet_300_100",
    )
    group.add_argument(
        "--replicate", type=int, default=None, help="replicate number; seeds the init (default 1)"
    )
    group.add_argument("--platform", default="local", help="local (default) or another platform")
    group.add_argument("--root", help="where runs are stored (default: the platform's)")
    group.add_argument(
        "--dataset_root", help="where data sets are found (default: <root>/datasets)"
    )
    group.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    group.add_argument("--eval_every", help="evaluation interval, e.g. 500it (default: one epoch)")
    group.add_argument(
        "--checkpoint_every", help="checkpoint interval, e.g. 2ep (default: one epoch)"
    )
    group.add_argument(
        "--display_output_location", action="store_true", help="print the run directory and exit"
    )
    group.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    group.add_argument(
        "--cuda_graphs",
        default="auto",
        help="auto (replay each training step from a CUDA graph on CUDA), on, off",
    )
    group.add_argument(
        "--pack_streams",
        type=int,
        default=1,
        help="a pack's runs as N networks side by side, each stepping on its own CUDA "
        "stream (default 1: one stacked network)",
    )
    group.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic GPU kernels: a resumed GPU run then ends bit-identical",
    )
    group.add_argument(
        "--loggers",
        metavar="NAMES",
        help="trackers beside metrics.csv, comma-separated: tensorboard, wandb (each an "
        "optional extra: pip install -e .[tensorboard])",
    )


def create_job(args: argparse.Namespace) -> Job:
    replicate = 1 if args.replicate is None else args.replicate
    if replicate < 0:
        raise UserError(f"--replicate must be a non-negative integer, got {replicate}")
    for flag in ("eval_every", "checkpoint_every"):
        text = getattr(args, flag)
        if text:
            check_step_syntax(text, f"--{flag}")
            if Step.from_str(text, 1).iteration == 0:  # an interval of 0 would mean every step
                raise UserError(f"--{flag} must be positive, got {text}")
    platform = registries.platforms.get(args.platform)(args.root, args.dataset_root, args.device)
    check_mode(args.cuda_graphs, platform.device)
    if args.deterministic:
        use_deterministic_algorithms()
    if args.pack_streams < 1:
        raise UserError(f"--pack_streams must be a positive integer, got {args.pack_streams}")
    options = TrainOptions(
        args.eval_every,
        args.checkpoint_every,
        args.quiet,
        args.cuda_graphs,
        args.pack_streams,
        parse_loggers(args.loggers),
        platform.root,
    )
    return Job(replicate, platform, options)
