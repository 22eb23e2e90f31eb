"""One run over two processes with torchrun (gloo on the CPU) against the same run in
one process: the same folder, and weights within 1e-3 (the ranks reduce in another
order, so the bits differ). ResNet-20 trains at lr 0.01 here: at its lr 0.1 the first
steps amplify rounding so much that one process with 2 threads instead of 1 already
ends 3.4e-3 away after 2 steps (measured), and two ranks 2.6e-3."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CIFAR, DATA, REPO
from open_lth.foundations.distributed import STOP_EVERY
from open_lth.foundations.synced_batchnorm import sync_batchnorm

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch has no torch.distributed"
)


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(REPO / "main.py"), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def _weights(root: Path) -> tuple[str, dict[str, torch.Tensor]]:
    (path,) = root.glob("*/replicate_1/main/weights_it*[1-9]*.pt")
    return path.relative_to(root).parts[0], torch.load(path, weights_only=True)


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def train_in_one_and_two_processes(
    cli, flags: list[str], root: Path
) -> tuple[subprocess.CompletedProcess, tuple[str, dict], tuple[str, dict]]:
    """`train` with `flags` in this process under root/one (one thread, as each torchrun
    worker has), then under torchrun with two ranks under root/two: torchrun's result
    and each run's (folder name, last weights)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli("train", *flags, f"--root={root / 'one'}")[0] == 0
    finally:
        torch.set_num_threads(threads)
    result = _torchrun("train", *flags, f"--root={root / 'two'}")
    assert result.returncode == 0, result.stderr[-3000:]
    return result, _weights(root / "one"), _weights(root / "two")


@pytest.mark.parametrize(
    "model, steps, data, extra",
    [
        ("mnist_lenet_300_100", "50it", DATA, ["--subsample_fraction=0.1"]),
        ("cifar_resnet_20", "3it", CIFAR, ["--lr=0.01"]),  # augmentation, BatchNorm
    ],
)
def test_torchrun_two_processes_equal_one(tmp_path: Path, cli, model, steps, data, extra) -> None:
    flags = [f"--default_hparams={model}", f"--dataset_root={data}", f"--training_steps={steps}",
             "--device=cpu", "--quiet", *extra]  # fmt: skip
    result, (name_one, one), (name_two, two) = train_in_one_and_two_processes(cli, flags, tmp_path)
    assert result.stdout.count("done: test accuracy") == 1  # rank 0 speaks
    assert name_one == name_two
    difference = _largest_difference(one, two)
    print(f"{model}, {steps}: largest weight difference {difference:.2e}")
    assert difference < 1e-3
    assert not list((tmp_path / "two").rglob("checkpoint.pt"))


def test_torchrun_batch_must_split_over_the_ranks(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    result = _torchrun("train", "--default_hparams=mnist_lenet_300_100", f"--dataset_root={DATA}",
                       "--batch_size=61", f"--root={root}", "--device=cpu")  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --batch_size 61 does not split over 2 processes: under torchrun the batch size "
        "is the global batch, divided evenly among the ranks"
    ]
    assert not root.exists()


def _rank_pid(agent: int, rank: int) -> int | None:
    """The worker of a torchrun agent that has RANK=rank (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == agent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_signal_to_one_rank_stops_both_and_the_run_resumes(tmp_path: Path) -> None:
    """Rank 1 alone gets SIGTERM; both stop at one step, and the resumed run ends with
    the bits of an uninterrupted two-process run."""
    flags = ["train", "--default_hparams=mnist_lenet_300_100", f"--dataset_root={DATA}",
             "--subsample_fraction=0.1", "--training_steps=200it", "--eval_every=50it",
             "--checkpoint_every=20it", "--device=cpu", "--quiet"]  # fmt: skip
    root = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(REPO / "main.py"), *flags, f"--root={root}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agent = subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(root.rglob("checkpoint.pt")) and time.monotonic() < deadline:
        assert agent.poll() is None, agent.stderr.read()[-3000:]
        time.sleep(0.05)
    pid = _rank_pid(agent.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode != 0
    assert "interrupted at iteration" in err
    (checkpoint,) = root.rglob("checkpoint.pt")
    stopped_at = torch.load(checkpoint, weights_only=True)["iteration"]
    assert 0 < stopped_at < 200, stopped_at
    assert stopped_at % STOP_EVERY == 0  # where the ranks compare their flags

    result = _torchrun(*flags, f"--root={root}")  # resumes
    assert result.returncode == 0, result.stderr[-3000:]
    assert _torchrun(*flags, f"--root={tmp_path / 'uninterrupted'}").returncode == 0
    _, resumed = _weights(root)
    _, uninterrupted = _weights(tmp_path / "uninterrupted")
    assert _largest_difference(resumed, uninterrupted) == 0  # to the bit
    rows = [r.split(",")[:2] for r in root.rglob("metrics.csv").__next__().read_text().split()]
    assert len(rows) == len({tuple(r) for r in rows})  # each row once


def _synced_batchnorm_rank(rank: int, store: str, dtype: torch.dtype, shift: float, out: object):
    """One of two gloo ranks: the synced BatchNorm on this rank's half of a batch, against
    a plain BatchNorm on the whole batch in float64. Rank 0 reports the largest
    differences of the output, the input's gradient, the summed parameter gradients and
    the running statistics."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2
    )
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5, dtype=torch.float64) * 0.1 + shift
    weights = torch.randn(8, 4, 5, 5, dtype=torch.float64)  # a loss that is not symmetric
    reference = torch.nn.BatchNorm2d(4).double()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-1, 1)
    bn = copy.deepcopy(reference).to(dtype)
    xr, xs = x.clone().requires_grad_(), x.to(dtype).requires_grad_()
    half = slice(4 * rank, 4 * rank + 4)
    with sync_batchnorm(bn):
        y = bn(xs[half])
        (y * weights[half].to(dtype)).sum().backward()
    whole = reference(xr)
    (whole * weights).sum().backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    torch.distributed.all_reduce(grads)  # each rank holds its half's; DDP sums them
    pairs = {
        "output": (y, whole[half]),
        "input gradient": (xs.grad[half], xr.grad[half]),
        "parameter gradients": (grads, torch.cat([reference.weight.grad, reference.bias.grad])),
        "running mean": (bn.running_mean, reference.running_mean),
        "running var": (bn.running_var, reference.running_var),
    }
    differences = {k: (a.double() - b).abs().max().item() for k, (a, b) in pairs.items()}
    if rank == 0:
        out.put(differences)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize(
    "dtype, shift, tolerance",
    [
        (torch.float64, 0.0, 1e-12),  # the formula: exact to rounding
        # A mean 1,000 times the spread: E[x²] - mean² in float32 would be off by about
        # 1e-3 / 0.01 of the variance; squares about each rank's mean keep it exact.
        (torch.float32, 100.0, 2e-3),
    ],
)
def test_synced_batchnorm_equals_one_batchnorm_over_the_whole_batch(
    tmp_path: Path, dtype: torch.dtype, shift: float, tolerance: float
) -> None:
    context = torch.multiprocessing.get_context("spawn")
    out = context.SimpleQueue()
    args = (str(tmp_path / "store"), dtype, shift, out)
    torch.multiprocessing.spawn(_synced_batchnorm_rank, args=args, nprocs=2)
    differences = out.get()
    print(dtype, shift, differences)
    assert max(differences.values()) < tolerance, differences


def test_gem_miner_searches_in_full_on_every_rank(tmp_path: Path, cli) -> None:
    """Under torchrun each rank runs Gem-Miner's whole search by itself, as one process
    does (no DDP, no shard), so level 1's mask is one process's to the bit. Split over
    the ranks as training is, this ResNet-8's search ends with another mask (the ranks
    reduce in another order: tried)."""
    flags = ["lottery", "--default_hparams=cifar_resnet_20", "--model_name=cifar_resnet_8_4",
             f"--dataset_root={CIFAR}", "--batch_size=32", "--training_steps=4it",
             "--eval_every=4it", "--pruning_strategy=gem_miner", "--levels=1",
             "--gem_miner_steps=12it", "--gem_miner_prune_every=4it", "--device=cpu",
             "--quiet"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli(*flags, f"--root={tmp_path / 'one'}")[0] == 0
    finally:
        torch.set_num_threads(threads)
    result = _torchrun(*flags, f"--root={tmp_path / 'two'}")
    assert result.returncode == 0, result.stderr[-3000:]
    (one,) = (tmp_path / "one").glob("*/replicate_1/level_1/main/mask.pt")
    (two,) = (tmp_path / "two").glob("*/replicate_1/level_1/main/mask.pt")
    assert one.relative_to(tmp_path / "one") == two.relative_to(tmp_path / "two")
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "two").rglob("gem_miner_checkpoint*"))
