"""Large scenes in windows: exact sizes, rows written once and in order, no seams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rsvl_testing import OracleDenoiser, zero_padded_blur

from rsvl_core.kit.image import read_image
from rsvl_core.scenes.windows import ArraySink, WindowOptions, blend_windows, plan_windows
from rsvl_core.stage1 import Stage1Options, upscale_stage1

YELL = Path(__file__).parents[1].parent / "shared" / "data" / "YELL_541000_4977000_crop.png"


def super_resolve_scene(height, width, scale, windows, read, process, sink):
    """Window by window into `sink` (the job API's windowed loop, with stand-in read and process steps)."""
    tiles = plan_windows(height, width, windows, scale)
    return blend_windows(height, width, scale, windows, (process(read(t), i) for i, t in enumerate(tiles)), sink)


def _nearest(image: torch.Tensor, scale: int) -> torch.Tensor:
    return image.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def test_windows_reassemble_a_deterministic_process_exactly():
    scene = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    sink = ArraySink(37 * 3, 53 * 3)
    count = super_resolve_scene(37, 53, 3, WindowOptions(size=16, overlap=4),
                                lambda t: scene[..., t.y0:t.y1, t.x0:t.x1], lambda img, i: _nearest(img, 3), sink)
    # window starts on multiples of 8 input pixels (8 // gcd(8, 3)): 0, 8, 16, 21 down; 0, 8, ..., 32, 37 across
    assert count == 4 * 6 and sink.rows_written == 111
    expected = np.clip(np.round(_nearest(scene, 3)[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
    # Whole scene against windows: where windows overlap, the blend sum(v * w) / sum(w) of equal values v is v only
    # within a few float32 ulps (up to 4 windows: <= 6 roundings, 4e-7 relative, 1e-4 of an 8-bit level), which
    # moves a value lying that close to a rounding boundary by one level: at most 1 level, on at most 0.1 % of the
    # values (expected under 0.02 %; measured: none). Windows read one pixel off move 90 % of the values (random
    # values: by up to 252 levels).
    diff = np.abs(sink.array.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, f"max {diff.max()}, {(diff > 0).mean():.3%} differ"


def test_window_options_are_checked():
    with pytest.raises(ValueError, match="less than half"):
        WindowOptions(size=16, overlap=8).check()


def _border_ratio(image: np.ndarray, positions: list[int], axis: int) -> float:
    """Mean |difference| between neighbouring rows/columns at `positions`, over the median elsewhere."""
    img = image.astype(np.float32)
    diff = np.abs(np.diff(img, axis=axis)).mean(axis=(1 - axis, 2) if axis == 0 else (0, 2))
    return float(max(diff[p] for p in positions) / np.median(diff))


@pytest.mark.skipif(not YELL.is_file(), reason=f"shared sample {YELL} not found")
def test_large_scene_in_small_windows_is_seamless_and_exact_size():
    """The real 1249x1035 YELL crop, downsampled to 156x129, through stage 1 in 48-pixel windows at 2x.

    The model is an oracle whose clean image is a zero-padded blur of what it sees: local, like a
    real network, and it darkens the edges of every window, so pasting windows leaves visible seams.
    """
    scene, _ = read_image(YELL)
    scene = torch.nn.functional.interpolate(scene, (129, 156), mode="area")
    from rsvl_core.stage1.loader import SR3Model

    model = SR3Model(unet=OracleDenoiser(lambda c: zero_padded_blur(c, radius=2)))
    options = Stage1Options(sampler="ddim", steps=3, tile_size=0)
    sink = ArraySink(129 * 2, 156 * 2)
    windows = WindowOptions(size=48, overlap=12)
    count = super_resolve_scene(129, 156, 2, windows, lambda t: scene[..., t.y0:t.y1, t.x0:t.x1],
                                lambda img, i: upscale_stage1(model, img, 2, options, seed=i), sink)
    assert count == 16 and sink.array.shape == (258, 312, 3) and sink.rows_written == 258
    from rsvl_core.kit.tiling import tile_starts

    # window edges in output pixels (where a hard seam would be), excluding the scene border
    ys = sorted({2 * (s + 48) - 1 for s in tile_starts(129, 48, 12)} | {2 * s - 1 for s in tile_starts(129, 48, 12)})
    xs = sorted({2 * (s + 48) - 1 for s in tile_starts(156, 48, 12)} | {2 * s - 1 for s in tile_starts(156, 48, 12)})
    ys = [y for y in ys if 0 <= y < 257]
    xs = [x for x in xs if 0 <= x < 311]
    blended = max(_border_ratio(sink.array, ys, 0), _border_ratio(sink.array, xs, 1))
    print(f"seam ratio blended {blended:.2f}")
    assert blended < 2.0
    # control: the same windows pasted without blending show seams this measure catches
    pasted = np.zeros_like(sink.array)
    from rsvl_core.kit.tiling import plan_tiles

    for i, t in enumerate(plan_tiles(129, 156, 48, 12)):
        out = upscale_stage1(model, scene[..., t.y0:t.y1, t.x0:t.x1], 2, options, seed=i)
        pasted[2 * t.y0:2 * t.y1, 2 * t.x0:2 * t.x1] = (out[0].permute(1, 2, 0).numpy() * 255).round()
    hard = max(_border_ratio(pasted, ys, 0), _border_ratio(pasted, xs, 1))
    print(f"seam ratio pasted {hard:.2f}")
    assert hard > 2.0
