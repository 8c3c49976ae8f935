"""torch.compile of the refiner's networks (refine/fast_paths.py): one graph per entry point, eager's numbers."""

from __future__ import annotations

import pytest
import torch

from rsvl_core.cache import PRESETS
from rsvl_core.refine.denoise import GuidedDenoiser
from rsvl_core.refine.fast_paths import UNET_ENTRY_POINTS, compile_refiner_networks, is_compiled
from rsvl_core.refine.nets.cfg import ConditionedNetworks, Conditioning
from rsvl_core.refine.nets.control import GLVControl
from rsvl_core.refine.nets.unet import RefinerUNet
from rsvl_core.refine.sampler import RestoreSamplerOptions, sample_restore_edm
from rsvl_core.refine.tiny import tiny_refiner_config

# inductor on the CPU vs eager, float32: reassociated sums and fused kernels, nothing more
COMPILE_RTOL = 1e-4


def _parts(seed: int = 0):
    config = tiny_refiner_config()
    torch.manual_seed(seed)
    return config, RefinerUNet(config).eval(), GLVControl(config).eval()


def _inputs(config, latent: int = 16):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, latent, latent, generator=g)
    return (x, torch.tensor([500, 500]), torch.randn(2, 77, config.context_dim, generator=g) * 0.5,
            torch.randn(2, config.adm_in_channels, generator=g) * 0.5)


@pytest.mark.slow
def test_compile_refiner_entry_points_have_zero_graph_breaks():
    config, unet, control = _parts()
    x, t, context, vector = _inputs(config)
    explain = torch._dynamo.explain
    with torch.inference_mode():
        emb = unet.embed(t, vector)
        first = unet.forward_encoder_partial(x, emb, context, 1)
        skips = unet.resume_encoder(first, emb, context)
        features = control(x, x, t, context, vector)
        calls = {
            "embed": explain(unet.embed)(t, vector),
            "encoder, first block (the cache's begin)": explain(unet.forward_encoder_partial)(x, emb, context, 1),
            "encoder, the rest (the cache's finish)": explain(unet.resume_encoder)(first, emb, context),
            "GLVControl": explain(control)(x, x, t, context, vector),
            "middle + decoder + connectors": explain(unet.forward_decoder)(skips[-1], skips, emb, context, features,
                                                                           0.8),
        }
    for name, explanation in calls.items():
        assert explanation.graph_break_count == 0, (name, explanation.break_reasons)
        assert explanation.graph_count == 1, name


def _sample(unet, control, config, cache=None, steps: int = 4):
    x, _, context, vector = _inputs(config)
    lq = x[:1] * 0.5
    networks = ConditionedNetworks(unet, control, Conditioning(context[:1], vector[:1]),
                                   Conditioning(context[:1] * 0.9, vector[:1] * 0.9), lq)
    denoise = GuidedDenoiser(networks, steps, cache=cache)
    churn = torch.Generator().manual_seed(1)
    latent = sample_restore_edm(denoise, x[:1], lq, RestoreSamplerOptions(steps=steps),
                                lambda s: torch.randn(s, generator=churn))
    return latent, denoise.cache.report.reused_steps, networks


@pytest.mark.slow
def test_compile_refiner_sampling_equals_eager_with_and_without_the_cache():
    config, unet, control = _parts()
    eager = _sample(unet, control, config)[0]
    eager_cached, eager_reused, _ = _sample(unet, control, config, PRESETS["fast"], steps=8)
    compile_refiner_networks(unet, control)
    assert is_compiled(unet) and set(UNET_ENTRY_POINTS) <= set(vars(unet))
    compiled, _, networks = _sample(unet, control, config)
    compiled_cached, reused, _ = _sample(unet, control, config, PRESETS["fast"], steps=8)
    assert networks.unet_calls == 4
    for got, want in ((compiled, eager), (compiled_cached, eager_cached)):
        assert torch.isfinite(got).all()
        assert float((got - want).norm() / want.norm()) < COMPILE_RTOL
    assert reused == eager_reused  # the split begin / finish evaluation, compiled, makes the same decisions
