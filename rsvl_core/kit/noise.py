"""Diffusion noise as a function of scene coordinates, so windows of one scene agree where they overlap.

A window of a large scene is sampled on its own (by whichever process or GPU takes it). If each window drew
its noise from its own generator, two overlapping windows would be independent samples of the same place and
the overlap could only be cross-faded. Here the noise of draw `k` at cell `(y, x)` of a scene grid is fixed by
(scene seed, stream, k, y, x) alone: the grid is cut into blocks, each block's noise comes from a generator
seeded by a hash of those numbers, and a window takes the cells it covers. Any window, of any size, at any
offset, on any worker, sees the same noise at the same place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

BLOCK = 64  # cells per block side: one generator per block and draw (big enough to be cheap, small to waste little)


@dataclass(frozen=True)
class NoiseField:
    """Standard normal noise over an unbounded 2-D grid, keyed by the scene seed (see the module doc)."""

    seed: int
    block: int = BLOCK

    def _block(self, stream: str, draw: int, channels: int, by: int, bx: int) -> torch.Tensor:
        key = f"{self.seed}/{stream}/{draw}/{channels}/{by}/{bx}".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        generator = torch.Generator().manual_seed(seed)
        return torch.randn((channels, self.block, self.block), generator=generator, dtype=torch.float32)

    def region(self, stream: str, draw: int, channels: int, y0: int, x0: int, height: int,
               width: int) -> torch.Tensor:
        """(channels, height, width) noise of cells [y0, y0 + height) x [x0, x0 + width) for draw `draw`."""
        if height <= 0 or width <= 0:
            raise ValueError(f"noise region must be non-empty, got {height} x {width}")
        b = self.block
        out = torch.empty((channels, height, width), dtype=torch.float32)
        for by in range(y0 // b, (y0 + height - 1) // b + 1):
            for bx in range(x0 // b, (x0 + width - 1) // b + 1):
                block = self._block(stream, draw, channels, by, bx)
                ya, yb = max(y0, by * b), min(y0 + height, (by + 1) * b)
                xa, xb = max(x0, bx * b), min(x0 + width, (bx + 1) * b)
                out[:, ya - y0:yb - y0, xa - x0:xb - x0] = block[:, ya - by * b:yb - by * b, xa - bx * b:xb - bx * b]
        return out


def coordinate_noise_source(field: NoiseField, stream: str, origin: tuple[int, int],
                            device: torch.device | str = "cpu") -> Callable[[tuple[int, ...]], torch.Tensor]:
    """A noise source for samplers (`shape -> noise`): the k-th call returns draw k of the grid region at
    `origin` (y, x) of the shape's size; every image of a batch gets the same region (one window per call)."""
    calls = [0]

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        *batch, channels, height, width = shape
        noise = field.region(stream, calls[0], channels, origin[0], origin[1], height, width)
        calls[0] += 1
        return noise.expand(*batch, channels, height, width).contiguous().to(device)

    return draw
