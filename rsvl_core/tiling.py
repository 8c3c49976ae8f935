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


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length` with at least `overlap` shared.

    The last tile is aligned to the end, so every tile has the full size (when length >= tile)
    and the overlap is spread evenly.
    """
    if tile <= 0 or length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap {overlap} must be in [0, tile size {tile})")
    stride = tile - overlap
    count = -(-(length - tile) // stride) + 1  # ceil division
    if count == 1:
        return [0]
    # spread the starts evenly between 0 and length - tile
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def plan_tiles(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Tiles covering a (height, width) image; one tile when `tile_size` is 0 or large enough."""
    tiles = []
    for y in tile_starts(height, tile_size, overlap):
        for x in tile_starts(width, tile_size, overlap):
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
) -> torch.Tensor:
    """Apply `fn` to overlapping tiles of `inputs` and blend the outputs.

    Args:
        fn: maps (N, C, h, w) tiles to (N, out_channels, h, w) (same spatial size).
        inputs: (B, C, H, W).
        tile_size: tile edge in pixels (0 disables tiling: one call on the whole input).
        overlap: pixels shared by neighbouring tiles; also the feathering width.
        tile_batch: how many tiles go through `fn` at once.
    Returns:
        (B, out_channels, H, W) float32.
    """
    b, _, height, width = inputs.shape
    tiles = plan_tiles(height, width, tile_size, overlap)
    if len(tiles) == 1:
        return fn(inputs).float()
    out = torch.zeros(b, out_channels, height, width, dtype=torch.float32, device=inputs.device)
    weight_sum = torch.zeros(1, 1, height, width, dtype=torch.float32, device=inputs.device)
    window = feather_window(tiles[0].y1 - tiles[0].y0, tiles[0].x1 - tiles[0].x0, overlap, inputs.device)
    for start in range(0, len(tiles), max(1, tile_batch)):
        group = tiles[start:start + max(1, tile_batch)]
        batch = torch.cat([inputs[..., t.y0:t.y1, t.x0:t.x1] for t in group], dim=0)
        result = fn(batch).float()
        for i, t in enumerate(group):
            w = window[: t.y1 - t.y0, : t.x1 - t.x0]
            out[..., t.y0:t.y1, t.x0:t.x1] += result[i * b:(i + 1) * b] * w
            weight_sum[..., t.y0:t.y1, t.x0:t.x1] += w
    return out / weight_sum
