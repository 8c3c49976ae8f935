"""The host memory a scene run by windows needs, estimated before its first window: refuse or advise in one line.

A windowed scene is never read whole, but its output is assembled: the blender holds a strip of output rows
(the scene's output width x one window row) as float32 colour + weight, and the finished rows are copied on
their way to the file; a plain-image output (PNG) is held whole until it is written; an uncertainty layer is
blended on a whole canvas. Those grow with the scene, not with the window, so a 100000-pixel-wide scene can need
tens of GiB however small its windows are. The models' own memory is the memory plan's business (`--max-vram`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..scenes.windows import WindowOptions

STRIP_BYTES = 16 + 12 + 3     # per output pixel of the strip: colour + weight (float32), rows taken (float32), uint8
GEO_ROW_BYTES = 12            # a GeoTIFF output: the rows once more as float32 on their way to the writer
WHOLE_OUTPUT_BYTES = 3 + 3    # per output pixel of a plain image: the uint8 canvas and its encoded copy
SPREAD_BYTES = 8              # per output pixel with --samples N >= 2: the spread canvas (value + weight, float32)
WINDOW_BYTES = 12 * 4         # per output pixel of one window: its images (float32 RGB) in flight, a few at once
ADVISE_SHARE = 0.5            # say so when the estimate passes this share of the available memory
GIB = 2 ** 30


@dataclass(frozen=True)
class WindowMemory:
    """What a windowed scene's assembly holds at its peak, in bytes."""

    strip: int
    output: int
    spread: int
    window: int

    @property
    def total(self) -> int:
        return self.strip + self.output + self.spread + self.window

    def parts(self) -> str:
        named = (("window rows", self.strip), ("the whole output (a plain image)", self.output),
                 ("the uncertainty canvas", self.spread), ("one window", self.window))
        return ", ".join(f"{name} {gib(size)}" for name, size in named if size)


def gib(size: int) -> str:
    """A byte count as `12.3 GiB` (or MiB below one GiB)."""
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / 2**20:.1f} MiB"


def estimate_window_memory(height: int, width: int, scale: int, windows: WindowOptions, geotiff: bool,
                           samples: int = 1) -> WindowMemory:
    """The peak host memory of assembling a (height, width) input scene from its windows at `scale`."""
    out_width = width * scale
    strip_rows = min(height, windows.size + windows.overlap) * scale
    strip = out_width * strip_rows * (STRIP_BYTES + (GEO_ROW_BYTES if geotiff else 0))
    output = 0 if geotiff else height * scale * out_width * WHOLE_OUTPUT_BYTES
    spread = height * scale * out_width * SPREAD_BYTES if samples >= 2 else 0
    window = (min(height, windows.size) * scale) * (min(width, windows.size) * scale) * WINDOW_BYTES
    return WindowMemory(strip, output, spread, window)


def available_memory() -> int | None:
    """The memory the system can give this process now (MemAvailable; physical pages free elsewhere), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def window_memory_check(height: int, width: int, scale: int, windows: WindowOptions, geotiff: bool,
                        samples: int = 1) -> tuple[str | None, str | None]:
    """(refusal, advice), at most one of them: the one line a face says before a windowed scene starts."""
    need = estimate_window_memory(height, width, scale, windows, geotiff, samples)
    have = available_memory()
    if have is None or need.total <= ADVISE_SHARE * have:
        return None, None
    size = f"{width * scale}x{height * scale}"
    what = f"assembling the {size} output needs about {gib(need.total)} of RAM ({need.parts()})"
    if need.total <= have:
        return None, f"{what}; {gib(have)} is available now: other programs may run short"
    if need.output + need.spread > need.strip:
        fix = ("split the scene (e.g. gdal_translate -srcwin) or give a GeoTIFF input, whose output is written row "
               "by row" if not geotiff else "split the scene (e.g. gdal_translate -srcwin)")
        fix += "; without --samples the uncertainty canvas goes" if need.spread else ""
    else:
        smaller = max(64, windows.size * have // (2 * need.total) // 8 * 8)
        fix = f"use a smaller --window-size (about {smaller}) or split the scene"
    return f"{what}, more than the {gib(have)} available: {fix}", None
