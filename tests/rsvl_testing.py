"""Test helpers: where the reference fixtures are, and tiny models built in code (importable by tests)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("RSVL_FIXTURES", REPO.parent / "shared" / "fixtures"))
SAMPLE_IMAGE = REPO / "rsvl_core" / "samples" / "osbs_029_lr100.png"


def tiny_sr3_config(**overrides):
    """A small SR3 architecture that runs in milliseconds on a CPU."""
    from rsvl_core.stage1 import SR3Config

    options = dict(inner_channel=16, channel_mults=(1, 2), attention_levels=(1,), res_blocks=1,
                   norm_groups=8, dropout=0.0)
    options.update(overrides)
    return SR3Config(**options)


def tiny_sr3_model(seed: int = 0, **overrides):
    from rsvl_core.stage1 import SR3Model, SR3UNet

    torch.manual_seed(seed)
    return SR3Model(unet=SR3UNet(tiny_sr3_config(**overrides)).eval())


class _Config:
    size_multiple = 1
    out_channel = 3


class OracleDenoiser(nn.Module):
    """Predicts the exact noise for a known clean image: x0 = target_fn(condition).

    With it every correct sampler must end at x0, which checks the noise-level bookkeeping.
    `target_fn` sees only the pixels it is given (a tile, when tiled), like a real network.
    """

    def __init__(self, target_fn) -> None:
        super().__init__()
        self.config = _Config()
        self.target_fn = target_fn
        self.calls = 0
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device and dtype

    def forward(self, sample: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        condition, x_t = sample[:, :3], sample[:, 3:]
        x0 = self.target_fn(condition)
        a = noise_level.view(-1, 1, 1, 1).to(x_t.dtype)
        return (x_t - a * x0) / (1 - a**2).sqrt()


def zero_padded_blur(image: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Box blur with zero padding: darkens the edges of whatever window it sees (a seam source)."""
    k = 2 * radius + 1
    kernel = torch.full((image.shape[1], 1, k, k), 1.0 / k**2, dtype=image.dtype)
    return torch.nn.functional.conv2d(image, kernel, padding=radius, groups=image.shape[1])
