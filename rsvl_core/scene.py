"""Large scenes in windows: read a window -> super-resolve it -> blend -> write, never holding the scene.

The low-resolution scene is cut into overlapping windows (`plan_tiles` in input pixels). Each window
goes through the whole pipeline; its output is blended into a strip buffer with a raised-cosine
window over the overlap, and output rows are written as soon as no later window touches them. So
memory is bounded by (scene width x window height) at the output scale, plus one window's models
and activations; the scene itself is read window by window.

Every window is sampled with the scene's seed and noise keyed by scene position (`noise.NoiseField`), so
overlapping windows start from the same noise where they overlap and agree closely there; the cross-fade
only hides what little their different context changes. Windows may be computed anywhere, in any order
(`rsvl batch` spreads them over GPUs): `blend_windows` takes their outputs in plan order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .progress import ProgressCallback, report
from .tiling import Tile, feather_window, plan_tiles

CAPTION_POLICIES = ("scene", "window")


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


def super_resolve_scene(
    height: int,
    width: int,
    scale: int,
    windows: WindowOptions,
    read: Callable[[Tile], torch.Tensor],
    process: Callable[[torch.Tensor, int], torch.Tensor],
    sink: RowSink,
    callback: ProgressCallback | None = None,
) -> int:
    """Super-resolve a (height, width) scene window by window into `sink`; returns the number of windows.

    Args:
        read: the input window (1, 3, h, w) in [0, 1] for a Tile in input pixels.
        process: (window image, window index) -> (1, 3, h * scale, w * scale) in [0, 1].
        sink: receives every output row exactly once, in order.
    """
    tiles = plan_windows(height, width, windows, scale)
    outputs = (process(read(tile), index) for index, tile in enumerate(tiles))
    return blend_windows(height, width, scale, windows, outputs, sink, callback)


def blend_windows(
    height: int,
    width: int,
    scale: int,
    windows: WindowOptions,
    outputs: Iterable[torch.Tensor],
    sink: RowSink,
    callback: ProgressCallback | None = None,
) -> int:
    """Blend the windows' outputs, given in `plan_windows` order (from any process), into `sink`.

    Only a strip of output rows is held: rows are written as soon as no later window touches them.
    """
    tiles = plan_windows(height, width, windows, scale)
    out_w = width * scale
    ramp = windows.overlap * scale
    rows = sorted({t.y0 for t in tiles})
    base = 0                                                   # output row of acc[0]
    acc = np.zeros((0, out_w, 3), dtype=np.float32)
    weight = np.zeros((0, out_w), dtype=np.float32)
    outputs = iter(outputs)
    for index, tile in enumerate(tiles):
        out = next(outputs)
        expected = (1, 3, (tile.y1 - tile.y0) * scale, (tile.x1 - tile.x0) * scale)
        if tuple(out.shape) != expected:
            raise RuntimeError(f"window {index}: the pipeline returned {tuple(out.shape)}, expected {expected}")
        y0, y1, x0, x1 = tile.y0 * scale, tile.y1 * scale, tile.x0 * scale, tile.x1 * scale
        if y1 - base > acc.shape[0]:                           # grow the strip to cover this window
            grow = y1 - base - acc.shape[0]
            acc = np.concatenate([acc, np.zeros((grow, out_w, 3), np.float32)])
            weight = np.concatenate([weight, np.zeros((grow, out_w), np.float32)])
        w = feather_window(y1 - y0, x1 - x0, ramp).numpy() if len(tiles) > 1 else np.ones((y1 - y0, x1 - x0),
                                                                                          np.float32)
        acc[y0 - base:y1 - base, x0:x1] += out[0].permute(1, 2, 0).float().cpu().numpy() * w[..., None]
        weight[y0 - base:y1 - base, x0:x1] += w
        report(callback, index + 1, len(tiles), "scene windows")
        row_done = index + 1 == len(tiles) or tiles[index + 1].y0 != tile.y0
        if row_done:                                           # rows above the next window row are final
            later = [r for r in rows if r > tile.y0]
            final = later[0] * scale if later else height * scale
            count = final - base
            sink.write(base, _to_uint8(acc[:count] / weight[:count, :, None]))
            acc, weight, base = acc[count:], weight[count:], final
    return len(tiles)
