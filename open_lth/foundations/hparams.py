"""Hparams: typed dataclasses that are the single source of truth for the flags, their
help, defaults, the displayed summary and the run name.

A field's help lives in its metadata (`field(default=..., metadata={"help": ...})`).
Booleans default to False (they become `store_true` flags). A field that is new
must default to a value that changes nothing, so that the run names of old runs,
which hash only the fields that differ from the dataclass defaults, stay the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from open_lth.foundations.errors import UserError
from open_lth.foundations.step import check_step_syntax

Check = Callable[[Any, str], None]


def hp(default: Any = MISSING, help: str = "", check: Check | None = None) -> Any:
    """A dataclass field with help text; `hp(help=...)` alone makes it required.
    `check(value, name)` raises UserError on a bad value; it is called on creation,
    before `validate`, unless the value is None (an optional left unset)."""
    return field(default=default, metadata={"help": help, "check": check})


def _base_type(annotation: Any) -> type:
    """`Optional[int]` -> int; the plain type argparse converts a flag's text with."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing))  # noqa: S307 - our own annotations
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


_GIVEN = "_hparams_given_on_the_command_line"


class _Given(argparse.Action):
    """`store`, remembering that the flag was on the command line (a default of the
    model may not apply to every choice: see `given`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        setattr(namespace, self.dest, values)
        given(namespace).add(self.dest)


class _GivenTrue(_Given):
    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        super().__call__(parser, namespace, True, option_string)


def given(args: argparse.Namespace) -> set[str]:
    """The hparams (by field name) that were set on the command line."""
    if not hasattr(args, _GIVEN):
        setattr(args, _GIVEN, set())
    return getattr(args, _GIVEN)


@dataclass
class Hparams:
    """Base class: a group of hyperparameters with generated flags."""

    _name: ClassVar[str] = "Hparams"
    _description: ClassVar[str] = ""
    # Fields holding steps (`50000it`, `2ep`): their syntax is checked on creation.
    _step_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self._step_fields:
            value = getattr(self, name)
            if value is not None:
                for part in str(value).split(","):
                    check_step_syntax(part, f"--{name}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("check") is not None and value is not None:
                f.metadata["check"](value, f.name)
        self.validate()

    def validate(self) -> None:
        """Raise UserError on a bad value. Subclasses extend."""

    @classmethod
    def field_types(cls) -> dict[str, type]:
        hints = typing.get_type_hints(cls)
        return {f.name: _base_type(hints[f.name]) for f in fields(cls)}

    @classmethod
    def add_args(
        cls,
        parser: argparse.ArgumentParser,
        defaults: Hparams | None = None,
        prefix: str = "",
        exclude: frozenset[str] = frozenset(),
    ) -> None:
        """Add one flag per field; `defaults` (e.g. a model's) replace the field defaults.
        Fields in `exclude` have their flag already (one shared by several groups)."""
        group = parser.add_argument_group(cls._name, cls._description)
        types = cls.field_types()
        for f in fields(cls):
            if f.name in exclude:
                continue
            flag = f"--{prefix}{f.name}"
            helptext = f.metadata.get("help", "")
            default = getattr(defaults, f.name) if defaults is not None else f.default
            if types[f.name] is bool:
                group.add_argument(
                    flag, action=_GivenTrue, nargs=0, default=bool(default), help=helptext
                )
                continue
            required = default is MISSING
            shown = "required" if required else f"default: {default}"
            group.add_argument(
                flag,
                action=_Given,
                type=types[f.name],
                default=None if required else default,
                required=required,
                metavar=types[f.name].__name__,
                help=f"{helptext} ({shown})",
            )

    @classmethod
    def create_from_args(cls, args: argparse.Namespace, prefix: str = "") -> Hparams:
        return cls(**{f.name: getattr(args, prefix + f.name) for f in fields(cls)})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Hparams:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"{cls._name}: unknown hparams {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def non_default(self) -> dict[str, Any]:
        """The fields that differ from the dataclass defaults (required ones always)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.default is MISSING or getattr(self, f.name) != f.default
        }

    def __str__(self) -> str:
        """What the run name hashes: only non-default fields, so new no-op fields
        leave every existing name unchanged."""
        inner = ", ".join(f"{k}={v!r}" for k, v in self.non_default().items())
        return f"{type(self).__name__}({inner})"

    def display(self) -> str:
        lines = [f"{self._name}:"]
        lines += [f"    * {f.name} => {getattr(self, f.name)}" for f in fields(self)]
        return "\n".join(lines)


# The checks a field names with `hp(..., check=...)` (validate calls them too): one
# rule, one wording, wherever a flag must be positive, a fraction, ...


def positive(value: float | None, name: str) -> None:
    if value is not None and not value > 0:
        raise UserError(f"--{name} must be positive, got {value}")


def _choice(value: str, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"--{name} must be one of {', '.join(allowed)}; got '{value}'")


def positive_int(value: int, name: str) -> None:
    if value < 1:
        raise UserError(f"--{name} must be a positive integer, got {value}")


def fraction(value: float, name: str) -> None:
    """Strictly between 0 and 1 (a density, a fraction pruned)."""
    if not 0 < value < 1:
        raise UserError(f"--{name} must be in (0, 1), got {value}")


def at_least(low: int) -> Check:
    def check(value: int, name: str) -> None:
        if value < low:
            raise UserError(f"--{name} must be at least {low}, got {value}")

    return check


def one_of(*allowed: str) -> Check:
    return lambda value, name: _choice(value, name, allowed)


@dataclass
class DatasetHparams(Hparams):
    dataset_name: str = hp(help="the data set, e.g. mnist or cifar10")
    batch_size: int = hp(help="examples per training step")
    do_not_augment: bool = hp(False, "turn off the data set's training augmentation")
    subsample_fraction: float | None = hp(
        None, "train on this fraction of the training set (a fixed, seeded subset)"
    )

    _name: ClassVar[str] = "Dataset Hyperparameters"
    _description: ClassVar[str] = "The data set and how it is batched."

    def validate(self) -> None:
        if self.batch_size is None or self.batch_size <= 0:
            raise UserError(f"--batch_size must be a positive integer, got {self.batch_size}")
        f = self.subsample_fraction
        if f is not None and not 0 < f <= 1:
            raise UserError(f"--subsample_fraction must be in (0, 1], got {f}")


@dataclass
class ModelHparams(Hparams):
    model_name: str = hp(help="the model, e.g. mnist_lenet_300_100 or cifar_resnet_20")
    model_init: str = hp(help="initializer of conv and linear weights, e.g. kaiming_normal")
    batchnorm_init: str = hp(
        help="initializer of BatchNorm weights: uniform or fixed", check=one_of("uniform", "fixed")
    )
    bias_init: str = hp(
        "zeros",
        "conv and linear biases: zeros, or pytorch (PyTorch's default U(±1/√fan_in), which "
        "open_lth leaves in place)",
        check=one_of("zeros", "pytorch"),
    )

    _name: ClassVar[str] = "Model Hyperparameters"
    _description: ClassVar[str] = "The architecture and its initialization."


@dataclass
class TrainingHparams(Hparams):
    optimizer_name: str = hp(help="sgd or adam")
    lr: float = hp(help="the learning rate")
    training_steps: str = hp(help="how long to train, e.g. 50000it or 160ep")
    data_order_seed: int | None = hp(
        None, "seed of the order of training examples (default: derived from the replicate)"
    )
    augmentation_seed: int | None = hp(
        None, "seed of the random augmentation (default: derived from the replicate)"
    )
    momentum: float = hp(0.0, "SGD momentum")
    nesterov_momentum: bool = hp(False, "use Nesterov momentum with SGD")
    milestone_steps: str | None = hp(
        None, "steps at which the learning rate is multiplied by gamma, e.g. 80ep,120ep"
    )
    gamma: float | None = hp(None, "learning rate factor at each milestone")
    warmup_steps: str | None = hp(None, "linear learning rate warmup over these steps")
    weight_decay: float | None = hp(None, "L2 weight decay")
    bf16: bool = hp(False, "bf16 autocast on a GPU (changes the numbers)")
    fp16: bool = hp(
        False,
        "float16 autocast on a GPU with a dynamic loss scaler, for GPUs without bfloat16 "
        "(a T4); on a CPU only the scaler runs (changes the numbers)",
    )
    compile: bool = hp(False, "torch.compile the model (slower first step)")

    _name: ClassVar[str] = "Training Hyperparameters"
    _description: ClassVar[str] = "The optimizer, its schedule and the training length."
    _step_fields: ClassVar[tuple[str, ...]] = ("training_steps", "milestone_steps", "warmup_steps")

    def validate(self) -> None:
        _choice(self.optimizer_name, "optimizer_name", ("sgd", "adam"))
        positive(self.lr, "lr")
        positive(self.gamma, "gamma")
        if self.momentum < 0:
            raise UserError(f"--momentum must be non-negative, got {self.momentum}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise UserError(f"--weight_decay must be non-negative, got {self.weight_decay}")
        if self.milestone_steps and self.gamma is None:
            raise UserError("--milestone_steps needs --gamma")
        if self.fp16 and self.bf16:
            raise UserError("--fp16 and --bf16 exclude each other; pick one")


@dataclass
class PruningHparams(Hparams):
    pruning_strategy: str = hp("magnitude", "how weights are scored for pruning")
    pruning_fraction: float = hp(
        0.2, "fraction of the remaining weights pruned per level", check=fraction
    )
    pruning_scope: str = hp(
        "global",
        "global (one threshold) or layerwise (per layer)",
        check=one_of("global", "layerwise"),
    )
    pruning_layers_to_ignore: str | None = hp(
        None,
        "comma-separated weights never pruned, e.g. fc.weight (gem_miner: none unless given here)",
    )
    pruning_count_without_ignored: bool = hp(
        False,
        "global pruning: remove the fraction of the surviving weights outside the ignored "
        "layers (this framework's count before format 2) instead of the fraction of all "
        "surviving prunable weights (open_lth's sparse_global)",
    )
    allow_layer_collapse: bool = hp(
        False,
        "let a level remove every weight of a layer (by default that stops the run, naming "
        "the layer: the network's output no longer depends on its input)",
    )

    _name: ClassVar[str] = "Pruning Hyperparameters"
    _description: ClassVar[str] = "How each level's mask is chosen."

    def validate(self) -> None:
        if self.pruning_count_without_ignored and self.pruning_scope != "global":
            raise UserError("--pruning_count_without_ignored applies to --pruning_scope=global")

    @property
    def ignored(self) -> list[str]:
        """--pruning_layers_to_ignore as a list."""
        text = self.pruning_layers_to_ignore
        return [n.strip() for n in text.split(",") if n.strip()] if text else []


@dataclass
class DefaultHparams:
    """What a model family proposes as the defaults of a run."""

    dataset: DatasetHparams
    model: ModelHparams
    training: TrainingHparams
    pruning: PruningHparams = field(default_factory=PruningHparams)


def to_flags(hparams: Hparams) -> list[str]:
    """Every field as an explicit flag, so a command line (e.g. in a sweep script)
    means the same run whatever the model defaults become."""
    flags = []
    for f in fields(hparams):
        value = getattr(hparams, f.name)
        if isinstance(value, bool):
            if value:
                flags.append(f"--{f.name}")
        elif value is not None:
            flags.append(f"--{f.name}={value}")
    return flags


@dataclass
class LotteryHparams(Hparams):
    rewinding_steps: str | None = hp(
        None, "rewind the survivors to their values at this step of the dense run (e.g. 2000it)"
    )
    reinitialize: bool = hp(False, "re-initialize the survivors randomly at every level")

    _name: ClassVar[str] = "Lottery Hyperparameters"
    _description: ClassVar[str] = "Where the surviving weights start at each level."
    _step_fields: ClassVar[tuple[str, ...]] = ("rewinding_steps",)

    def validate(self) -> None:
        if self.reinitialize and self.rewinding_steps:
            raise UserError("--reinitialize and --rewinding_steps exclude each other; pick one")
