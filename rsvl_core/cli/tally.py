"""How far a command got, for the one line an interrupted run (Ctrl-C, SIGTERM) prints: light, no engine imports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RunTally:
    """Outputs of the running command: planned, finished, skipped (complete already) and failed."""

    total: int = 0
    finished: int = 0
    skipped: int = 0
    failed: int = 0


_TALLY: ContextVar[RunTally | None] = ContextVar("rsvl_run_tally", default=None)


def current_tally() -> RunTally:
    """The running command's tally (a throwaway one outside `tallying`, e.g. events used from Python)."""
    return _TALLY.get() or RunTally()


@contextmanager
def tallying() -> Iterator[RunTally]:
    """A fresh tally for one command (the events of the command line count into it)."""
    tally = RunTally()
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def interrupted_line(tally: RunTally, terminated: bool) -> str:
    """One line: what stopped the run, what finished, and what to rerun."""
    what = "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)"
    done = tally.finished + tally.skipped
    if not tally.total:
        return f"{what}: no partial output was written; rerun the same command to finish"
    skipped = f" ({tally.skipped} were complete already)" if tally.skipped else ""
    return (f"{what}: {done} of {tally.total} output(s) finished{skipped}; no partial "
            f"output was written; rerun the same command for the other {tally.total - done} (finished ones are "
            f"skipped)")
