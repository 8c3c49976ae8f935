"""What the command line shows while the engine works: tqdm bars per stage, notes, the job summary."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..evaluation import EvalEvents
from ..jobs.inputs import JobEvents
from ..kit.progress import ProgressCallback
from .bars import progress_bar, say
from .tally import current_tally


class StageBars:
    """One progress bar per stage of one image (stage 1, caption, refine, VAE, windows)."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name, self.quiet, self.bar, self.stage = name, quiet, None, None

    def __call__(self, step: int, total: int, stage: str, preview: torch.Tensor | None = None) -> None:
        if stage != self.stage:
            self.close()
            unit = "tok" if stage == "caption" else "tile" if stage.startswith("vae") else "step"
            self.bar = progress_bar(desc=f"{self.name} {stage}", total=total, unit=unit, leave=False,
                                    disable=self.quiet)
            self.stage = stage
        if self.bar.total != total:
            self.bar.reset(total=total)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None




class CountedEvents(JobEvents):
    """JobEvents that keep the command's tally: what finished, for the line an interrupted run prints."""

    def begin(self, sources: list[Path]) -> None:
        current_tally().total += len(sources)

    def skipped(self, source: Path, target: Path) -> None:
        current_tally().skipped += 1

    def finished(self, source: Path, target: Path, record: dict, seconds: float) -> None:
        current_tally().finished += 1

    def failed(self, source: Path, message: str) -> None:
        current_tally().failed += 1


class CliEvents(CountedEvents):
    """JobEvents for a terminal: a bar per stage, notes and one line per finished image."""

    def __init__(self, quiet: bool, scale: int) -> None:
        self.quiet, self.scale, self.bars, self.images = quiet, scale, None, None

    def begin(self, sources: list[Path]) -> None:
        super().begin(sources)
        self.images = progress_bar(total=len(sources), desc="images", unit="img",
                                   disable=self.quiet or len(sources) == 1)

    def note(self, source: Path, text: str) -> None:
        say(f"{source.name}: {text}")

    def skipped(self, source: Path, target: Path) -> None:
        super().skipped(source, target)
        self._advance()

    def progress(self, source: Path) -> StageBars:
        self._close()
        self.bars = StageBars(source.name, self.quiet)
        return self.bars

    def finished(self, source: Path, target: Path, record: dict, seconds: float) -> None:
        super().finished(source, target, record, seconds)
        self._close()
        self._advance()
        if self.quiet:
            return
        cache = record.get("refine", {}).get("cache")
        if cache and cache["mode"] != "off":
            say(f"{source.name}: refiner cache ({cache['mode']}): {cache['summary']}")
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in record["seconds"].items())
        peak = record["peak_memory_bytes"] / 2**30
        width, height = record["input"]["size"]
        say(f"{source.name} -> {target} ({width * self.scale}x{height * self.scale}, {seconds:.1f} s: {stages}; "
            f"peak {peak:.2f} GiB {record['peak_memory_kind']})")
        spread = record.get("uncertainty")
        if spread and spread.get("deterministic"):
            say(f"{source.name}: {spread['deterministic']}")
        elif spread and "mean_std" in spread:
            guard = spread["guard"]
            acted = f"; guard {guard['threshold']:g} replaced {100 * guard['fraction_replaced']:.1f}%" \
                if guard["threshold"] > 0 else ""
            say(f"{source.name}: {spread['samples']} samples, std mean {spread['mean_std']:.1f}, p95 "
                f"{spread['p95_std']:.1f} levels{acted} -> {spread['layer']}")

    def failed(self, source: Path, message: str) -> None:
        super().failed(source, message)
        self._close()
        self._advance()
        say(f"error: {message}")

    def _advance(self) -> None:
        if self.images is not None:
            self.images.update(1)
            if self.images.n >= self.images.total:
                self.images.close()

    def _close(self) -> None:
        if self.bars is not None:
            self.bars.close()
            self.bars = None


def print_summary(summary) -> None:
    """`N written, N skipped, N failed` and one line per failure, on stderr."""
    line = f"{len(summary.written)} written, {len(summary.skipped)} skipped (already exist; --overwrite replaces)"
    claimed = getattr(summary, "claimed", [])
    if claimed:
        line += f", {len(claimed)} claimed by another run (left to it; rerun once it ends to check them)"
    line += f", {len(summary.failed)} failed"
    print(line, file=sys.stderr)
    for source, reason in summary.failed:
        shown = reason if reason.startswith(str(source)) else f"{source}: {reason}"
        print(f"  failed: {shown}", file=sys.stderr)
    if getattr(summary, "stopped", None):
        print(f"stopped: {summary.stopped}; rerun to finish the rest (complete outputs are kept)", file=sys.stderr)


class BatchBars(CountedEvents):
    """Two bars on the driver: items (images, windows, captions) and output megapixels; a line per output."""

    def __init__(self, quiet: bool, scale: int) -> None:
        self.quiet, self.scale, self.items, self.pixels = quiet, scale, None, None

    def planned(self, items: int, pixels: int) -> None:
        self.items = progress_bar(total=items, desc="items", unit="item", disable=self.quiet, position=0)
        self.pixels = progress_bar(total=round(pixels / 1e6, 2), desc="output", unit="Mpx", disable=self.quiet,
                                   position=1, bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} Mpx "
                                                          "[{elapsed}<{remaining}, {rate_fmt}]")

    def advanced(self, items: int, pixels: int) -> None:
        if self.items is not None:
            self.items.update(items)
            self.pixels.update(round(pixels / 1e6, 2))

    def note(self, source: Path, text: str) -> None:
        say(f"{source.name}: {text}")

    def progress(self, source: Path):
        return None

    def finished(self, source: Path, target: Path, record: dict, seconds: float) -> None:
        super().finished(source, target, record, seconds)
        if not self.quiet:
            say(f"{source.name} -> {target} ({seconds:.1f} s of actor time)")

    def failed(self, source: Path, message: str) -> None:
        super().failed(source, message)
        say(f"error: {message}")


class CaptionBars(JobEvents):
    """JobEvents for `rsvl caption`: a token bar per image, notes and failures on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bars = quiet, None

    def note(self, source: Path, text: str) -> None:
        say(f"{source.name}: {text}")

    def progress(self, source: Path) -> ProgressCallback | None:
        self.close()
        self.bars = StageBars(source.name, self.quiet)
        return self.bars

    def failed(self, source: Path, message: str) -> None:
        self.close()
        say(f"error: {message}")

    def close(self) -> None:
        if self.bars is not None:
            self.bars.close()
            self.bars = None


class EvalBars(EvalEvents):
    """EvalEvents for a terminal: one bar over images x methods, stage bars inside, notes above."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bar, self.stages = quiet, None, None

    def begin(self, pairs: int) -> None:
        self.bar = progress_bar(total=pairs, desc="eval", unit="pair", disable=self.quiet)

    def note(self, text: str) -> None:
        say(text)

    def progress(self, image_id: str, method: str) -> StageBars:
        self._close_stages()
        self.stages = StageBars(f"{image_id} {method}", self.quiet)
        return self.stages

    def pair_done(self, image_id: str, method: str, skipped: bool) -> None:
        self._close_stages()
        if self.bar is not None:
            self.bar.update(1)

    def failed(self, what: str, message: str) -> None:
        self._close_stages()
        say(f"error: {message if message.startswith(what) else f'{what}: {message}'}")

    def close(self) -> None:
        self._close_stages()
        if self.bar is not None:
            self.bar.close()

    def _close_stages(self) -> None:
        if self.stages is not None:
            self.stages.close()
            self.stages = None
