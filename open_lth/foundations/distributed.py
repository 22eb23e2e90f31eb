"""One run over several processes under `torchrun`, with DistributedDataParallel.

Detected from torchrun's environment (WORLD_SIZE, LOCAL_RANK); NCCL on GPUs (each rank
on its local rank's GPU), gloo on CPUs. What keeps the run that of one process:

- the global batch is the hparam's batch size; its data order and augmentation are
  drawn as in one process and sliced by rank (`shard`), and DDP averages the ranks'
  gradients of their mean losses, which is the gradient of the global batch's mean;
- BatchNorm normalizes with the statistics of the global batch
  (open_lth.foundations.synced_batchnorm);
- every rank holds rank 0's mask (`broadcast_`); a stop signal seen by any rank stops
  all at the same step (`agree_on_stop`, every 10 steps); only rank 0 writes files
  (store, metrics, lock), and the ranks meet (`barrier`) after it wrote what the next
  stage reads.

Outside torchrun every function here is a no-op, so one process runs as before.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


_ALONE = [False]


def active() -> bool:
    """Under torchrun, with any number of processes (one too: the DDP path on one GPU),
    outside `alone()`."""
    return not _ALONE[0] and _joined()


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Work that every rank does in full by itself, the same on each (Gem-Miner's
    search): inside, no collective, no DDP, no shard; still only rank 0 writes."""
    before, _ALONE[0] = _ALONE[0], True
    try:
        yield
    finally:
        _ALONE[0] = before


def rank() -> int:
    return dist.get_rank() if _joined() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_primary() -> bool:
    """Only the primary process writes files."""
    return rank() == 0


def join(device: torch.device) -> torch.device:
    """Under torchrun, join the process group and return this rank's device (a GPU's
    `cuda` becomes `cuda:<local rank>`); elsewhere return `device` unchanged."""
    if not under_torchrun():
        return device
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() != 0:  # rank 0 prints the run's progress and results
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    return device


def _tensor(values: list[float], device: torch.device) -> torch.Tensor:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    return torch.tensor(values, dtype=torch.float64, device=on)


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a global batch (dim 0)."""
    if not active():
        return x
    size = len(x) // world_size()
    return x[rank() * size : (rank() + 1) * size]


def broadcast_(tensors: dict[str, torch.Tensor] | None) -> None:
    """Rank 0's values into every rank's tensors, in place."""
    if active() and tensors:
        for name in sorted(tensors):
            t = tensors[name]
            on = t.device if dist.get_backend() != "nccl" else torch.device("cuda")
            buffer = t.to(on)
            dist.broadcast(buffer, 0)
            t.copy_(buffer)


# How often the ranks compare their stop flags. A collective every step is a host round
# trip every step (200-390 us with gloo on 2 CPU cores, against a 1.3 ms LeNet step; a
# GPU sync on NCCL); a signal waits at most this many steps instead.
STOP_EVERY = 10


def agree_on_stop(signum: int | None, device: torch.device, iteration: int) -> int | None:
    """The signal any rank saw (the highest number), on every rank; None when none. Under
    torchrun the ranks compare only at every STOP_EVERY-th iteration (the same iterations
    on every rank, so they stop together); alone, a signal counts at once."""
    if not active():
        return signum
    if iteration % STOP_EVERY:
        return None
    flag = _tensor([signum or 0], device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def gather_sums(sums: list[torch.Tensor], seen: int) -> int:
    """Sum the ranks' running sums into rank 0's; the others restart from zero, so that
    a later gathering (or a checkpoint, which holds rank 0's) counts every step once.
    Returns this rank's new `seen`."""
    if not active():
        return seen
    for t in sums:
        buffer = t if dist.get_backend() != "nccl" or t.is_cuda else t.cuda()
        dist.all_reduce(buffer)
        t.copy_(buffer if is_primary() else torch.zeros_like(buffer))
    total = _tensor([seen], sums[0].device)
    dist.all_reduce(total)
    return int(total.item()) if is_primary() else 0


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around `net` under torchrun."""
    if not active():
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)
