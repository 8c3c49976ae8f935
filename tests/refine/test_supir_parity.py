"""Refiner networks against the seed's own outputs on the tiny SUPIR (fixtures/supir_tiny)."""

from __future__ import annotations

import pytest
import torch
from rsvl_testing import supir_tiny_parts
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    fixtures = fixtures_dir
    parts = supir_tiny_parts(fixtures)
    io = load_file(fixtures / "supir_tiny" / "io.safetensors")
    return parts, io


def _control(parts, io):
    with torch.no_grad():
        return parts.control(io["in.hint"], io["in.x"], io["in.timesteps"], io["in.context"], io["in.y"])


def test_supir_parity_control_features(tiny):
    parts, io = tiny
    features = _control(parts, io)
    assert len(features) == 10
    for i, feature in enumerate(features):
        torch.testing.assert_close(feature, io[f"out.control.{i:02d}"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", ["1.0", "0.5", "0.0"])
def test_supir_parity_unet_output_at_control_scale(tiny, scale):
    parts, io = tiny
    features = _control(parts, io)
    with torch.no_grad():
        out = parts.unet(io["in.x"], io["in.timesteps"], io["in.context"], io["in.y"], features, float(scale))
    torch.testing.assert_close(out, io[f"out.unet.out_cs{scale}"], rtol=1e-4, atol=1e-4)


def test_supir_parity_control_scale_matters(tiny):
    """The three references differ, so a model that ignored control_scale would fail above."""
    _, io = tiny
    assert (io["out.unet.out_cs1.0"] - io["out.unet.out_cs0.0"]).abs().max() > 0.1
    assert (io["out.unet.out_cs1.0"] - io["out.unet.out_cs0.5"]).abs().max() > 0.05


def test_supir_parity_encoder_signal_and_embedding(tiny):
    """The cache signal (the seed's input_stage1 h: the whole encoder path) and the time+label embedding."""
    parts, io = tiny
    with torch.no_grad():
        emb = parts.unet.embed(io["in.timesteps"], io["in.y"])
        h, skips = parts.unet.forward_encoder(io["in.x"], emb, io["in.context"])
    torch.testing.assert_close(emb, io["out.unet.emb"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, io["out.unet.input_stage1.h"], rtol=1e-4, atol=1e-4)
    assert len(skips) == 9
    for i, skip in enumerate(skips):
        torch.testing.assert_close(skip, io[f"out.unet.input_stage1.hs.{i:02d}"], rtol=1e-4, atol=1e-4)


def test_supir_parity_zero_initialised_branches_are_wired(tiny):
    """Zeroing the hint conv (zero-initialised in the seed) must change the control features."""
    parts, io = tiny
    saved = parts.control.input_hint_block[0].weight.detach().clone()
    try:
        parts.control.input_hint_block[0].weight.data.zero_()
        changed = _control(parts, io)[0]
    finally:
        parts.control.input_hint_block[0].weight.data.copy_(saved)
    assert (changed - io["out.control.00"]).abs().max() > 1e-2
