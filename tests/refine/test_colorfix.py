"""Colour fix: parity with the seed's utils/colorfix.py and the properties the refiner relies on."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rsvl_core.refine.colorfix import (
    adain_color_fix,
    apply_color_fix,
    calc_mean_std,
    wavelet_blur,
    wavelet_color_fix,
    wavelet_decomposition,
)


@pytest.fixture
def colorfix_io(fixtures_dir):
    return load_file(str(fixtures_dir / "colorfix" / "io.safetensors"))


def test_colorfix_parity_outputs(colorfix_io):
    content, style = colorfix_io["in.content"], colorfix_io["in.style"]
    torch.testing.assert_close(wavelet_color_fix(content, style), colorfix_io["out.wavelet_reconstruction"],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(adain_color_fix(content, style), colorfix_io["out.adaptive_instance_normalization"],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_color_fix(content, style, "wavelet"), colorfix_io["out.wavelet_reconstruction"],
                               atol=1e-6, rtol=0)


def test_colorfix_parity_debug_tensors(colorfix_io):
    content, style = colorfix_io["in.content"], colorfix_io["in.style"]
    content_high, content_low = wavelet_decomposition(content)
    _, style_low = wavelet_decomposition(style)
    style_mean, style_std = calc_mean_std(style)
    expected = {
        "dbg.content_high_freq": content_high,
        "dbg.content_low_freq": content_low,
        "dbg.style_low_freq": style_low,
        "dbg.wavelet_blur_content_r1": wavelet_blur(content, 1),
        "dbg.wavelet_blur_content_r16": wavelet_blur(content, 16),
        "dbg.style_mean": style_mean,
        "dbg.style_std": style_std,
    }
    for key, ours in expected.items():
        torch.testing.assert_close(ours, colorfix_io[key], atol=1e-6, rtol=0, msg=key)


def test_colorfix_decomposition_is_exact():
    image = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    high, low = wavelet_decomposition(image)
    torch.testing.assert_close(high + low, image, atol=1e-6, rtol=0)
    assert low.std() < image.std()  # the low band is actually smoother


def test_colorfix_wavelet_constant_shift_changes_only_low_frequencies():
    g = torch.Generator().manual_seed(1)
    content = torch.rand(1, 3, 48, 64, generator=g)
    style = torch.rand(1, 3, 48, 64, generator=g)
    shift = torch.tensor([0.1, -0.2, 0.05]).view(1, 3, 1, 1)
    base = wavelet_color_fix(content, style)
    shifted = wavelet_color_fix(content, style + shift)
    # A constant passes the (normalised) blur unchanged, so the shift lands entirely in the low band ...
    torch.testing.assert_close(shifted - base, shift.expand_as(base), atol=1e-5, rtol=0)
    # ... and the content's detail (high band) is what survives.
    high_out, _ = wavelet_decomposition(shifted)
    high_content, _ = wavelet_decomposition(content)
    high_style, _ = wavelet_decomposition(style)
    assert (high_out - high_content).abs().mean() < (high_out - high_style).abs().mean()


def test_colorfix_adain_matches_style_statistics():
    g = torch.Generator().manual_seed(2)
    content = torch.rand(2, 3, 32, 24, generator=g)
    style = torch.rand(2, 3, 32, 24, generator=g) * 0.3 + 0.5
    out_mean, out_std = calc_mean_std(adain_color_fix(content, style))
    style_mean, style_std = calc_mean_std(style)
    torch.testing.assert_close(out_mean, style_mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_std, style_std, atol=1e-3, rtol=0)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_colorfix_any_channel_count_and_size(channels):
    g = torch.Generator().manual_seed(3)
    content = torch.rand(1, channels, 17, 9, generator=g)  # smaller than the largest radius: replicate padding
    style = torch.rand(1, channels, 17, 9, generator=g)
    for method in ("wavelet", "adain"):
        out = apply_color_fix(content, style, method)
        assert out.shape == content.shape and torch.isfinite(out).all()
    # channels are independent: fixing channel 0 alone gives the same as channel 0 of the joint fix
    joint = wavelet_color_fix(content, style)
    torch.testing.assert_close(wavelet_color_fix(content[:, :1], style[:, :1]), joint[:, :1])


def test_colorfix_none_and_errors():
    content = torch.rand(1, 3, 16, 16)
    assert apply_color_fix(content, torch.rand(1, 3, 16, 16), "none") is content
    with pytest.raises(ValueError, match="method"):
        apply_color_fix(content, content, "histogram")
    with pytest.raises(ValueError, match="same shape"):
        wavelet_color_fix(content, torch.rand(1, 3, 16, 8))
    with pytest.raises(ValueError, match="same shape"):
        adain_color_fix(content, torch.rand(1, 1, 16, 16))
