"""Uncertainty from N samples: combining, spread in output levels, summary, guard, heat map (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsvl_core.jobs.samples import (
    LEGEND_HEIGHT,
    UncertaintyOptions,
    apply_guard,
    combine_samples,
    guard_weights,
    heat_map,
    reduce_samples,
    sample_spread,
    summarise_spread,
)


def _samples(n: int = 3, h: int = 16, w: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, h, w), generator=torch.Generator().manual_seed(seed))


def test_uncertainty_median_of_identical_samples_is_the_sample():
    one = _samples(1)
    for n in (2, 3, 4):
        stack = one.expand(n, -1, -1, -1).clone()
        assert torch.equal(combine_samples(stack, "median"), one)
        assert torch.equal(combine_samples(stack, "first"), one)
        assert torch.allclose(combine_samples(stack, "mean"), one, atol=1e-7)
        assert torch.count_nonzero(sample_spread(stack)) == 0


def test_uncertainty_combine_values():
    stack = torch.tensor([0.1, 0.5, 0.2, 0.9]).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    assert torch.allclose(combine_samples(stack, "median"), torch.full((1, 3, 2, 2), 0.35))
    assert torch.allclose(combine_samples(stack, "mean"), torch.full((1, 3, 2, 2), 0.425))
    assert torch.allclose(combine_samples(stack, "first"), torch.full((1, 3, 2, 2), 0.1))
    with pytest.raises(ValueError, match="combine must be one of"):
        combine_samples(stack, "max")


def test_uncertainty_spread_is_in_output_levels():
    # two samples 20 levels apart in every channel: sample std (N - 1) = 20 / sqrt(2) levels
    a = torch.full((1, 3, 4, 4), 100 / 255)
    b = torch.full((1, 3, 4, 4), 120 / 255)
    spread = sample_spread(torch.cat([a, b]))
    assert spread.shape == (1, 1, 4, 4)
    assert torch.allclose(spread, torch.full_like(spread, 20 / 2 ** 0.5), atol=1e-3)


def test_uncertainty_summary_numbers():
    spread = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    summary = summarise_spread(spread, threshold=89.5)
    assert summary.mean == pytest.approx(49.5)
    assert summary.p95 == pytest.approx(94.05)
    assert summary.fraction_above == pytest.approx(0.10)
    assert summarise_spread(spread).fraction_above == 0.0
    valid = torch.zeros(10, 10, dtype=torch.bool)
    valid[:5] = True  # only values 0..49 count
    assert summarise_spread(spread, 40, valid).fraction_above == pytest.approx(9 / 50)
    assert "10.00% of pixels above 89.5" in summary.text()


def test_uncertainty_guard_replaces_exactly_the_pixels_above_threshold():
    torch.manual_seed(0)
    samples = _samples(4, 24, 24)
    base = torch.full((4, 3, 24, 24), 0.5)
    # the samples agree (spread 0) except in a few spots where they are random
    spots = torch.zeros(24, 24, dtype=torch.bool)
    spots[3, 4] = spots[10:12, 15:18] = spots[20, 2] = True
    samples = torch.where(spots, samples, base)
    fallback = torch.full((1, 3, 24, 24), 0.2)
    spread = sample_spread(samples)
    threshold = 5.0
    above = spread[0, 0] > threshold
    assert above.sum() > 0 and torch.equal(above, above & spots)
    combined = combine_samples(samples, "first")
    guarded, fraction = apply_guard(combined, fallback, spread, threshold, feather=0)
    changed = (guarded != combined).any(dim=1)[0]
    assert torch.equal(changed, above)
    assert torch.equal(guarded[..., above], fallback[..., above])
    assert fraction == pytest.approx(above.float().mean().item())


def test_uncertainty_guard_feather_fades_out_and_keeps_far_pixels():
    spread = torch.zeros(1, 1, 40, 40)
    spread[..., 20, 20] = 50.0
    image, fallback = torch.ones(1, 3, 40, 40), torch.zeros(1, 3, 40, 40)
    feather = 6
    guarded, fraction = apply_guard(image, fallback, spread, 10.0, feather=feather)
    assert fraction == pytest.approx(1 / 1600)
    assert guarded[0, 0, 20, 20] == 0.0                          # replaced exactly
    row = guarded[0, 0, 20, 20:20 + feather + 2].tolist()        # rises monotonically back to the image
    assert all(b >= a for a, b in zip(row, row[1:], strict=False)) and row[-1] == 1.0
    assert 0 < row[feather // 2] < 1
    far = torch.ones(40, 40, dtype=torch.bool)
    far[20 - feather:20 + feather + 1, 20 - feather:20 + feather + 1] = False
    assert torch.equal(guarded[0][:, far], image[0][:, far])     # untouched beyond the feather
    weights = guard_weights(spread, 10.0, feather)
    steps = weights[0, 0, 20, 20:20 + feather + 2]
    assert float((steps[:-1] - steps[1:]).max()) <= 1 / (feather + 1) + 1e-6  # no jump bigger than one ramp step


def test_uncertainty_guard_off_changes_nothing():
    samples = _samples(3)
    combined = combine_samples(samples, "median")
    out, fraction = apply_guard(combined, torch.zeros_like(combined), sample_spread(samples), 0.0)
    assert out is combined and fraction == 0.0


def test_uncertainty_reduce_samples_uses_options():
    samples = _samples(3)
    fallback = torch.zeros(1, 3, 16, 20)
    result = reduce_samples(samples, fallback, UncertaintyOptions(samples=3, combine="mean", guard=1.0, feather=0))
    assert result.spread.shape == (1, 1, 16, 20)
    # random samples: nearly every pixel has a spread above one level, so nearly everything falls back
    assert result.fraction_replaced > 0.9
    assert torch.equal(result.image[..., result.spread[0, 0] > 1.0], fallback[..., result.spread[0, 0] > 1.0])


def test_uncertainty_options_refuse_bad_values():
    with pytest.raises(ValueError, match="samples must be an integer in 1..64"):
        UncertaintyOptions(samples=0)
    with pytest.raises(ValueError, match="combine must be one of first, median, mean"):
        UncertaintyOptions(samples=2, combine="mode")
    with pytest.raises(ValueError, match="guard threshold must be in 0..255"):
        UncertaintyOptions(samples=2, guard=-1)
    with pytest.raises(ValueError, match="need --samples N with N >= 2"):
        UncertaintyOptions(samples=1, guard=3)
    assert not UncertaintyOptions().enabled and UncertaintyOptions(samples=2).enabled


def test_uncertainty_heat_map_has_a_legend_and_orders_colours():
    spread = torch.linspace(0, 40, 64).view(1, 1, 1, 64).expand(1, 1, 30, 64)
    picture = heat_map(spread, threshold=20.0)
    assert picture.shape == (30 + LEGEND_HEIGHT, 64, 3) and picture.dtype == np.uint8
    lightness = picture[:30].astype(float).mean(axis=(0, 2))
    assert lightness[-1] > lightness[0] + 150                   # bright where the samples disagree
    legend = picture[30:]
    assert (legend[2:12] != 255).any() and (legend[14:] < 128).any()  # colour bar and dark label text
    assert heat_map(spread, legend=False).shape == (30, 64, 3)


def _seam_jump(image: np.ndarray, seam: int) -> tuple[float, float]:
    """(mean column-to-column jump at `seam`, largest such jump elsewhere) of an (H, W, 3) image."""
    jumps = np.abs(np.diff(image.astype(np.float64), axis=1)).mean(axis=(0, 2))
    return float(jumps[seam - 1]), float(np.delete(jumps, [seam - 2, seam - 1, seam]).max())


def test_uncertainty_guard_leaves_no_seam_across_windows():
    """Windows guarded one by one (as every window of a scene is) and blended by the scene's blender: smooth
    samples with a disagreeing blob across the window boundary, and windows that differ slightly where they
    overlap (as separately sampled windows do): no jump at the boundary; a hard splice of the same windows shows one."""
    from rsvl_core.scenes.windows import ArraySink, WindowBlender, WindowOptions, plan_windows

    height, width, scale = 24, 56, 2
    windows = WindowOptions(size=32, overlap=8)
    yy, xx = np.mgrid[0:height * scale, 0:width * scale].astype(np.float32)
    base = torch.from_numpy(0.3 + 0.4 * xx / xx.max())[None, None].expand(1, 3, -1, -1)
    blob = torch.from_numpy(np.exp(-((yy - 24) ** 2 + (xx - 56) ** 2) / (2 * 12.0 ** 2)))[None, None]
    samples = torch.cat([base + (k - 1) * 0.15 * blob for k in range(3)])        # disagree inside the blob
    fallback = (base * 0.8).clone()
    options = UncertaintyOptions(samples=3, combine="mean", guard=15.0, feather=6)
    tiles = plan_windows(height, width, windows, scale)
    assert len(tiles) == 2
    sink = ArraySink(height * scale, width * scale)
    blender = WindowBlender(height, width, scale, windows, sink)
    pieces = []
    for index, tile in enumerate(tiles):
        cut = (..., slice(tile.y0 * scale, tile.y1 * scale), slice(tile.x0 * scale, tile.x1 * scale))
        window_samples = samples[cut] + 0.04 * index                               # windows differ a little
        reduced = reduce_samples(window_samples, fallback[cut] + 0.04 * index, options)
        assert 0 < reduced.fraction_replaced < 1
        pieces.append(reduced.image)
        blender.add(reduced.image)
    seam = tiles[1].x0 * scale + windows.overlap * scale // 2                     # the middle of the overlap
    at, elsewhere = _seam_jump(sink.array, seam)
    assert at <= elsewhere * 1.5 + 1                                              # within 8-bit rounding
    hard = np.concatenate([pieces[0][0, :, :, :seam].permute(1, 2, 0).numpy(),
                           pieces[1][0, :, :, seam - tiles[1].x0 * scale:].permute(1, 2, 0).numpy()], axis=1)
    hard_at, hard_elsewhere = _seam_jump(np.round(hard * 255), seam)
    assert hard_at > hard_elsewhere * 1.5 + 1                                     # the metric sees a real seam
