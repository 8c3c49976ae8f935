"""Progress bars that suit where stderr goes: tqdm on a terminal, plain lines in a log file or a pipe."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

LINE_INTERVAL = 10.0  # seconds: the longest a log file waits for a progress line while work advances


def progress_bar(**options) -> tqdm | LineBar:
    """A tqdm bar on a terminal; on a log file or a pipe (not a terminal) plain lines instead of the carriage
    returns and escape sequences a bar redraws itself with."""
    if options.get("disable") or sys.stderr.isatty():
        return tqdm(**options)
    return LineBar(options.get("desc") or "progress", options.get("total"), options.get("unit", "it"))


class LineBar:
    """The part of tqdm's interface the command line uses, printing one line at each quarter, at least every
    `interval` seconds while it advances (a slow CPU run is never silent for minutes), and at the end."""

    def __init__(self, desc: str, total: float | None, unit: str, interval: float = LINE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.total, self.unit, self.n, self.interval, self.clock = desc, total, unit, 0, interval, clock
        self.start, self.said, self.closed = clock(), 0, False
        self.last = self.start

    def update(self, count: float = 1) -> None:
        self.n += count
        quarter = min(4, int(4 * self.n / self.total + 1e-9)) if self.total else 0
        if quarter > self.said or (count and self.clock() - self.last >= self.interval):
            self.said = max(self.said, quarter)
            self.line()

    def reset(self, total: float | None = None) -> None:
        self.total, self.n, self.said = total, 0, 0

    def close(self) -> None:
        if not self.closed and self.said < 4 and self.n:
            self.line()  # stopped short of the end: say where
        self.closed = True

    def line(self) -> None:
        done = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        share = f"{100 * self.n / self.total:.0f}% " if self.total else ""
        self.last = self.clock()
        print(f"{self.desc}: {share}({done} {self.unit}, {self.last - self.start:.1f} s)", file=sys.stderr,
              flush=True)


def say(text: str) -> None:
    """A line on stderr that does not break a progress bar."""
    tqdm.write(text, file=sys.stderr)
