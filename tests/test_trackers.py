"""--loggers=tensorboard,wandb: the trackers get exactly metrics.csv's rows, read back with
the libraries' own readers (TensorBoard's EventAccumulator; W&B's offline run file)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from conftest import lenet_args, lenet_lottery
from open_lth.training.metrics import read_rows


def csv_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for iteration, name, value in read_rows(run / "metrics.csv"):
        series.setdefault(name, []).append((iteration, value))
    return series


def tensorboard_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of an offline run's .wandb file: W&B's LevelDB-style log (a 7-byte
    header, 32 KiB blocks of records, each with a crc, a length and a FULL/FIRST/MIDDLE/
    LAST kind) of Record protos; wandb 0.31 has no Python reader of its own."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, buffer = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buffer += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buffer)
            records.append(record)
            buffer = b""
    return records


def wandb_run(run: Path) -> tuple[str, dict, dict[str, list[tuple[int, float]]]]:
    """(display name, config, history) of the one offline W&B run in `run`."""
    (offline,) = (run / "wandb").glob("offline-run-*")
    (file,) = offline.glob("*.wandb")
    series: dict[str, list[tuple[int, float]]] = {}
    name, config = "", {}
    for record in wandb_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name = record.run.display_name
            config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
        if kind == "history":
            history = record.history.item
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in history}
            step = items.pop("_step")
            for key, value in items.items():
                if not key.startswith("_"):
                    series.setdefault(key, []).append((step, value))
    return name, config, series


def assert_same(tracked: dict, expected: dict) -> None:
    assert sorted(tracked) == sorted(expected)  # every name
    for name, rows in expected.items():
        assert [s for s, _ in tracked[name]] == [s for s, _ in rows], name  # every step
        # TensorBoard keeps float32
        assert [v for _, v in tracked[name]] == pytest.approx([v for _, v in rows], rel=1e-6)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_tensorboard_gets_every_csv_row(cli: object, tmp_path: Path) -> None:
    code, _, err = cli(*lenet_args(tmp_path, "--loggers=tensorboard"))
    assert code == 0, err
    (run,) = tmp_path.glob("train_*/replicate_1/main")
    expected = csv_series(run)
    assert {"train_loss", "test_accuracy", "learning_rate"} <= set(expected)
    assert_same(tensorboard_series(run), expected)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    (text,) = events.Tensors("hparams/text_summary")  # the hparams.json, as text
    shown = text.tensor_proto.string_val[0].decode().strip("`\n")
    assert json.loads(shown) == json.loads((run / "hparams.json").read_text())


def test_wandb_offline_run_gets_every_csv_row(cli: object, tmp_path: Path, offline: None) -> None:
    code, _, err = cli(*lenet_args(tmp_path, "--loggers=wandb"))
    assert code == 0, err
    (run,) = tmp_path.glob("train_*/replicate_1/main")
    name, config, history = wandb_run(run)
    assert name == run.relative_to(tmp_path).as_posix()
    assert config["training"] == json.loads((run / "hparams.json").read_text())["training"]
    assert_same(history, csv_series(run))


def test_lottery_has_one_tracker_run_per_level(cli: object, tmp_path: Path, offline: None) -> None:
    args = lenet_lottery(tmp_path, "--levels=1", "--training_steps=100it", "--eval_every=50it")
    code, _, err = cli(*args, "--loggers=tensorboard,wandb")
    assert code == 0, err
    levels = sorted(tmp_path.glob("lottery_*/replicate_1/level_*/main"))
    assert [p.parent.name for p in levels] == ["level_0", "level_1"]
    for run in levels:
        expected = csv_series(run)
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
        assert_same(tensorboard_series(run), expected)
        name, _, history = wandb_run(run)
        assert name.endswith(f"replicate_1/{run.parent.name}/main")
        assert_same(history, expected)
    assert "supermask_test_accuracy" in csv_series(levels[1])  # logged by both trackers too


def test_a_missing_extra_is_one_line(
    cli: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # its import now fails
    code, _, err = cli(*lenet_args(tmp_path, "--loggers=tensorboard"))
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --loggers=tensorboard needs the tensorboard package: pip install -e .[tensorboard]"
    ]
    assert not list(tmp_path.iterdir())  # nothing written


def test_an_unknown_logger_lists_the_known_ones(cli: object, tmp_path: Path) -> None:
    code, _, err = cli(*lenet_args(tmp_path, "--loggers=tensorboard,mlflow"))
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --loggers: unknown logger 'mlflow'; known: tensorboard, wandb"
    ]
    assert not list(tmp_path.iterdir())
