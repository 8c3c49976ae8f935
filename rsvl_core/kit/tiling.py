"""Overlapping tiles with smooth blending, so memory is bounded by the tile size, not the image.

One blender for everything cut in pieces: stage-1 pixel tiles (SR3, spandrel), the refiner's latent
tiles, the VAE's tiles and a scene's windows. Each piece's output is weighted (:func:`tile_weights`:
1 inside, a raised cosine rising from its edges, see :class:`Feather`), summed and divided by the
summed weights (:class:`TileBlender`).

Diffusion samplers call :func:`run_tiled` once per step on the *whole* current sample: every tile
is denoised, and the per-tile predictions are blended before the sampler step. Neighbouring tiles
therefore agree at every step, which is what removes seams (stitching independently sampled tiles
would not).

Out of memory: :class:`TileFit` runs a tiled call and, when the model runs out of memory, halves
the tile and runs the call again; the smaller tile is kept for later calls (a sampler's next steps)
and reported, so a run record can say which tile size was used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F

from .errors import TileMemoryError

LOG = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Tile:
    """A window [y0, y1) x [x0, x1) of the full image."""

    y0: int
    y1: int
    x0: int
    x1: int


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length` with at least `overlap` shared.

    The last tile is aligned to the end, so every tile has the full size (when length >= tile)
    and the overlap is spread evenly. With `align` > 1 every start but the last is a multiple of
    `align` (the overlap is still at least `overlap`; an `align` larger than the stride is ignored).
    """
    if tile <= 0 or length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap {overlap} must be in [0, tile size {tile})")
    stride = tile - overlap
    if 1 < align <= stride:
        # each start the furthest multiple of `align` that keeps the overlap; the last one ends at the edge
        starts = [0]
        while starts[-1] + tile < length:
            starts.append(min((starts[-1] + stride) // align * align, length - tile))
        return starts
    count = -(-(length - tile) // stride) + 1  # ceil division
    # spread the starts evenly between 0 and length - tile
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def plan_tiles(height: int, width: int, tile_size: int, overlap: int, align: int = 1) -> list[Tile]:
    """Tiles covering a (height, width) image; one tile when `tile_size` is 0 or large enough."""
    tiles = []
    for y in tile_starts(height, tile_size, overlap, align):
        for x in tile_starts(width, tile_size, overlap, align):
            tiles.append(Tile(y, min(y + tile_size, height) if tile_size else height,
                              x, min(x + tile_size, width) if tile_size else width))
    return tiles


@dataclass(frozen=True)
class Feather:
    """How a tile's weight rises from its edges, in output pixels.

    `margin` pixels right at an edge shared with a neighbour get weight 0 (a model that zero-pads saw padding
    there, not the neighbour's content); the next `ramp` pixels rise from 0 to 1 as a raised cosine.
    `border`: edges on the canvas border rise too (without a margin: those pixels would get no weight at all).
    It changes only how tiles share the few pixels near the border that more than one of them covers, and is
    kept as each caller had it, so that outputs stay the same: True for SR3, refiner, VAE tiles and scene
    windows, False (weight 1 at the border) for spandrel's guarded feather.
    """

    ramp: int
    margin: int = 0
    border: bool = True

    def __post_init__(self) -> None:
        if self.ramp < 0 or self.margin < 0:
            raise ValueError(f"Feather: ramp {self.ramp} and margin {self.margin} must be >= 0")
        if self.margin and self.border:
            raise ValueError("Feather: a margin at the canvas border would leave border pixels without weight; "
                             "use border=False with a margin")

    @classmethod
    def guarded(cls, overlap: int, scale: int = 1) -> Feather:
        """The outer quarter of an `overlap` (input pixels) at weight 0 and its middle half rising, x `scale`.

        For feed-forward models whose receptive field reaches into the overlap (spandrel's): the pixels that
        saw padding do not count, so tiled equals untiled when the field fits in a quarter of the overlap.
        Edges on the image border keep weight 1 (there the tile saw what the whole image would show).
        """
        margin = overlap // 4
        return cls(ramp=(overlap - 2 * margin) * scale, margin=margin * scale, border=False)


def edge_weights(length: int, feather: Feather, rise_at_start: bool, rise_at_end: bool,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(length,) float32 weights along one axis of a tile: `feather` at the ends shared with a neighbour, else 1.

    The two rises never meet: the ramp is shortened to at most half the length (less the margin).
    """
    w = torch.ones(length, dtype=torch.float32, device=device)
    ramp = min(feather.ramp, length // 2 - feather.margin)
    if ramp <= 0 or not (rise_at_start or rise_at_end):
        return w
    pos = torch.arange(length, dtype=torch.float32, device=device)
    rise = ((pos - feather.margin + 0.5) / ramp).clamp(0.0, 1.0)
    rise = 0.5 - 0.5 * torch.cos(torch.pi * rise)
    if rise_at_start:
        w = w * rise
    if rise_at_end:
        w = w * rise.flip(0)
    return w


def tile_weights(tile: Tile, height: int, width: int, feather: Feather,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(tile h, tile w) float32 blend weights of `tile` on a (height, width) canvas (all in output pixels).

    Weights rise from the edges the tile shares with neighbours, and from those on the canvas border when
    `feather.border` is set (not for a tile covering the whole canvas: alone, it keeps weight 1). Every weight
    a tile without margins gives is positive, so a pixel only one tile covers gets that tile's value.
    """
    border = feather.border and (tile.y0, tile.y1, tile.x0, tile.x1) != (0, height, 0, width)
    rows = edge_weights(tile.y1 - tile.y0, feather, border or tile.y0 > 0, border or tile.y1 < height, device)
    cols = edge_weights(tile.x1 - tile.x0, feather, border or tile.x0 > 0, border or tile.x1 < width, device)
    return rows[:, None] * cols[None, :]


class TileBlender:
    """The one blender: weighted tile outputs summed over a canvas and divided by the summed weights.

    Every tiled stage and the scene's windows blend through it. `add` each tile's output (any order), then
    `result()` for the whole canvas, or `take(row)` for the rows above `row` once no later tile touches them
    (a scene's strip buffer: with `strip=True` only rows not yet taken are held, grown as tiles arrive).

    Args:
        height, width: the canvas, in output pixels (tiles are given in the same pixels).
        feather: how weights rise from shared edges (`Feather`).
        device: where the sums live (default: the first output's device).
        strip: hold only the rows between the last `take` and the lowest tile added, instead of the whole canvas.
    """

    def __init__(self, height: int, width: int, feather: Feather, device: torch.device | str | None = None,
                 strip: bool = False) -> None:
        self.height, self.width, self.feather, self.strip = height, width, feather, strip
        self.device = None if device is None else torch.device(device)
        self.top = 0                                   # canvas row of the first row held
        self._sum: torch.Tensor | None = None          # (B, C, rows held, width) float32
        self._weight: torch.Tensor | None = None       # (1, 1, rows held, width) float32
        self._windows: dict[tuple, torch.Tensor] = {}  # weights by tile shape and shared edges

    def weights(self, tile: Tile) -> torch.Tensor:
        """`tile_weights` of a tile on this canvas (cached: tiles of one plan share a few shapes)."""
        key = (tile.y1 - tile.y0, tile.x1 - tile.x0, tile.y0 > 0, tile.y1 < self.height, tile.x0 > 0,
               tile.x1 < self.width)
        if key not in self._windows:
            self._windows[key] = tile_weights(tile, self.height, self.width, self.feather, self.device)
        return self._windows[key]

    def add(self, tile: Tile, values: torch.Tensor) -> None:
        """Add one tile's output, (B, C, tile h, tile w), weighted; rows already taken cannot be added to."""
        size = (tile.y1 - tile.y0, tile.x1 - tile.x0)
        if tuple(values.shape[-2:]) != size:
            raise ValueError(f"tile {tile} expects an output of {size[0]}x{size[1]}, got {tuple(values.shape)}")
        if tile.y0 < self.top:
            raise ValueError(f"tile {tile} reaches rows above {self.top}, which were taken already")
        if self.device is None:
            self.device = values.device
        values = values.to(self.device).float()
        self._grow(values, tile.y1)
        w = self.weights(tile)
        y0, y1 = tile.y0 - self.top, tile.y1 - self.top
        self._sum[..., y0:y1, tile.x0:tile.x1] += values * w
        self._weight[..., y0:y1, tile.x0:tile.x1] += w

    def take(self, row: int) -> torch.Tensor:
        """Rows [top, row) of the blend, (B, C, row - top, width) float32, and forget them."""
        if self._sum is None or not self.top <= row <= self.top + self._sum.shape[-2]:
            held = 0 if self._sum is None else self._sum.shape[-2]
            raise ValueError(f"cannot take rows up to {row}: rows {self.top} to {self.top + held} are held")
        count = row - self.top
        out = self._sum[..., :count, :] / self._weight[..., :count, :]
        self._sum, self._weight = self._sum[..., count:, :], self._weight[..., count:, :]
        self.top = row
        return out

    @property
    def held_rows(self) -> int:
        """Canvas rows held in memory now (a strip holds only rows not yet taken)."""
        return 0 if self._sum is None else self._sum.shape[-2]

    def result(self) -> torch.Tensor:
        """The whole canvas blended: (B, C, height, width) float32."""
        return self.take(self.height)

    def _grow(self, values: torch.Tensor, bottom: int) -> None:
        """Hold rows down to `bottom` (a strip grows as tiles arrive; otherwise the whole canvas at once)."""
        rows = (bottom if self.strip else self.height) - self.top
        if self._sum is None:
            self._sum = values.new_zeros(*values.shape[:2], rows, self.width)
            self._weight = values.new_zeros(1, 1, rows, self.width)
        elif rows > self._sum.shape[-2]:
            grow = rows - self._sum.shape[-2]
            self._sum = torch.cat([self._sum, self._sum.new_zeros(*self._sum.shape[:2], grow, self.width)], dim=-2)
            self._weight = torch.cat([self._weight, self._weight.new_zeros(1, 1, grow, self.width)], dim=-2)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W at the bottom/right up to a multiple (reflect where possible) for the UNet."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (ph, pw)


@dataclass(frozen=True)
class TileGrid:
    """Where :func:`run_tiled` cuts an input and where the outputs go: one plan for its one or two passes.

    Work split in two passes (a step cache looks at every tile before deciding) takes `batches(inputs)`,
    computes one output per batch however it likes, and hands them in the same order to `blend`.

    Args:
        tiles: in input pixels, row by row.
        scale: output size / input size as (up, down) integers, one of them 1.
        tile_batch: tiles per batch.
        feather: the blend's edge weights in output pixels (`plan`'s default: a ramp over the overlap).
    """

    height: int
    width: int
    tiles: tuple[Tile, ...]
    feather: Feather
    up: int = 1
    down: int = 1
    tile_batch: int = 1

    @classmethod
    def plan(cls, height: int, width: int, tile_size: int, overlap: int, tile_batch: int = 1,
             scale: int | float = 1, feather: Feather | None = None) -> TileGrid:
        """Tiles of a (height, width) input for `run_tiled`'s arguments (see there); `feather` default: a raised
        cosine over the overlap at every tile edge."""
        up, down = scale_factors(scale)
        if height % down or width % down:
            raise ValueError(f"run_tiled: input size {height}x{width} must be a multiple of {down} for scale 1/{down}")
        # plan on the coarse grid (the input when upscaling, the output when downscaling), then back to input pixels
        coarse = plan_tiles(height // down, width // down, tile_size // down if tile_size else 0, overlap // down)
        tiles = tuple(Tile(t.y0 * down, t.y1 * down, t.x0 * down, t.x1 * down) for t in coarse)
        feather = feather if feather is not None else Feather(overlap * up // down)
        return cls(height, width, tiles, feather, up, down, max(1, tile_batch))

    @property
    def groups(self) -> list[tuple[Tile, ...]]:
        """The tiles of each batch, in order."""
        return [self.tiles[start:start + self.tile_batch] for start in range(0, len(self.tiles), self.tile_batch)]

    def batches(self, inputs: torch.Tensor) -> Iterator[torch.Tensor]:
        """The input tiles of each batch, (tiles in batch * B, C, h, w), one batch at a time."""
        if len(self.tiles) == 1:
            yield inputs
            return
        for group in self.groups:
            yield torch.cat([inputs[..., t.y0:t.y1, t.x0:t.x1] for t in group], dim=0)

    def output_tile(self, tile: Tile) -> Tile:
        """A tile in output pixels."""
        up, down = self.up, self.down
        return Tile(tile.y0 * up // down, tile.y1 * up // down, tile.x0 * up // down, tile.x1 * up // down)

    def blend(self, outputs: Iterable[torch.Tensor], on_tile: Callable[[int, int], None] | None = None
              ) -> torch.Tensor:
        """Blend one output per batch (as `batches` gave them, in order): (B, C, H * scale, W * scale) float32."""
        groups = self.groups
        if len(self.tiles) == 1:
            outputs = list(outputs)
            if len(outputs) != 1:
                raise ValueError(f"run_tiled: {len(outputs)} outputs for 1 tile")
            if on_tile is not None:
                on_tile(1, 1)
            return outputs[0].float()
        blender = TileBlender(self.height * self.up // self.down, self.width * self.up // self.down, self.feather)
        count = done = 0
        for result in outputs:
            if count == len(groups):
                raise ValueError(f"run_tiled: more outputs than the {len(groups)} tile batches")
            group = groups[count]
            batch = result.shape[0] // len(group)
            for i, tile in enumerate(group):
                blender.add(self.output_tile(tile), result[i * batch:(i + 1) * batch])
            count, done = count + 1, done + len(group)
            if on_tile is not None:
                on_tile(done, len(self.tiles))
        if count != len(groups):
            raise ValueError(f"run_tiled: {count} outputs for {len(groups)} tile batches")
        return blender.result()


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    tile_size: int,
    overlap: int,
    tile_batch: int = 1,
    scale: int | float = 1,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Apply `fn` to overlapping tiles of `inputs` and blend the outputs (one batch of tiles in memory at a time).

    Args:
        fn: maps (N, C, h, w) tiles to (N, C_out, h * scale, w * scale).
        inputs: (B, C, H, W).
        tile_size: tile edge in input pixels (0 disables tiling: one call on the whole input).
        overlap: input pixels shared by neighbouring tiles; also the feathering width.
        tile_batch: how many tiles go through `fn` at once.
        scale: output size / input size: an integer >= 1 (e.g. 8 for a VAE decoder) or 1/k for an
            integer k (e.g. 1/8 for a VAE encoder; H and W must then be multiples of k). Tiles are
            planned on the coarser of the two grids, so every tile edge maps to a whole pixel on both.
        on_tile: called as `on_tile(done, total)` after each group of tiles (progress reporting).
    Returns:
        (B, C_out, H * scale, W * scale) float32.
    """
    grid = TileGrid.plan(inputs.shape[-2], inputs.shape[-1], tile_size, overlap, tile_batch, scale)
    return grid.blend((fn(batch) for batch in grid.batches(inputs)), on_tile)


def scale_factors(scale: int | float) -> tuple[int, int]:
    """(up, down) integers with scale == up / down and one of them 1; ValueError for other ratios."""
    if scale >= 1 and float(scale).is_integer():
        return int(scale), 1
    if 0 < scale < 1 and abs(1 / scale - round(1 / scale)) < 1e-6:
        return 1, round(1 / scale)
    raise ValueError(f"run_tiled: scale must be an integer >= 1 or 1/k for an integer k, got {scale}")


# Out of memory -------------------------------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory error (CUDA and others) and RuntimeErrors whose message says "out of memory"."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class TileFit:
    """A tiled stage's tile edge: the requested one until the model runs out of memory, then halved and kept.

    `run(call)` calls `call(tile_size, overlap)`; when that raises an out-of-memory error the tile is halved
    (rounded down to `multiple`, never below `minimum`), the overlap kept at most half the tile, and the call
    made again from the start. The smaller tile stays for every later `run` (a sampler's next steps), so a run
    that shrank at its first step equals a run asked for the smaller tile. `record()` says what was used.

    Args:
        tile_size: the requested tile edge (0 = the whole input in one piece).
        overlap: the requested overlap (what the stage would use once tiled, also when `tile_size` is 0).
        extent: the input's larger side, in the tile's units: halving starts from the smaller of it and the tile.
        minimum: the smallest tile edge tried; when it runs out of memory too, `TileMemoryError`.
        multiple: tile edges stay multiples of it, e.g. the UNet's 8 for latent tiles.
        stage: the stage's name in messages ("stage 1", "refiner latent", "vae decode").
    """

    def __init__(self, tile_size: int, overlap: int, extent: int, minimum: int, multiple: int = 1,
                 stage: str = "tiled stage") -> None:
        if tile_size < 0 or overlap < 0 or extent < 1 or minimum < 1 or multiple < 1:
            raise ValueError(f"TileFit: tile_size {tile_size}, overlap {overlap} must be >= 0 and extent {extent}, "
                             f"minimum {minimum}, multiple {multiple} >= 1")
        self.requested, self.tile_size, self.overlap = tile_size, tile_size, overlap
        self.extent, self.minimum, self.multiple, self.stage = extent, minimum, multiple, stage
        self.out_of_memory_at: list[int] = []  # tile edges that ran out of memory (0 = the whole input)

    def run(self, call: Callable[[int, int], T]) -> T:
        """`call(tile_size, overlap)`, with the tile halved and the call repeated after each out-of-memory error."""
        while True:
            try:
                return call(self.tile_size, self.overlap)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                smaller = self.next_size()
                self.out_of_memory_at.append(self.tile_size)
                if smaller is None:
                    raise TileMemoryError(self.give_up_message(exc)) from exc
            # outside the except block: the failed attempt's tensors (held by its traceback) are freed first
            old, self.tile_size = self.tile_size, smaller
            self.overlap = min(self.overlap, smaller // 2)
            LOG.warning("%s: out of memory with %s; trying %d-pixel tiles (overlap %d)", self.stage,
                        f"{old}-pixel tiles" if old else "the whole input", smaller, self.overlap)

    def next_size(self) -> int | None:
        """The tile edge to try after an out-of-memory error, or None when the current one is the smallest."""
        current = min(self.tile_size, self.extent) if self.tile_size else self.extent
        smaller = max(current // 2 // self.multiple * self.multiple, self.minimum)
        smaller = -(-smaller // self.multiple) * self.multiple
        return smaller if smaller < current else None

    def give_up_message(self, exc: BaseException) -> str:
        """One line: the stage, the sizes tried, the smallest, and what to do."""
        tried = ", ".join(str(s) if s else "whole input" for s in self.out_of_memory_at)
        first = " ".join(str(exc).split())[:200]
        return (f"{self.stage}: out of memory even with {self.tile_size or self.extent}-pixel tiles, the smallest "
                f"tried (tried {tried}; the stage's minimum is {self.minimum}); free accelerator memory, use a "
                f"lower precision or fewer tiles per batch. Last error: {first}")

    def record(self) -> dict:
        """For a run record: the tile edge and overlap used, the requested edge, the edges that ran out of memory."""
        return {"tile_size": self.tile_size, "tile_overlap": self.overlap, "requested_tile_size": self.requested,
                "out_of_memory_at": list(self.out_of_memory_at)}
