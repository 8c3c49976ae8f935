"""Overlapping tiles with smooth blending, so memory is bounded by the tile size, not the image.

Diffusion samplers call :func:`run_tiled` once per step on the *whole* current sample: every tile
is denoised, and the per-tile predictions are blended with feathered weights before the sampler
step. Neighbouring tiles therefore agree at every step, which is what removes seams (stitching
independently sampled tiles would not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def feather_window(height: int, width: int, ramp: int, device: torch.device | None = None) -> torch.Tensor:
    """(height, width) weights that rise smoothly (raised cosine) over `ramp` pixels at each edge.

    Never zero, so a pixel covered by a single tile is still normalised correctly.
    """

    def ramp_1d(n: int) -> torch.Tensor:
        r = min(ramp, n // 2)
        w = torch.ones(n, dtype=torch.float32, device=device)
        if r > 0:
            pos = (torch.arange(r, dtype=torch.float32, device=device) + 0.5) / r
            edge = 0.5 - 0.5 * torch.cos(torch.pi * pos)
            w[:r] = edge
            w[n - r:] = edge.flip(0)
        return w

    return ramp_1d(height)[:, None] * ramp_1d(width)[None, :]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W at the bottom/right up to a multiple (reflect where possible) for the UNet."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (ph, pw)


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    out_channels: int,
    tile_size: int,
    overlap: int,
    tile_batch: int = 1,
    scale: int | float = 1,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Apply `fn` to overlapping tiles of `inputs` and blend the outputs.

    Args:
        fn: maps (N, C, h, w) tiles to (N, out_channels, h * scale, w * scale).
        inputs: (B, C, H, W).
        tile_size: tile edge in input pixels (0 disables tiling: one call on the whole input).
        overlap: input pixels shared by neighbouring tiles; also the feathering width.
        tile_batch: how many tiles go through `fn` at once.
        scale: output size / input size: an integer >= 1 (e.g. 8 for a VAE decoder) or 1/k for an
            integer k (e.g. 1/8 for a VAE encoder; H and W must then be multiples of k). Tiles are
            planned on the coarser of the two grids, so every tile edge maps to a whole pixel on both.
        on_tile: called as `on_tile(done, total)` after each group of tiles (progress reporting).
    Returns:
        (B, out_channels, H * scale, W * scale) float32.
    """
    b, _, height, width = inputs.shape
    up, down = _scale_factors(scale)
    if height % down or width % down:
        raise ValueError(f"run_tiled: input size {height}x{width} must be a multiple of {down} for scale 1/{down}")
    # Plan on the coarse grid (the input when upscaling, the output when downscaling).
    tiles = plan_tiles(height // down, width // down, tile_size // down if tile_size else 0, overlap // down)
    if len(tiles) == 1:
        result = fn(inputs).float()
        if on_tile is not None:
            on_tile(1, 1)
        return result
    out = torch.zeros(b, out_channels, height * up // down, width * up // down, dtype=torch.float32,
                      device=inputs.device)
    weight_sum = torch.zeros(1, 1, *out.shape[-2:], dtype=torch.float32, device=inputs.device)
    first = tiles[0]
    window = feather_window((first.y1 - first.y0) * up, (first.x1 - first.x0) * up, overlap * up // down,
                            inputs.device)
    step = max(1, tile_batch)
    for start in range(0, len(tiles), step):
        group = tiles[start:start + step]
        batch = torch.cat([inputs[..., t.y0 * down:t.y1 * down, t.x0 * down:t.x1 * down] for t in group], dim=0)
        result = fn(batch).float()
        for i, t in enumerate(group):
            y0, y1, x0, x1 = t.y0 * up, t.y1 * up, t.x0 * up, t.x1 * up
            w = window[: y1 - y0, : x1 - x0]
            out[..., y0:y1, x0:x1] += result[i * b:(i + 1) * b] * w
            weight_sum[..., y0:y1, x0:x1] += w
        if on_tile is not None:
            on_tile(start + len(group), len(tiles))
    return out / weight_sum


def tile_batches(inputs: torch.Tensor, tile_size: int, overlap: int, tile_batch: int = 1) -> list[torch.Tensor]:
    """The batches of tiles `run_tiled` (scale 1) passes to its function, in the same order.

    For work split in two passes (a step cache looks at every tile before deciding), the second pass
    can hand `run_tiled` results computed from these batches.
    """
    tiles = plan_tiles(inputs.shape[-2], inputs.shape[-1], tile_size, overlap)
    if len(tiles) == 1:
        return [inputs]
    step = max(1, tile_batch)
    return [torch.cat([inputs[..., t.y0:t.y1, t.x0:t.x1] for t in tiles[start:start + step]], dim=0)
            for start in range(0, len(tiles), step)]


def _scale_factors(scale: int | float) -> tuple[int, int]:
    """(up, down) integers with scale == up / down and one of them 1; ValueError for other ratios."""
    if scale >= 1 and float(scale).is_integer():
        return int(scale), 1
    if 0 < scale < 1 and abs(1 / scale - round(1 / scale)) < 1e-6:
        return 1, round(1 / scale)
    raise ValueError(f"run_tiled: scale must be an integer >= 1 or 1/k for an integer k, got {scale}")


def blend_batches(outputs: list[torch.Tensor], inputs: torch.Tensor, out_channels: int, tile_size: int,
                  overlap: int, tile_batch: int = 1) -> torch.Tensor:
    """Blend per-batch outputs, one per `tile_batches(inputs, ...)` entry and in that order, as `run_tiled` would.

    For work split in two passes (a step cache looks at every tile before deciding): the second pass computes
    each batch's output from what the first pass kept, and this function places them. Same arithmetic, same
    order as `run_tiled` at scale 1, so the result is bit-identical.
    """
    b, _, height, width = inputs.shape
    tiles = plan_tiles(height, width, tile_size, overlap)
    step = max(1, tile_batch)
    groups = [tiles[start:start + step] for start in range(0, len(tiles), step)]
    if len(outputs) != len(groups):
        raise ValueError(f"blend_batches: {len(outputs)} outputs for {len(groups)} tile batches")
    if len(tiles) == 1:
        return outputs[0].float()
    out = torch.zeros(b, out_channels, height, width, dtype=torch.float32, device=inputs.device)
    weight_sum = torch.zeros(1, 1, height, width, dtype=torch.float32, device=inputs.device)
    first = tiles[0]
    window = feather_window(first.y1 - first.y0, first.x1 - first.x0, overlap, inputs.device)
    for group, result in zip(groups, outputs, strict=True):
        result = result.float()
        for i, t in enumerate(group):
            w = window[: t.y1 - t.y0, : t.x1 - t.x0]
            out[..., t.y0:t.y1, t.x0:t.x1] += result[i * b:(i + 1) * b] * w
            weight_sum[..., t.y0:t.y1, t.x0:t.x1] += w
    return out / weight_sum
