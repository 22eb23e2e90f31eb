"""The checkpoints of the K copies a trainer holds.

Copies that are one job (the two copies of an instability branch) share one stacked
checkpoint. Independent runs (a pack) each keep their own, unstacked, in their own
folder, exactly as the run alone writes it, so that a run of a killed pack resumes alone
or in another pack. Such a run also keeps the checkpoint before its last one: the K
files cannot be replaced at once, and a kill between two of them leaves runs one
checkpoint apart; the runs ahead then roll back to it (open_lth.lottery.pack), and the
pack resumes as one, to the bit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from open_lth.foundations import paths
from open_lth.foundations.store import atomic_torch_save, keep_previous, torch_load
from open_lth.training.stacked import (
    stack_optimizer_state,
    stack_state,
    unstack_optimizer_state,
    unstack_state,
)


class Checkpoints:
    def __init__(self, shared: Path | None, outs: list[Path]) -> None:
        """`shared`: the one file of copies that are one job; None: one per copy."""
        self.outs = outs
        self.per_copy = shared is None and len(outs) > 1
        self.paths = [paths.checkpoint(o) for o in outs] if shared is None else [shared]

    def exist(self) -> bool:
        return any(p.exists() for p in self.paths)

    def of(self, copy: int) -> Path:
        """The file that holds `copy`."""
        return self.paths[copy] if self.per_copy else self.paths[0]

    def load(self, net: nn.Module, device: torch.device) -> tuple[dict, dict, list[dict]]:
        """The (stacked) network's state, its optimizer's, and the checkpoints as read
        (for the loop's running state)."""
        ckpts = [torch_load(p, device) for p in self.paths]
        if len({int(c["iteration"]) for c in ckpts}) != 1 or not all(
            p.exists() for p in self.paths
        ):
            raise ValueError("the copies of a pack must resume from the same iteration")
        if not self.per_copy:
            return ckpts[0]["model"], ckpts[0]["optimizer"], ckpts
        model = stack_state([c["model"] for c in ckpts], net)
        optimizer = stack_optimizer_state([c["optimizer"] for c in ckpts], net)
        return model, optimizer, ckpts

    def save(
        self,
        net: nn.Module,
        optimizer_state: dict,
        loop_state: object,
        live: list[int],
    ) -> None:
        """Write the checkpoint(s) of `net` (stacked when K > 1); `loop_state.dump(j)`
        gives copy j's running state, `dump()` the whole."""
        rng = torch.get_rng_state()
        if not self.per_copy:
            ckpt = {"model": net.state_dict(), "optimizer": optimizer_state}
            atomic_torch_save(self.paths[0], {**ckpt, "rng_cpu": rng, **loop_state.dump()})
            return
        models = unstack_state(net.state_dict(), net)
        optimizers = unstack_optimizer_state(optimizer_state, net)
        for j in live:
            keep_previous(self.paths[j], paths.previous_checkpoint(self.outs[j]))
            ckpt = {"model": models[j], "optimizer": optimizers[j]}
            atomic_torch_save(self.paths[j], {**ckpt, "rng_cpu": rng, **loop_state.dump(j)})

    def remove(self, live: list[int]) -> None:
        """At the end of training: the live copies' checkpoints (a diverged run keeps its
        last good one)."""
        for j in live if self.per_copy else range(1):
            self.paths[j].unlink(missing_ok=True)
            paths.previous_checkpoint(self.outs[j]).unlink(missing_ok=True)
