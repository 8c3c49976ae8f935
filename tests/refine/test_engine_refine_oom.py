"""The refiner out of memory: latent tiles and VAE tiles are halved and the work run again (issue 22, item 7).

The seed's tiny SUPIR networks and a tiny VAE; a forward pre-hook raises torch's out-of-memory error when a
tile is larger than a limit, as a GPU would. The result must equal a run asked for the smaller tile.
"""

from __future__ import annotations

import json

import pytest
import torch
from rsvl_testing import supir_tiny_parts
from safetensors.torch import load_file

from rsvl_core.cache import CachePolicy
from rsvl_core.refine import denoise as denoise_module
from rsvl_core.refine import sampler as S
from rsvl_core.refine.denoise import GuidedDenoiser
from rsvl_core.refine.nets import vae as vae_module
from rsvl_core.refine.nets.cfg import ConditionedNetworks, Conditioning
from rsvl_core.refine.tiny.vae import tiny_refiner_vae


def oom_above(module: torch.nn.Module, limit: int):
    """Make `module` raise torch.OutOfMemoryError on inputs with an edge above `limit` (remove the handle after)."""

    def hook(_module, args):
        if max(args[0].shape[-2:]) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB (test)")

    return module.register_forward_pre_hook(hook)


@pytest.fixture(scope="module")
def seed_run(fixtures_dir):
    data = load_file(fixtures_dir / "sampler" / "e2e.safetensors")
    params = json.loads((fixtures_dir / "sampler" / "params.json").read_text())
    kwargs = params["runs"]["nocache"]["kwargs_to_just_sampling"]
    options = S.RestoreSamplerOptions(  # the seed's settings, 4 of its 10 steps (CPU time)
        steps=4, s_churn=kwargs["s_churn"], s_noise=kwargs["s_noise"],
        cfg_scale=kwargs["cfg_scale"], cfg_scale_start=kwargs["cfg_scale_start"], linear_cfg=kwargs["use_linear_CFG"],
        restoration_scale=kwargs["restoration_scale"], control_scale=kwargs["control_scale"],
    )
    return data, options, supir_tiny_parts(fixtures_dir)


def _sample(data, parts, options, **denoiser):
    """The seed's run through a GuidedDenoiser; returns (final latent, the denoiser)."""
    networks = ConditionedNetworks(parts.unet, parts.control, Conditioning(data["in.c.crossattn"], data["in.c.vector"]),
                                   Conditioning(data["in.uc.crossattn"], data["in.uc.vector"]), data["in.lq_latent"])
    denoise = GuidedDenoiser(networks, options.steps, **denoiser)
    churn = iter(data["in.churn_noise"])
    final = S.sample_restore_edm(denoise, data["in.init_noise"], data["in.x_center"], options,
                                 lambda shape: next(churn))
    return final, denoise


@pytest.mark.parametrize("cache", [None, CachePolicy(mode="fast", threshold=10.0, skip_first=1, skip_last=1,
                                                    max_consecutive=1)],
                         ids=["no cache", "step cache"])
def test_engine_oom_refiner_latent_tiles_halve_and_equal_the_smaller_tile(seed_run, monkeypatch, cache):
    data, options, parts = seed_run
    monkeypatch.setattr(denoise_module, "MIN_LATENT_TILE", 8)  # the tiny latent is 16 x 16
    handle = oom_above(parts.unet.conv_out, 8)  # the UNet's last conv: with a cache, after the step's decision
    try:
        got, fitted = _sample(data, parts, options, tile_size=0, overlap=4, tile_batch=5, cache=cache)
    finally:
        handle.remove()
    want, direct = _sample(data, parts, options, tile_size=8, overlap=4, tile_batch=5, cache=cache)
    assert torch.equal(got, want)
    # the whole latent ran out of memory at the first step; 8-latent-pixel tiles (3 x 3) from then on
    assert fitted.fit.record() == {"tile_size": 8, "tile_overlap": 4, "requested_tile_size": 0,
                                   "out_of_memory_at": [0]}
    assert fitted.tile_count == direct.tile_count == 9
    decisions = [(d.step, d.reused) for d in fitted.cache.report.decisions]
    assert decisions == [(d.step, d.reused) for d in direct.cache.report.decisions]
    if cache is not None:
        assert len(decisions) == 4 and fitted.cache.report.reused_steps


def test_engine_oom_vae_tiles_halve_and_equal_the_smaller_tile(monkeypatch):
    monkeypatch.setattr(vae_module, "MIN_LATENT_TILE", 4)  # tiny images: tiles down to 4 latent / 32 image pixels
    vae = tiny_refiner_vae(seed=0)
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    latent = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(1)) * 0.13

    encode_tiles = vae.encode_tiles(0, 16, extent=96)
    handle = oom_above(vae.vae.encoder.conv_in, 48)
    try:
        got = vae.encode(image, tiles=encode_tiles)
    finally:
        handle.remove()
    assert torch.equal(got, vae.encode(image, tile_size=48, overlap=16))
    assert encode_tiles.record() == {"tile_size": 48, "tile_overlap": 16, "requested_tile_size": 0,
                                     "out_of_memory_at": [0]}

    decode_tiles = vae.decode_tiles(24, 8, extent=24)
    handle = oom_above(vae.vae.decoder.conv_in, 6)
    try:
        got = vae.decode(latent, tiles=decode_tiles)
        again = vae.decode(latent, tiles=decode_tiles)  # a second decode of the run starts at the tile that fitted
    finally:
        handle.remove()
    want = vae.decode(latent, tile_size=6, overlap=3)
    assert torch.equal(got, want) and torch.equal(again, want)
    # 24 -> 12 -> 6 latent pixels; the overlap kept at most half the tile (8 -> 6 -> 3)
    assert decode_tiles.record() == {"tile_size": 6, "tile_overlap": 3, "requested_tile_size": 24,
                                     "out_of_memory_at": [24, 12]}
