"""Stage-1 samplers: noise-level bookkeeping (oracle denoiser), determinism, options."""

from __future__ import annotations

import pytest
import torch
from rsvl_testing import OracleDenoiser, tiny_sr3_model

from rsvl_core.stage1 import SAMPLERS, SR3NoiseSchedule, Stage1Options
from rsvl_core.stage1.sampler import gaussian_noise_source, make_eps_model, sample_sr3


def smooth_target(shape=(1, 3, 24, 40)):
    y = torch.linspace(-1, 1, shape[-2])[:, None]
    x = torch.linspace(-1, 1, shape[-1])[None, :]
    return (0.8 * torch.sin(2 * y + 3 * x)).expand(shape).clone()


@pytest.mark.parametrize("sampler,steps", [("faithful", None), ("ddim", 25), ("dpmpp", 25), ("dpmpp", 7)])
def test_every_sampler_recovers_x0_from_an_exact_denoiser(sampler, steps):
    # The oracle predicts the exact noise for x0 given the *noise level it is told*; a sampler that
    # maps its timesteps to the wrong sqrt(alpha_bar) ends away from x0.
    target = smooth_target()
    oracle = OracleDenoiser(lambda condition: condition)
    eps_model = make_eps_model(oracle, target)
    schedule = SR3NoiseSchedule.create()
    options = Stage1Options(sampler=sampler, steps=steps, tile_size=0)
    previews = []
    out = sample_sr3(eps_model, target.shape, schedule, options,
                     gaussian_noise_source(torch.Generator().manual_seed(0), torch.device("cpu")),
                     callback=lambda step, total, stage, preview=None: previews.append(preview))
    assert (out - target).abs().max() < 2e-3
    # the x0 estimate is exact at *every* step only if each step used the right noise level
    assert max((p * 2 - 1 - target).abs().max().item() for p in previews) < 2e-3
    assert oracle.calls == (500 if sampler == "faithful" else steps)


def test_wrong_noise_level_is_caught_by_the_oracle_test():
    # the same check with a deliberately mis-scaled noise level must fail: the test can fail
    target = smooth_target()
    oracle = OracleDenoiser(lambda condition: condition)
    inner = make_eps_model(oracle, target)
    previews = []
    sample_sr3(lambda x, level: inner(x, level ** 0.5), target.shape, SR3NoiseSchedule.create(),
               Stage1Options(sampler="ddim", steps=25, tile_size=0),
               gaussian_noise_source(torch.Generator().manual_seed(0), torch.device("cpu")),
               callback=lambda step, total, stage, preview=None: previews.append(preview))
    assert max((p * 2 - 1 - target).abs().max().item() for p in previews) > 0.05


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_is_deterministic_for_a_seed(sampler):
    model = tiny_sr3_model()
    condition = smooth_target((1, 3, 16, 16))
    options = Stage1Options(sampler=sampler, steps=6, tile_size=0)
    schedule = model.inference_schedule(6 if sampler == "faithful" else None)

    def run(seed):
        noise = gaussian_noise_source(torch.Generator().manual_seed(seed), torch.device("cpu"))
        return sample_sr3(make_eps_model(model.unet, condition), condition.shape, schedule, options, noise)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-2


def test_faithful_is_the_default_and_fast_solvers_are_options():
    options = Stage1Options()
    assert options.sampler == "faithful" and options.steps is None and options.clip_denoised
    assert SR3NoiseSchedule.create().num_timesteps == 500


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sampler": "euler"}, "not one of faithful, ddim, dpmpp"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"tile_size": 16}, "tile_size must be 0"),
        ({"tile_size": 64, "tile_overlap": 33}, "tile_overlap 33 is more than half of tile_size 64: use at most 32"),
        ({"tile_batch": 0}, "tile_batch must be >= 1"),
    ],
)
def test_bad_sampler_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Stage1Options(**kwargs)
