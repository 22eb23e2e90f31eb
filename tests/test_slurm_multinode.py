"""Runs on N nodes x G GPUs under Slurm, as far as a machine without a cluster can check
them: the parameters handed to submitit (and the #SBATCH lines it makes of them), and
the torchrun environment each task derives from Slurm's variables, down to a gloo
process group formed by two tasks. The real single-node cluster tests are in
tests/test_slurm.py."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from open_lth.experiments.jobs import slurm, sweep

REPO = Path(__file__).resolve().parents[1]

# Task 5 of a job of 2 nodes x 4 GPUs, as srun sets it.
SLURM = {
    "SLURM_JOB_ID": "123456",
    "SLURM_NTASKS": "8",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[007-008]",
}


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sweep.add_args(parser)
    return parser.parse_args(["--executor=slurm", "--dry_run", *flags])


def test_each_task_gets_torchruns_environment_from_slurms() -> None:
    assert slurm.distributed_env(SLURM) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu007",  # the job's first node
        "MASTER_PORT": str(20000 + 123456 % 40000),  # the same in every task
    }
    given = slurm.distributed_env({**SLURM, "MASTER_ADDR": "head", "MASTER_PORT": "29500"})
    assert (given["MASTER_ADDR"], given["MASTER_PORT"]) == ("head", "29500")
    # A job of one task runs one process, as before: no torchrun variables.
    assert slurm.distributed_env({**SLURM, "SLURM_NTASKS": "1"}) == {}
    assert slurm.distributed_env({}) == {}


@pytest.mark.parametrize(
    "nodelist, first",
    [("gpu[007-010,012],cpu1", "gpu007"), ("node1", "node1"), ("a,b", "a"), ("r[1-2]-ib", "r1-ib")],
)
def test_first_host_of_a_node_list(nodelist: str, first: str) -> None:
    assert slurm.first_host(nodelist) == first


def test_nodes_and_gpus_become_one_task_per_gpu() -> None:
    args = parse("--slurm_nodes=2", "--slurm_gpus_per_node=8", "--slurm_cpus_per_task=12")
    assert slurm.check(args) is None
    params = slurm.parameters(args, ["true"])
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"]) == (2, 8, 8)
    assert "gpus_per_task" not in params
    submitit_slurm = pytest.importorskip("submitit.slurm.slurm")
    sbatch = submitit_slurm._make_sbatch_string(command="x", folder="/tmp/x", **params)
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=12"):
        assert f"#SBATCH {line}" in sbatch
    # Without them, one task a run, as before.
    single = slurm.parameters(parse("--slurm_gpus_per_task=1"), [])
    assert "nodes" not in single and single["gpus_per_task"] == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--slurm_nodes=0"], "--slurm_nodes must be 1 or more, got 0"),
        (["--slurm_gpus_per_node=0"], "--slurm_gpus_per_node must be 1 or more, got 0"),
        (["--slurm_gpus_per_node=8", "--slurm_gpus_per_task=1"], "do not go together"),
    ],
)
def test_bad_node_flags_are_one_line(flags: list[str], message: str) -> None:
    assert message in slurm.check(parse(*flags))


def test_node_flags_only_go_with_slurm() -> None:
    parser = argparse.ArgumentParser()
    sweep.add_args(parser)
    args = parser.parse_args(["--slurm_nodes=2"])
    assert slurm.check(args) == "--slurm_nodes only go with --executor=slurm"


GROUP = """
import json, os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
x = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(x)
keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
json.dump({"sum": x.item(), **{k: os.environ[k] for k in keys}}, open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


def test_two_tasks_form_one_process_group(tmp_path: Path) -> None:
    """Two tasks of one node, as srun starts them (two processes with Slurm's
    variables), each running RunTask: their children meet in one gloo group."""
    script = tmp_path / "group.py"
    script.write_text(GROUP)
    launch = "import sys; from open_lth.experiments.jobs.slurm import RunTask; "
    launch += f"sys.exit(RunTask([sys.argv[1]], {str(script)!r}, {str(tmp_path)!r})())"
    port = str(20000 + os.getpid() % 40000)  # MASTER_PORT's source: the job id
    tasks = []
    for rank in (0, 1):
        env = {
            **os.environ, **SLURM, "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1",
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
            "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": port, "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        out = str(tmp_path / f"rank{rank}.json")
        command = [sys.executable, "-c", launch, out]
        tasks.append(subprocess.Popen(command, cwd=REPO, env=env))
    assert [t.wait(timeout=120) for t in tasks] == [0, 0]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"sum": 3.0, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
