"""Errors that reach the user as one line and a non-zero exit, never a traceback, and
notes: one line on stderr about something that goes on but does not pay or is not safe."""

from __future__ import annotations

import sys

from open_lth.foundations import distributed

_NOTED: set[str] = set()


def note_once(key: str, message: str) -> None:
    """`note: <message>` on stderr, once per process for each `key` (a lottery trains
    many levels, a sweep many runs), and from rank 0 only under torchrun."""
    if key in _NOTED or not distributed.is_primary():
        return
    _NOTED.add(key)
    print(f"note: {message}", file=sys.stderr)


class UserError(Exception):
    """A mistake in what the user asked for (a flag, a name, a value, a data file).

    `main.py` prints `error: <message>` and exits with status 2; nothing has been
    written when it is raised, because every check runs before the first file.
    """


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunLocked(UserError):
    """Another process holds the lock of a run directory."""
