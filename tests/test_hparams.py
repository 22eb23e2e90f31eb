import dataclasses

import pytest

from open_lth.cli import Parser
from open_lth.foundations import registries
from open_lth.foundations.hparams import TrainingHparams, to_flags
from open_lth.main import load_plugins
from open_lth.training.runner import TrainingDesc, TrainingRunner

load_plugins()


def parse(*argv: str) -> TrainingDesc:
    parser = Parser(prog="test")
    defaults = None
    for a in argv:
        if a.startswith("--default_hparams="):
            name = a.split("=", 1)[1]
            defaults = registries.models.get(name).default_hparams(name)
    TrainingRunner.add_args(parser, defaults)
    return TrainingDesc.create_from_args(parser.parse_args(list(argv)))


def test_defaults_and_overrides() -> None:
    desc = parse("--default_hparams=mnist_lenet_300_100")
    assert (desc.training.optimizer_name, desc.training.lr) == ("adam", 0.0012)
    assert (desc.dataset.batch_size, desc.training.training_steps) == (60, "50000it")
    desc = parse("--default_hparams=cifar_resnet_20", "--training_steps=30000it", "--lr=0.05")
    assert desc.training.training_steps == "30000it" and desc.training.lr == 0.05
    assert desc.training.momentum == 0.9 and desc.training.milestone_steps == "80ep,120ep"


def test_flags_round_trip() -> None:
    desc = parse(
        "--default_hparams=cifar_resnet_20", "--do_not_augment", "--warmup_steps=1ep", "--gamma=0.2"
    )
    flags = [f for d in desc.groups() for f in to_flags(d)]
    assert parse(*flags) == desc
    assert "--do_not_augment" in flags and "--nesterov_momentum" not in flags


def test_pinned_run_names() -> None:
    # These names are on disk in users' result folders: they must never change.
    assert parse("--default_hparams=mnist_lenet_300_100").hashname == PINNED["lenet"]
    assert parse("--default_hparams=cifar_resnet_20").hashname == PINNED["resnet"]
    desc = parse("--default_hparams=mnist_lenet_300_100", "--training_steps=2000it")
    assert desc.hashname == PINNED["lenet_2000it"]


PINNED = {
    "lenet": "train_dd5efe67f208120a9d95332a0a917317",
    "resnet": "train_1206e7da37038a1fc6ee00e0b6c9971b",
    "lenet_2000it": "train_0c47ffba8fe7e1d31c714b61ff7cca3a",
}


def test_new_noop_field_keeps_the_name() -> None:
    desc = parse("--default_hparams=mnist_lenet_300_100")
    # The same class name with one more field whose default does nothing.
    extended = dataclasses.make_dataclass(
        "TrainingHparams",
        [("new_knob", int | None, dataclasses.field(default=None))],
        bases=(TrainingHparams,),
    )
    training = extended(**dataclasses.asdict(desc.training))
    assert str(training) == str(desc.training)
    assert dataclasses.replace(desc, training=training).hashname == desc.hashname
    assert (
        dataclasses.replace(
            desc, training=extended(**{**dataclasses.asdict(desc.training), "new_knob": 3})
        ).hashname
        != desc.hashname
    )


def test_non_default_only_in_name() -> None:
    a = parse("--default_hparams=mnist_lenet_300_100")
    b = parse("--default_hparams=mnist_lenet_300_100", "--momentum=0.0")
    c = parse("--default_hparams=mnist_lenet_300_100", "--momentum=0.5")
    assert a.hashname == b.hashname != c.hashname


def test_no_abbreviations_and_no_shared_flags() -> None:
    names = [f.name for t in TrainingDesc.group_types().values() for f in dataclasses.fields(t)]
    assert len(names) == len(set(names))
    with pytest.raises(Exception, match="unrecognized arguments: --training_step=1it"):
        parse("--default_hparams=mnist_lenet_300_100", "--training_step=1it")


def test_help_shows_resolved_defaults(cli, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("train", "--default_hparams=cifar_resnet_20", "--help")
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the learning rate (default: 0.1)" in text
    assert "(default: 160ep)" in text and "(default: fc.weight)" not in text
