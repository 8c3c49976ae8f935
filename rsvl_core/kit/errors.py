"""Errors the engine raises. Each one is meant to be shown to a user as a single line."""

from __future__ import annotations

from pathlib import Path


class RsvlError(Exception):
    """Base class: a problem the user can fix (bad file, bad setting, missing weights)."""


class CheckpointError(RsvlError):
    """A weights file is unreadable, unsafe or the wrong model. Names the file and what was expected."""

    def __init__(self, path: str | Path, problem: str, expected: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.expected = expected
        message = f"{self.path}: {problem}"
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)


class WeightsNotFoundError(RsvlError):
    """A stage's weights file could not be found where it is looked for."""


class InputImageError(RsvlError):
    """An input image could not be read or is not usable (names the file)."""


class Cancelled(RsvlError):
    """Raised by a progress callback to stop a run between steps."""


class TileMemoryError(RsvlError):
    """A tiled stage ran out of memory even at its smallest tile size (names the stage and the sizes tried)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM raised as an exception in the main thread, so a run unwinds as on Ctrl-C: temp files and claims go."""
