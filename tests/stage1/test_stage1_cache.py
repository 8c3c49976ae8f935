"""The step cache applied to SR3 (stage 1): off by default, bit-identical when off, fewer UNet runs when on."""

from __future__ import annotations

import pytest
import torch
from rsvl_testing import tiny_sr3_model

from rsvl_core.cache import CachePolicy, CacheReport
from rsvl_core.stage1 import Stage1Options, upscale_stage1
from rsvl_core.stage1.loader import SR3Model


class CountingUNet(torch.nn.Module):
    """Wraps an SR3UNet and counts how often its up path (the expensive half) runs."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.inner, self.config, self.up_calls = unet, unet.config, 0

    def embed_noise_level(self, level):
        return self.inner.embed_noise_level(level)

    def resume_down(self, *args, **kwargs):
        return self.inner.resume_down(*args, **kwargs)

    def forward_up(self, *args):
        self.up_calls += 1
        return self.inner.forward_up(*args)

    def forward(self, sample, level):
        self.up_calls += 1
        return self.inner(sample, level)


@pytest.fixture(scope="module")
def model():
    return SR3Model(CountingUNet(tiny_sr3_model(seed=0).unet))


def test_stage1_cache_is_off_by_default_and_bit_identical_when_off(model):
    image = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    plain = upscale_stage1(model, image, 4, Stage1Options(sampler="ddim", steps=6, tile_size=0), seed=1)
    assert Stage1Options().cache.mode == "off"
    zero = Stage1Options(sampler="ddim", steps=6, tile_size=0, cache=CachePolicy(mode="fast", threshold=0))
    assert torch.equal(upscale_stage1(model, image, 4, zero, seed=1), plain)


def test_stage1_cache_reuses_steps_and_skips_the_up_path(model):
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    policy = CachePolicy(mode="fast", threshold=10.0, reuse="eps", skip_first=1, skip_last=1, max_consecutive=2)
    options = Stage1Options(sampler="ddim", steps=8, tile_size=32, tile_overlap=8, tile_batch=2, cache=policy)
    model.unet.up_calls = 0
    report = CacheReport()
    out = upscale_stage1(model, image, 4, options, seed=1, cache_report=report)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    assert report.computed_steps == [0, 3, 6, 7] and report.reused_steps == [1, 2, 4, 5]
    # 9 tiles (64 px, tile 32, overlap 8) in 5 calls of 2: the up path runs only on the 4 computed steps
    assert model.unet.up_calls == 4 * 5


def test_stage1_cache_refuses_the_seed_rule():
    with pytest.raises(ValueError, match="stage-1 cache"):
        Stage1Options(cache=CachePolicy.seed())
