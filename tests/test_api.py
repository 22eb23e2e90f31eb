"""The Python side: a lottery level's network rebuilt from its folder evaluates to the
accuracy its metrics.csv records; its pruned weights stay zero under fine-tuning; a
ticket exported from it rebuilds the same network in a process with no run folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DATA, lenet_lottery
from open_lth import api
from open_lth.foundations.errors import UserError
from open_lth.main import main
from open_lth.tickets import load_ticket


@pytest.fixture(scope="module")
def replicate(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    assert main(lenet_lottery(root, "--levels=2", "--training_steps=200it")) == 0
    (path,) = root.glob("lottery_*/replicate_1")
    return path


def final_accuracy(stage: api.Stage) -> float:
    m = stage.metrics()
    return float(m[m.name == "test_accuracy"].iloc[-1].value)


def test_a_level_rebuilt_evaluates_to_its_logged_accuracy(replicate) -> None:
    run = api.open_run(replicate)
    assert isinstance(run, api.Run) and run.kind == "lottery" and run.levels() == [0, 1, 2]
    stage = run.level(2)
    assert stage.steps() == [0, 200] and stage.done
    net = stage.network("end")
    mask = stage.mask()
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert kept == round(0.64 * total) or abs(kept / total - 0.64) < 1e-3
    params = dict(net.named_parameters())
    assert all(bool((params[n][~m] == 0).all()) for n, m in mask.items())
    result = api.evaluate(net, stage, DATA)
    assert abs(result["test_accuracy"] - final_accuracy(stage)) < 1e-4
    assert result["test_accuracy"] > 0.85
    # The start weights are another network; the API's rows match experiments.analysis.load's.
    start = dict(stage.network("start").named_parameters())
    assert not any(torch.equal(start[n], params[n]) for n in mask)
    assert len(api.runs(replicate.parent.parent)) == 3


def test_pruned_weights_stay_zero_under_fine_tuning(replicate) -> None:
    net = api.open_run(replicate).level(2).network("end")
    mask = api.open_run(replicate).level(2).mask()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    for name, keep in mask.items():
        weight = dict(net.named_parameters())[name]
        assert (weight[~keep] == 0).all(), name
        assert not torch.equal(weight[keep], before[name][keep]), name


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_an_exported_ticket_opens_without_the_run(replicate, tmp_path, cli, fmt) -> None:
    stage = api.open_run(replicate).level(2)
    expected = final_accuracy(stage)
    copy = tmp_path / "copy"
    shutil.copytree(replicate.parent, copy / replicate.parent.name)
    ticket = tmp_path / f"ticket.{fmt}"
    run = copy / replicate.parent.name / "replicate_1"
    code, out, err = cli(
        "export", f"--run={run}", "--level=2", f"--out={ticket}", f"--format={fmt}"
    )
    assert code == 0, err
    shutil.rmtree(copy)  # no run folder left
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(ticket), framework="pt") as f:
            keys = set(f.keys())
            assert f.metadata()["model_name"] == "mnist_lenet_300_100"
        names = set(stage.mask())
        assert names | {f"mask.{n}" for n in names} <= keys
    script = (
        "from pathlib import Path\n"
        "from open_lth.tickets import load_ticket\n"
        "from open_lth.training import data, evaluation\n"
        "from open_lth.foundations.hparams import DatasetHparams\n"
        "import torch\n"
        f"t = load_ticket({str(ticket)!r})\n"
        "d = DatasetHparams.from_dict(t.hparams['dataset'])\n"
        f"test, _ = data.load(d, Path({str(DATA)!r}), False, torch.device('cpu'))\n"
        "print(evaluation.evaluate(t.network, test)[1])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert abs(float(done.stdout) - expected) < 1e-4


def test_bad_folders_and_files_are_one_line(replicate, tmp_path, cli) -> None:
    with pytest.raises(UserError, match="is not a run folder"):
        api.open_run(tmp_path)
    copy = tmp_path / "old"
    shutil.copytree(replicate, copy / "lottery_x" / "replicate_1")
    level = copy / "lottery_x" / "replicate_1" / "level_1" / "main"
    record = json.loads((level / "hparams.json").read_text())
    record.pop("format")
    (level / "hparams.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="made under format 1"):
        api.open_run(copy / "lottery_x" / "replicate_1").level(1)
    level2 = copy / "lottery_x" / "replicate_1" / "level_2" / "main"
    (level2 / "summary.json").unlink()
    with pytest.raises(UserError, match="still running or crashed"):
        api.open_run(copy / "lottery_x" / "replicate_1").level(2).network("end")
    (level2 / "weights_it0.pt").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(UserError, match="cannot be read"):
        api.open_run(copy / "lottery_x" / "replicate_1").level(2).network("start")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match="not a readable ticket"):
        load_ticket(bad)
    out = tmp_path / "never.safetensors"
    code, _, err = cli("export", f"--run={replicate}", "--level=2", "--weights=77", f"--out={out}")
    assert code == 2 and "no weights at iteration 77" in err and err.count("\n") == 1
    assert not out.exists()
