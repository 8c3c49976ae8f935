"""Large scenes in windows: read a window -> super-resolve it -> blend -> write, never holding the scene.

The low-resolution scene is cut into overlapping windows (`plan_tiles` in input pixels). Each window
goes through the whole pipeline; its output is blended by the one tile blender (`tiling.TileBlender`,
a raised cosine over the overlap) holding only a strip of output rows, and output rows are written as
soon as no later window touches them. So
memory is bounded by (scene width x window height) at the output scale, plus one window's models
and activations; the scene itself is read window by window.

Every window is sampled with the scene's seed and noise keyed by scene position (`noise.NoiseField`), so
overlapping windows start from the same noise where they overlap and agree closely there; the cross-fade
only hides what little their different context changes. Windows may be computed anywhere, in any order
(`rsvl batch` spreads them over GPUs): `blend_windows` takes their outputs in plan order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..kit.progress import ProgressCallback, report
from ..kit.tiling import Feather, Tile, TileBlender, plan_tiles

CAPTION_POLICIES = ("scene", "window")


MIN_WINDOW = 16  # input pixels: the smallest window worth a pipeline run (2x: SR3's smallest 32 px tile)


@dataclass(frozen=True)
class WindowOptions:
    """size: window edge in input pixels (0 = the whole scene at once); overlap: input pixels shared.

    caption: "scene" captions one downsampled overview of the scene and guides every window with it (one
    captioner run per scene); "window" captions each window's stage-1 image (one run per window).
    """

    size: int = 0
    overlap: int = 16
    caption: str = "scene"

    def check(self) -> None:
        if self.caption not in CAPTION_POLICIES:
            raise ValueError(f"caption per {self.caption!r}: choose one of {', '.join(CAPTION_POLICIES)}")
        if self.size < 0 or self.overlap < 0:
            raise ValueError(f"window size and overlap must be >= 0, got {self.size} / {self.overlap}")
        if 0 < self.size < MIN_WINDOW:
            raise ValueError(f"window size {self.size}: windows must be at least {MIN_WINDOW} input pixels (0 = the "
                             f"whole scene); smaller ones give the models too little context and multiply the "
                             f"per-window work (a 32x32 scene in 1-pixel windows would be 1024 pipeline runs)")
        if self.size and self.overlap * 2 >= self.size:
            raise ValueError(f"window overlap {self.overlap} must be less than half the window size {self.size}")


class RowSink(Protocol):
    """Receives finished output rows, top to bottom: `write(row0, rows)` with rows (h, W, 3) uint8."""

    def write(self, row0: int, rows: np.ndarray) -> None: ...


class ArraySink:
    """Collects the output rows in one uint8 array (for PNG/JPEG outputs and tests)."""

    def __init__(self, height: int, width: int) -> None:
        self.array = np.zeros((height, width, 3), dtype=np.uint8)
        self.rows_written = 0

    def write(self, row0: int, rows: np.ndarray) -> None:
        if row0 != self.rows_written:
            raise RuntimeError(f"rows must arrive in order: expected row {self.rows_written}, got {row0}")
        self.array[row0:row0 + rows.shape[0]] = rows
        self.rows_written += rows.shape[0]


def _to_uint8(rows: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rows * 255.0), 0, 255).astype(np.uint8)


LATENT_FACTOR = 8  # the refiner's VAE: one latent cell per 8 x 8 output pixels


def plan_windows(height: int, width: int, windows: WindowOptions, scale: int) -> list[Tile]:
    """The windows of a (height, width) scene, in input pixels, in the order they are blended (row by row).

    Window starts (all but the last of a row or column) fall on whole latent cells of the output, so that the
    refiner's scene-keyed noise lines up exactly between overlapping windows.
    """
    windows.check()
    align = LATENT_FACTOR // math.gcd(LATENT_FACTOR, scale)
    return plan_tiles(height, width, windows.size, windows.overlap, align)


def blend_windows(
    height: int,
    width: int,
    scale: int,
    windows: WindowOptions,
    outputs: Iterable[torch.Tensor],
    sink: RowSink,
    callback: ProgressCallback | None = None,
) -> int:
    """Blend the windows' outputs, given in `plan_windows` order, into `sink`; returns the number of windows."""
    blender = WindowBlender(height, width, scale, windows, sink, callback)
    for out in outputs:
        blender.add(out)
        if blender.done:
            break
    if not blender.done:
        raise RuntimeError(f"got {blender.next_index} window outputs, expected {len(blender.tiles)}")
    return len(blender.tiles)


class WindowBlender:
    """Takes window outputs one by one in `plan_windows` order (computed anywhere: another process, another GPU)
    and writes finished output rows to `sink`. The blending is `tiling.TileBlender`'s, on a strip of output rows
    (on the CPU): rows are written as soon as no later window touches them."""

    def __init__(self, height: int, width: int, scale: int, windows: WindowOptions, sink: RowSink,
                 callback: ProgressCallback | None = None) -> None:
        self.height, self.scale, self.sink, self.callback = height, scale, sink, callback
        self.tiles = plan_windows(height, width, windows, scale)
        self.rows = sorted({t.y0 for t in self.tiles})
        self.blender = TileBlender(height * scale, width * scale, Feather(windows.overlap * scale), device="cpu",
                                   strip=True)
        self.next_index = 0

    @property
    def done(self) -> bool:
        return self.next_index == len(self.tiles)

    def add(self, out: torch.Tensor) -> None:
        """The next window's output (1, 3, h * scale, w * scale) in [0, 1]."""
        index, tiles, scale = self.next_index, self.tiles, self.scale
        if index >= len(tiles):
            raise RuntimeError(f"all {len(tiles)} windows are blended already")
        tile = tiles[index]
        expected = (1, 3, (tile.y1 - tile.y0) * scale, (tile.x1 - tile.x0) * scale)
        if tuple(out.shape) != expected:
            raise RuntimeError(f"window {index}: the pipeline returned {tuple(out.shape)}, expected {expected}")
        self.blender.add(Tile(tile.y0 * scale, tile.y1 * scale, tile.x0 * scale, tile.x1 * scale), out)
        self.next_index += 1
        report(self.callback, index + 1, len(tiles), "scene windows")
        row_done = index + 1 == len(tiles) or tiles[index + 1].y0 != tile.y0
        if row_done:                                                    # rows above the next window row are final
            later = [r for r in self.rows if r > tile.y0]
            final = later[0] * scale if later else self.height * scale
            base = self.blender.top
            rows = self.blender.take(final)[0].permute(1, 2, 0).numpy()
            self.sink.write(base, _to_uint8(rows))
