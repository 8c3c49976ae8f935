"""The step cache inside the refiner's sampler: the seed's decisions and our cheaper evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from rsvl_testing import supir_tiny_parts
from safetensors.torch import load_file

from rsvl_core.cache import CachePolicy
from rsvl_core.refine import sampler as S
from rsvl_core.refine.denoise import GuidedDenoiser
from rsvl_core.refine.nets.cfg import ConditionedNetworks, Conditioning


@pytest.fixture(scope="module")
def seed_runs(fixtures_dir):
    data = load_file(fixtures_dir / "sampler" / "e2e.safetensors")
    params = json.loads((fixtures_dir / "sampler" / "params.json").read_text())
    return data, params, supir_tiny_parts(fixtures_dir)


def _networks(data, parts, lq=None):
    return ConditionedNetworks(parts.unet, parts.control, Conditioning(data["in.c.crossattn"], data["in.c.vector"]),
                               Conditioning(data["in.uc.crossattn"], data["in.uc.vector"]),
                               data["in.lq_latent"] if lq is None else lq)


def _options(kwargs: dict) -> S.RestoreSamplerOptions:
    return S.RestoreSamplerOptions(
        steps=kwargs["num_steps"], s_churn=kwargs["s_churn"], s_noise=kwargs["s_noise"],
        cfg_scale=kwargs["cfg_scale"], cfg_scale_start=kwargs["cfg_scale_start"], linear_cfg=kwargs["use_linear_CFG"],
        restoration_scale=kwargs["restoration_scale"], control_scale=kwargs["control_scale"],
    )


def _sample(data, denoise, options, trajectory=None):
    churn = iter(data["in.churn_noise"])
    return S.sample_restore_edm(denoise, data["in.init_noise"], data["in.x_center"], options,
                                lambda shape: next(churn), trajectory=trajectory)


@pytest.mark.parametrize("run", ["cache", "infer_like"])
def test_cache_parity_seed_decisions_and_final_latent(seed_runs, run):
    data, params, parts = seed_runs
    kwargs = params["runs"][run]["kwargs_to_just_sampling"]
    networks = _networks(data, parts)
    denoise = GuidedDenoiser(networks, kwargs["num_steps"],
                             cache=CachePolicy.seed(kwargs["img_threshold"], kwargs["dec_img"]))
    trajectory = []
    final = _sample(data, denoise, _options(kwargs), trajectory)
    report = denoise.cache.report
    assert report.reused_steps == params["runs"][run]["cache_reused_steps"] == [3, 5, 6, 8, 9]
    for decision, step in zip(report.decisions, params["runs"][run]["steps"], strict=True):
        assert decision.threshold == pytest.approx(step["threshold_in"], rel=1e-5)
        if step["diff"] is None:
            assert decision.diff is None
        else:
            assert decision.diff == pytest.approx(step["diff"], rel=1e-4)
    reference = data[f"{run}.final_latent"]
    assert (final - reference).abs().max() <= 1e-4 * reference.abs().max()
    for got, ref in zip(trajectory, data[f"{run}.x_after_step"], strict=True):
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    # the seed's signal: the whole encoder output of the CFG batch, as its fixtures recorded it
    assert networks.signal_calls == 10
    # ours: the control net runs once per computed step and never on a reused one (the seed: 15 runs)
    assert networks.control_calls == networks.unet_calls == 5


def test_cache_hit_never_evaluates_the_control_network(seed_runs):
    data, params, parts = seed_runs
    networks = _networks(data, parts)
    options = _options(params["runs"]["nocache"]["kwargs_to_just_sampling"])
    denoise = GuidedDenoiser(networks, 10, cache=CachePolicy(mode="fast", threshold=10.0, reuse="eps",
                                                             skip_first=1, skip_last=1, max_consecutive=3))
    _sample(data, denoise, options)
    computed = denoise.cache.report.computed_steps
    assert computed == [0, 4, 8, 9]
    assert networks.control_calls == networks.unet_calls == len(computed)


def test_cache_off_is_bit_identical_to_the_plain_sampler(seed_runs):
    data, params, parts = seed_runs
    options = _options(params["runs"]["nocache"]["kwargs_to_just_sampling"])
    networks = _networks(data, parts)
    denoiser = S.EpsDenoiser()
    plain = _sample(data, lambda x, s, cfg, c, i: denoiser.guided(networks, x, s, cfg, c), options)
    for policy in (CachePolicy(), CachePolicy(mode="seed", threshold=0.0), CachePolicy(mode="fast", threshold=0)):
        off = _sample(data, GuidedDenoiser(_networks(data, parts), 10, cache=policy), options)
        assert torch.equal(off, plain)


def test_cache_signal_depth_and_tiles(seed_runs):
    """A shallow signal (conv_in + first ResBlock) and tiled latents both work with the cache."""
    data, params, parts = seed_runs
    options = _options(params["runs"]["nocache"]["kwargs_to_just_sampling"])
    networks = _networks(data, parts)
    shallow = GuidedDenoiser(networks, 10, cache=CachePolicy(mode="seed", threshold=0.3, signal_depth=1))
    _sample(data, shallow, options)
    assert len(shallow.cache.report.decisions) == 10 and networks.unet_calls == len(shallow.cache.report.computed_steps)
    tiled_networks = _networks(data, parts)
    tiled = GuidedDenoiser(tiled_networks, 10, tile_size=8, overlap=4, tile_batch=2,
                           cache=CachePolicy(mode="fast", threshold=10.0, max_consecutive=1))
    out = _sample(data, tiled, options)
    assert tiled.tile_count == 9 and out.shape == data["in.init_noise"].shape and torch.isfinite(out).all()
    computed = len(tiled.cache.report.computed_steps)
    assert computed == 5 and tiled_networks.unet_calls == computed * 5  # 9 tiles in groups of 2 = 5 calls
