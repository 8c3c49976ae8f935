"""One blender for every tile and window, and one tiled call that halves its tile on out-of-memory (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsvl_core.kit.errors import TileMemoryError
from rsvl_core.kit.tiling import (
    Feather,
    Tile,
    TileBlender,
    TileFit,
    TileGrid,
    is_out_of_memory,
    plan_tiles,
    run_tiled,
    tile_weights,
)
from rsvl_core.scenes.windows import ArraySink, WindowOptions, blend_windows, plan_windows

FEATHERS = {"ramp": Feather(8), "ramp, border 1": Feather(8, border=False), "guarded": Feather.guarded(12, scale=2),
            "none": Feather(0)}


def _scaled(tiles: list[Tile], scale: int) -> list[Tile]:
    return [Tile(t.y0 * scale, t.y1 * scale, t.x0 * scale, t.x1 * scale) for t in tiles]


def _blend(tiles: list[Tile], height: int, width: int, feather: Feather, value_of) -> torch.Tensor:
    blender = TileBlender(height, width, feather)
    for index, tile in enumerate(tiles):
        blender.add(tile, value_of(index, tile))
    return blender.result()


# -- the one blender --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("feather", FEATHERS.values(), ids=FEATHERS.keys())
def test_engine_one_blender_constant_tiles_give_the_constant(feather):
    tiles = _scaled(plan_tiles(37, 53, 16, 12), 2)  # 2x outputs of 16-pixel tiles overlapping by >= 12
    out = _blend(tiles, 74, 106, feather, lambda i, t: torch.full((2, 3, t.y1 - t.y0, t.x1 - t.x0), 0.37))
    assert out.shape == (2, 3, 74, 106)
    assert (out - 0.37).abs().max().item() <= 1e-6


@pytest.mark.parametrize("feather", FEATHERS.values(), ids=FEATHERS.keys())
def test_engine_one_blender_weights_sum_to_one(feather):
    """Blending tile k's indicator (1 on tile k, 0 from every other tile), summed over k, is 1 everywhere."""
    tiles = _scaled(plan_tiles(37, 53, 16, 12), 2)
    parts = [_blend(tiles, 74, 106, feather,
                    lambda i, t, k=k: torch.full((1, 1, t.y1 - t.y0, t.x1 - t.x0), float(i == k)))
             for k in range(len(tiles))]
    total = torch.stack(parts).sum(0)
    assert torch.isfinite(total).all() and (total - 1).abs().max().item() <= 1e-6
    assert all(p.min() >= 0 and p.max() <= 1 + 1e-6 for p in parts)
    # a pixel only tile 0 covers (the top-left corner) is tile 0's own value
    assert parts[0][..., 0, 0].item() == 1.0


@pytest.mark.parametrize("scale,tile_batch", [(1, 3), (2, 2), (0.25, 1)])
def test_engine_one_blender_tile_grid_reproduces_a_per_pixel_function_exactly(scale, tile_batch):
    x = torch.randn(2, 3, 72, 136, generator=torch.Generator().manual_seed(0))

    def fn(tiles: torch.Tensor) -> torch.Tensor:  # a per-pixel function at every scale (per 4x4 block for 1/4)
        y = tiles * 2 + 1
        if scale == 2:
            return y.repeat_interleave(2, -2).repeat_interleave(2, -1)
        return F.avg_pool2d(y, 4) if scale == 0.25 else y

    out = run_tiled(fn, x, tile_size=32, overlap=8, tile_batch=tile_batch, scale=scale)
    assert len(TileGrid.plan(72, 136, 32, 8, tile_batch, scale).tiles) > 1
    assert out.shape == fn(x).shape
    assert (out - fn(x)).abs().max().item() <= 1e-5  # values ~4: a few float32 ulps of the weighted mean


def test_engine_one_blender_two_passes_equal_one_pass_bit_for_bit():
    """The step caches cut, compute, then blend in a second pass: the same numbers as run_tiled."""
    x = torch.randn(1, 4, 50, 70, generator=torch.Generator().manual_seed(1))

    def fn(tiles: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(tiles, 5, 1, 2) * 3 - tiles.mean()

    grid = TileGrid.plan(50, 70, 24, 8, tile_batch=2)
    outputs = [fn(batch) for batch in grid.batches(x)]
    assert torch.equal(grid.blend(outputs), run_tiled(fn, x, 24, 8, tile_batch=2))
    with pytest.raises(ValueError, match="outputs for"):
        grid.blend(outputs[:-1])


def _old_feather(n: int, ramp: int) -> torch.Tensor:
    """The weights run_tiled and the scene windows used before the one blender (the recorded outputs)."""
    r, w = min(ramp, n // 2), torch.ones(n)
    if r > 0:
        edge = 0.5 - 0.5 * torch.cos(torch.pi * ((torch.arange(r, dtype=torch.float32) + 0.5) / r))
        w[:r], w[n - r:] = edge, edge.flip(0)
    return w


def _old_guarded(lo: int, hi: int, length: int, overlap: int, scale: int) -> torch.Tensor:
    """Spandrel's own weights before the one blender."""
    n, margin, ramp = (hi - lo) * scale, (overlap // 4) * scale, (overlap - 2 * (overlap // 4)) * scale
    w = torch.ones(n)
    if ramp > 0:
        rise = 0.5 - 0.5 * torch.cos(torch.pi * ((torch.arange(n, dtype=torch.float32) - margin + 0.5) / ramp)
                                     .clamp(0.0, 1.0))
        w = w * rise if lo > 0 else w
        w = w * rise.flip(0) if hi < length else w
    return w


@pytest.mark.parametrize("tile,overlap,scale", [(32, 8, 1), (48, 16, 2), (24, 12, 4), (20, 5, 3), (16, 0, 2)])
def test_engine_one_blender_keeps_each_callers_weights_bit_for_bit(tile, overlap, scale):
    """Outputs stay as recorded: SR3/refiner/VAE/windows keep the raised cosine at every edge, spandrel its
    guarded feather (weight 0 on the outer quarter of the overlap, 1 at the image border)."""
    height, width = 3 * tile + 5, 2 * tile + 1
    for t in plan_tiles(height, width, tile, overlap):
        out = Tile(t.y0 * scale, t.y1 * scale, t.x0 * scale, t.x1 * scale)
        h, w = out.y1 - out.y0, out.x1 - out.x0
        plain = tile_weights(out, height * scale, width * scale, Feather(overlap * scale))
        assert torch.equal(plain, _old_feather(h, overlap * scale)[:, None] * _old_feather(w, overlap * scale)[None])
        guarded = tile_weights(out, height * scale, width * scale, Feather.guarded(overlap, scale))
        old = (_old_guarded(t.y0, t.y1, height, overlap, scale)[:, None]
               * _old_guarded(t.x0, t.x1, width, overlap, scale)[None])
        assert torch.equal(guarded, old)


def test_engine_one_blender_strip_equals_the_whole_canvas():
    """Rows taken as soon as a row of tiles is in: the same numbers as blending the whole canvas, in a strip."""
    tiles = plan_tiles(90, 60, 32, 8)
    values = {t: torch.rand(1, 3, t.y1 - t.y0, t.x1 - t.x0, generator=torch.Generator().manual_seed(i))
              for i, t in enumerate(tiles)}
    whole = _blend(tiles, 90, 60, Feather(8), lambda i, t: values[t])
    strip, taken, held = TileBlender(90, 60, Feather(8), strip=True), [], []
    starts = sorted({t.y0 for t in tiles})
    for i, t in enumerate(tiles):
        strip.add(t, values[t])
        held.append(strip.held_rows)
        if i + 1 == len(tiles) or tiles[i + 1].y0 != t.y0:
            later = [s for s in starts if s > t.y0]
            taken.append(strip.take(later[0] if later else 90))
    # exact: the same tiles, weights and order of adds on both sides, per pixel only IEEE add/mul/div (no sums over
    # pixels), so only the buffer's shape differs and no kernel path or thread count can change a bit
    assert torch.equal(torch.cat(taken, dim=-2), whole)
    assert max(held) <= 32 + 32 - 8  # never the whole canvas: at most a row of tiles and the rows still open
    with pytest.raises(ValueError, match="taken already"):
        strip.add(tiles[0], values[tiles[0]])


def test_engine_scene_windows_blend_through_the_one_blender():
    """WindowBlender writes, row strip by row strip, exactly the one blender's whole-canvas result."""
    windows, scale = WindowOptions(size=16, overlap=4), 3
    tiles = plan_windows(37, 53, windows, scale)
    outputs = [torch.rand(1, 3, (t.y1 - t.y0) * scale, (t.x1 - t.x0) * scale,
                          generator=torch.Generator().manual_seed(i)) for i, t in enumerate(tiles)]
    sink = ArraySink(37 * scale, 53 * scale)
    assert blend_windows(37, 53, scale, windows, outputs, sink) == len(tiles) > 1
    whole = _blend(_scaled(tiles, scale), 37 * scale, 53 * scale, Feather(windows.overlap * scale),
                   lambda i, t: outputs[i])
    expected = np.clip(np.round(whole[0].permute(1, 2, 0).numpy() * 255.0), 0, 255).astype(np.uint8)
    # exact: the same windows on both sides (a strip buffer against the whole canvas), per pixel the same IEEE
    # add/mul/div in the same order and the same rounding to 8 bits
    assert sink.rows_written == 37 * scale and np.array_equal(sink.array, expected)


# -- out of memory: halve the tile and run again ------------------------------------------------------------------


class OomAbove:
    """A fake model that runs out of memory on tiles with an edge above `limit` (a local, not per-pixel, op)."""

    def __init__(self, limit: int, error: Exception | None = None) -> None:
        self.limit, self.sizes = limit, []
        self.error = error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        self.sizes.append(max(tiles.shape[-2:]))
        if max(tiles.shape[-2:]) > self.limit:
            raise self.error
        return F.avg_pool2d(tiles, 5, 1, 2) * 2 + 1  # zero padding at tile edges: the tile size shows


def test_engine_oom_fit_halves_the_tile_and_equals_the_smaller_tile():
    x = torch.randn(1, 3, 100, 90, generator=torch.Generator().manual_seed(2))
    model, fit = OomAbove(20), TileFit(64, 16, extent=100, minimum=8)
    out = fit.run(lambda tile, overlap: run_tiled(model, x, tile, overlap, tile_batch=2))
    direct = run_tiled(OomAbove(1000), x, 16, 8, tile_batch=2)
    assert torch.equal(out, direct)
    assert (out - run_tiled(OomAbove(1000), x, 32, 16, tile_batch=2)).abs().max().item() > 1e-3  # tiles matter
    # 64 and 32 ran out of memory; the overlap stays at most half the tile (16 -> 16 -> 8)
    assert fit.record() == {"tile_size": 16, "tile_overlap": 8, "requested_tile_size": 64,
                            "out_of_memory_at": [64, 32]}
    # a later call (the next sampler step) starts at the tile that fitted
    model.sizes.clear()
    assert torch.equal(fit.run(lambda tile, overlap: run_tiled(model, x, tile, overlap, tile_batch=2)), direct)
    assert max(model.sizes) == 16


def test_engine_oom_fit_tiles_a_whole_input_that_does_not_fit():
    x = torch.randn(2, 3, 100, 70, generator=torch.Generator().manual_seed(3))
    fit = TileFit(0, 12, extent=100, minimum=8)
    out = fit.run(lambda tile, overlap: run_tiled(OomAbove(60), x, tile, overlap))
    assert torch.equal(out, run_tiled(OomAbove(1000), x, 50, 12))
    assert (fit.tile_size, fit.overlap, fit.out_of_memory_at) == (50, 12, [0])


def test_engine_oom_fit_retries_runtime_errors_that_say_out_of_memory_and_nothing_else():
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    mps = OomAbove(32, RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)"))
    fit = TileFit(64, 8, extent=64, minimum=16)
    assert torch.equal(fit.run(lambda t, o: run_tiled(mps, x, t, o)), run_tiled(OomAbove(1000), x, 32, 8))
    other = OomAbove(0, RuntimeError("Given groups=1, weight of size [8, 3, 3, 3], expected input"))
    fit = TileFit(64, 8, extent=64, minimum=16)
    with pytest.raises(RuntimeError, match="groups=1"):
        fit.run(lambda t, o: run_tiled(other, x, t, o))
    assert other.sizes == [64] and fit.tile_size == 64 and fit.out_of_memory_at == []
    assert is_out_of_memory(torch.OutOfMemoryError("x")) and not is_out_of_memory(ValueError("out of memory"))
    assert not is_out_of_memory(TileMemoryError("stage: out of memory even with 16-pixel tiles"))


def test_engine_oom_fit_gives_up_naming_the_smallest_size_tried():
    x = torch.randn(1, 3, 100, 100, generator=torch.Generator().manual_seed(5))
    fit = TileFit(64, 16, extent=100, minimum=24, multiple=8, stage="stage 1 (test)")
    with pytest.raises(TileMemoryError) as caught:
        fit.run(lambda tile, overlap: run_tiled(OomAbove(0), x, tile, overlap))
    message = str(caught.value)
    # 64 -> 32 -> 24 (16 is below the minimum, so the minimum itself is the last try)
    assert fit.out_of_memory_at == [64, 32, 24] and fit.tile_size == 24
    assert message.startswith("stage 1 (test): out of memory even with 24-pixel tiles, the smallest tried")
    assert "tried 64, 32, 24" in message and "minimum is 24" in message
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
