"""Restore EDM sampler: schedule tables, one guided denoiser call and full 10-step runs vs the seed."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rsvl_testing import supir_tiny_parts
from safetensors.torch import load_file

from rsvl_core.refine import sampler as S
from rsvl_core.refine.nets.cfg import ConditionedNetworks, Conditioning


@pytest.fixture(scope="module")
def tables(fixtures_dir):
    return load_file(fixtures_dir / "sampler" / "tables.safetensors")


@pytest.fixture(scope="module")
def e2e(fixtures_dir):
    data = load_file(fixtures_dir / "sampler" / "e2e.safetensors")
    params = json.loads((fixtures_dir / "sampler" / "params.json").read_text())
    parts = supir_tiny_parts(fixtures_dir)
    cond = Conditioning(data["in.c.crossattn"], data["in.c.vector"])
    uncond = Conditioning(data["in.uc.crossattn"], data["in.uc.vector"])
    networks = ConditionedNetworks(parts.unet, parts.control, cond, uncond, data["in.lq_latent"])
    return data, params, networks


@pytest.mark.parametrize("steps", [10, 50, 100])
def test_sampler_parity_schedule_tables(tables, steps):
    torch.testing.assert_close(S.sampling_sigmas(steps), tables[f"sigmas_{steps}"], rtol=0, atol=1e-6)
    assert S.sampling_timesteps(steps).tolist() == tables[f"timesteps_{steps}"].tolist()
    sigmas = S.sampling_sigmas(steps)
    assert math.isclose(math.sqrt(1 + float(sigmas[0]) ** 2), float(tables[f"init_noise_scale_{steps}"]), rel_tol=1e-6)
    denoiser = S.EpsDenoiser()
    assert [denoiser.quantize(float(s))[0] for s in sigmas[:-1]] == tables[f"quantized_index_{steps}"].tolist()
    infer = S.RestoreSamplerOptions(steps=steps, cfg_scale=7.5, cfg_scale_start=4.0, linear_cfg=True)
    yaml = S.RestoreSamplerOptions(steps=steps, cfg_scale=4.0, cfg_scale_start=7.5, linear_cfg=True)
    constant = S.RestoreSamplerOptions(steps=steps, cfg_scale=4.0, linear_cfg=False)
    variants = ((infer, "infer_4.0_to_7.5"), (yaml, "yaml_7.5_to_4.0"), (constant, "just_sampling_default_4.0"))
    for options, key in variants:
        got = torch.tensor([S.cfg_scale_at(float(s), options) for s in sigmas[:-1]])
        torch.testing.assert_close(got, tables[f"cfg_scale_{steps}.{key}"], rtol=0, atol=1e-6)
    restore = S.RestoreSamplerOptions(steps=steps, restoration_scale=4.0)
    factors = torch.tensor(
        [S.restoration_factor(float(sigmas[i]), float(sigmas[i + 1]), restore) for i in range(steps)]
    )
    applied = tables[f"restore_applied_{steps}"].bool()
    torch.testing.assert_close(factors[applied], tables[f"restore_factor_{steps}.restore_cfg_4.0"][applied],
                               rtol=0, atol=1e-6)
    assert (factors[~applied] == 0).all()
    churn = S.RestoreSamplerOptions(steps=steps, s_churn=5.0)
    gammas = torch.tensor([S.churn_gamma(float(s), steps, churn) for s in sigmas[:-1]])
    torch.testing.assert_close(gammas, tables[f"gamma_{steps}.s_churn_5.0"], rtol=0, atol=1e-6)
    torch.testing.assert_close(sigmas[:-1] * (gammas + 1), tables[f"sigma_hat_{steps}.s_churn_5.0"], rtol=0, atol=1e-5)


def test_sampler_parity_discrete_sigmas_and_scaling(tables):
    sigmas = S.discrete_sigmas()
    torch.testing.assert_close(sigmas, tables["denoiser.sigmas_1000"], rtol=0, atol=1e-6)
    c_in = torch.tensor([S.EpsDenoiser.c_in(float(s)) for s in sigmas])
    torch.testing.assert_close(c_in, tables["eps_scaling.c_in_1000"], rtol=0, atol=1e-6)


def test_sampler_parity_one_guided_denoiser_call(e2e):
    data, _, networks = e2e
    denoiser = S.EpsDenoiser()
    index, sigma_q = denoiser.quantize(float(data["denoise_one.sigma_hat"]))
    assert index == int(data["denoise_one.quantized_index"])
    assert math.isclose(sigma_q, float(data["denoise_one.quantized_sigma"]), rel_tol=1e-6)
    options = S.RestoreSamplerOptions(steps=10, cfg_scale=7.5, cfg_scale_start=4.0)
    cfg = S.cfg_scale_at(float(data["denoise_one.sigma_hat"]), options)
    assert math.isclose(cfg, float(data["denoise_one.cfg_scale"]), rel_tol=1e-6)
    with torch.no_grad():
        out = denoiser.guided(networks, data["denoise_one.x"], float(data["denoise_one.sigma_hat"]), cfg, 1.0)
    torch.testing.assert_close(out, data["denoise_one.denoised"], rtol=1e-4, atol=1e-4)


def _options(kwargs: dict) -> S.RestoreSamplerOptions:
    return S.RestoreSamplerOptions(
        steps=kwargs["num_steps"], s_churn=kwargs["s_churn"], s_noise=kwargs["s_noise"],
        cfg_scale=kwargs["cfg_scale"], cfg_scale_start=kwargs["cfg_scale_start"], linear_cfg=kwargs["use_linear_CFG"],
        restoration_scale=kwargs["restoration_scale"], control_scale=kwargs["control_scale"],
        linear_control_scale=kwargs["use_linear_control_scale"], control_scale_start=kwargs["control_scale_start"],
    )


@pytest.mark.parametrize("run", ["nocache", "linear_control"])
def test_sampler_parity_ten_step_trajectory(e2e, run):
    data, params, networks = e2e
    options = _options(params["runs"][run]["kwargs_to_just_sampling"])
    denoiser = S.EpsDenoiser()
    churn = iter(data["in.churn_noise"])
    trajectory, records = [], []
    final = S.sample_restore_edm(
        lambda x, sigma_hat, cfg, control, step: denoiser.guided(networks, x, sigma_hat, cfg, control),
        data["in.init_noise"], data["in.x_center"], options, lambda shape: next(churn),
        trajectory=trajectory, records=records,
    )
    reference = data[f"{run}.final_latent"]
    assert (final - reference).abs().max() <= 1e-4 * reference.abs().max()
    for got, ref in zip(trajectory, data[f"{run}.x_after_step"], strict=True):
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    expected_steps = params["runs"][run]["steps"]
    for record, step in zip(records, expected_steps, strict=True):
        assert math.isclose(record.sigma_hat, step["sigma_hat"], rel_tol=1e-6)
        assert math.isclose(record.control_scale, step["control_scale"], rel_tol=1e-6, abs_tol=1e-9)


def test_sampler_restoration_pulls_toward_centre_only_when_on():
    """With a denoiser that returns a constant, restoration moves D toward x_center by the stated factor."""
    x_center = torch.full((1, 4, 2, 2), 3.0)
    seen = []

    def denoise(x, sigma_hat, cfg, control, step):
        return torch.zeros_like(x)

    def run(scale):
        options = S.RestoreSamplerOptions(steps=4, s_churn=0, restoration_scale=scale, recentre_each_step=False)
        records = []
        out = S.sample_restore_edm(denoise, torch.zeros(1, 4, 2, 2), x_center, options, None, records=records)
        seen.append(records)
        return out

    off = run(-1)
    on = run(4.0)
    assert off.abs().max() == 0
    assert (on > 0).all()


def test_sampler_options_are_checked():
    with pytest.raises(ValueError, match="steps"):
        S.RestoreSamplerOptions(steps=0)
    with pytest.raises(ValueError, match="control scales"):
        S.RestoreSamplerOptions(control_scale=3)
