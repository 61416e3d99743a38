"""Errors the user can fix. `run.py` prints them as one line and exits non-zero."""

import tempfile
from pathlib import Path

from tasks.base import DataError


class ConfigError(ValueError):
    """An impossible or unknown configuration value; the message names the option and the fix."""


class CheckpointError(RuntimeError):
    """A checkpoint that is unreadable or belongs to a different configuration."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; recorded in result.json as status=failed with `details`
    (stage, step, loss or gradient, the last good checkpoint)."""

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.details = details


USER_ERRORS = (ConfigError, CheckpointError, DataError)


def unwritable(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (made if missing), or None. Asked before a run starts,
    so that a read-only or mistyped output folder is one line, not a traceback after the work."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def root_cause(exc: BaseException) -> BaseException:
    """The original error under Hydra's instantiate wrappers, whose message is the one to show."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc
