"""The checkpoints of the K copies a trainer holds.

Copies that are one job (the two copies of an instability branch) share one stacked
checkpoint. Independent runs (a pack) each keep their own, unstacked, in their own
folder, exactly as the run alone writes it, so that a run of a killed pack resumes alone
or in another pack.

Every checkpoint file keeps the one before it (`paths.previous_checkpoint`, a hard link,
so no second write). A pack needs it: its K files cannot be replaced at once, and a kill
between two of them leaves runs one checkpoint apart; the runs ahead then roll back to it
(open_lth.lottery.pack), and the pack resumes as one, to the bit. Any run needs it when
its newest checkpoint is truncated or corrupt (a full disk, a copy cut short): it
resumes from the one before, redoing the steps since, to the same bits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from open_lth.foundations import paths
from open_lth.foundations.errors import UserError, note_once
from open_lth.foundations.store import Unreadable, atomic_torch_save, keep_previous, torch_load
from open_lth.training.stacked import (
    stack_optimizer_state,
    stack_state,
    unstack_optimizer_state,
    unstack_state,
)


class Checkpoints:
    def __init__(self, shared: Path | None, outs: list[Path], tag: dict | None = None) -> None:
        """`shared`: the one file of copies that are one job; None: one per copy. `tag`,
        when given, is written into every file (what made it: see `tag_of`)."""
        self.outs = outs
        self.tag = tag
        self.per_copy = shared is None and len(outs) > 1
        self.paths = [paths.checkpoint(o) for o in outs] if shared is None else [shared]
        self.previous = [paths.previous_of(p) for p in self.paths]
        # Files read from the checkpoint before them: their next save keeps that one,
        # not the unreadable file.
        self.fell_back: set[int] = set()

    def exist(self) -> bool:
        return any(p.exists() for p in self.paths)

    def of(self, copy: int) -> Path:
        """The file that holds `copy`."""
        return self.paths[copy] if self.per_copy else self.paths[0]

    def load(self, net: nn.Module, device: torch.device) -> tuple[dict, dict, list[dict]]:
        """The (stacked) network's state, its optimizer's, and the checkpoints as read
        (for the loop's running state)."""
        ckpts = []
        for i, path in enumerate(self.paths):
            ckpt, fell_back = read(path, device)
            ckpts.append(ckpt)
            if fell_back:
                self.fell_back.add(i)
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
            self._write(0, {**ckpt, "rng_cpu": rng, **loop_state.dump()})
            return
        models = unstack_state(net.state_dict(), net)
        optimizers = unstack_optimizer_state(optimizer_state, net)
        for j in live:
            ckpt = {"model": models[j], "optimizer": optimizers[j]}
            self._write(j, {**ckpt, "rng_cpu": rng, **loop_state.dump(j)})

    def _write(self, i: int, ckpt: dict) -> None:
        if i not in self.fell_back:
            keep_previous(self.paths[i], self.previous[i])
        self.fell_back.discard(i)
        atomic_torch_save(self.paths[i], ckpt if self.tag is None else {**ckpt, "tag": self.tag})

    def remove(self, live: list[int]) -> None:
        """At the end of training: the live copies' checkpoints (a diverged run keeps its
        last good one)."""
        for j in live if self.per_copy else range(1):
            self.paths[j].unlink(missing_ok=True)
            self.previous[j].unlink(missing_ok=True)


def tag_of(path: Path) -> dict | None:
    """The tag the checkpoint at `path` was written with (None: none, or no file)."""
    if not path.exists():
        return None
    return read(path)[0].get("tag")


def read(path: Path, device: torch.device | str = "cpu") -> tuple[dict, bool]:
    """The checkpoint at `path`, or, when it is truncated or corrupt, the one kept before
    it (with a note); True when it is that one. Neither readable: one error line that
    names the files to delete."""
    try:
        return torch_load(path, device), False
    except Unreadable as error:
        previous = paths.previous_of(path)
        if path == previous or not previous.exists():
            raise UserError(
                f"cannot read {path}: {error.reason}; delete {path} to start this run over"
            ) from None
        try:
            ckpt = torch_load(previous, device)
        except Unreadable:
            raise UserError(
                f"cannot read {path} ({error.reason}) nor the checkpoint kept before it; "
                f"delete {path} and {previous} to start this run over"
            ) from None
        note_once(
            f"fell back {path}",
            f"cannot read {path} ({error.reason}); resuming from the checkpoint kept before "
            f"it, at iteration {int(ckpt['iteration'])}",
        )
        return ckpt, True
