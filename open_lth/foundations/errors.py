"""Errors that reach the user as one line and a non-zero exit, never a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for (a flag, a name, a value, a data file).

    `main.py` prints `error: <message>` and exits with status 2; nothing has been
    written when it is raised, because every check runs before the first file.
    """


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunLocked(UserError):
    """Another process holds the lock of a run directory."""
