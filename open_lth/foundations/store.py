"""The run store's primitives: atomic file writes, safe loads and the run lock.

Every file is written to a temporary name in the same folder, flushed to disk and
renamed over the target, so a reader (or a resumed run) sees the old file or the
new one, never half of one."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from open_lth.foundations import distributed
from open_lth.foundations.errors import RunLocked, UserError, note_once

# mkstemp creates files readable by the owner only; runs are shared data, so give the
# final files the permissions a plain open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    if not distributed.is_primary():
        return  # under torchrun only rank 0 writes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor in it copied to CPU memory (dicts, lists and tuples walked)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def atomic_torch_save(path: Path, obj: Any) -> None:
    """Save from CPU memory, whatever device the tensors are on: a file written by a GPU
    run then opens with plain `torch.load(path, weights_only=True)` on a laptop."""
    buffer = io.BytesIO()
    torch.save(to_cpu(obj), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def keep_previous(path: Path, previous: Path) -> None:
    """Make `previous` a copy of `path` (a hard link, so free) before `path` is replaced;
    `path` stays valid throughout."""
    if not distributed.is_primary() or not path.exists():
        return
    temporary = previous.with_name(previous.name + ".tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(path, temporary)
    except OSError:  # a file system without hard links (some network or FUSE mounts)
        shutil.copyfile(path, temporary)
    os.replace(temporary, previous)


def torch_load(path: Path, device: torch.device | str = "cpu") -> Any:
    """Load weights or a checkpoint without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Unreadable(path, first) from None


class Unreadable(UserError):
    """A truncated or corrupt file; `reason` is what torch said, for a caller that can
    fall back on another file (open_lth.training.checkpoints)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}; delete it to recompute it")
        self.reason = reason


def lock_held(directory: Path) -> bool:
    """Whether a process holds `directory`'s RunLock now (for `main.py status`). Trying a
    shared lock is the one portable test of an flock: it fails only against the run's
    exclusive one, and is given back at once, so two readers never refuse each other."""
    path = RunLock(directory).path
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # never locked
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # a file system without locks: nothing can tell a live run there
    finally:
        os.close(fd)  # closing the descriptor gives back the shared lock
    return False


class RunLock:
    """An exclusive lock on a run directory, held while a process works in it.

    `flock` locks die with their process, so a run killed with SIGKILL never leaves
    a stale lock behind."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if not distributed.is_primary():
            return self  # rank 0 holds the lock for the whole torchrun job
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(
                f"run directory {self.path.parent} is in use by another process (pid {owner}); "
                "wait for it to finish or stop it"
            ) from None
        except OSError as e:
            # Some cluster file systems refuse flock (Lustre mounted without -o flock:
            # ENOSYS; NFS without its lock daemon: ENOLCK). Running unlocked there beats
            # not running; say so once, as two processes could then share a run.
            os.close(fd)
            note_once(
                "no locks",
                f"cannot lock {self.path.parent} ({e.strerror or e}): this file system does not "
                "support locks, so nothing keeps two processes out of one run; start each once",
            )
            return self
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
