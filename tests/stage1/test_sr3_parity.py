"""Parity with the seed's own SR3 numbers (../shared/fixtures/sr3_tiny), fp32 on the CPU."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from rsvl_core.stage1 import SR3NoiseSchedule, Stage1Options, load_sr3
from rsvl_core.stage1.sampler import FaithfulDDPM, make_eps_model, sample_sr3

SINGLE_PASS = dict(rtol=1e-4, atol=1e-4)  # fixtures README: single forward passes


def load_tiny(fixtures_dir):
    # goes through the real loader: config.json beside the weights, prefix + buffers recognised
    return load_sr3(fixtures_dir / "sr3_tiny" / "weights.safetensors")


def test_sr3_parity_unet_output(fixtures_dir):
    model = load_tiny(fixtures_dir)
    io = load_file(fixtures_dir / "sr3_tiny" / "io.safetensors")
    with torch.no_grad():
        posenc = model.unet.noise_level_mlp[0](io["unet.noise_level"])
        emb = model.unet.embed_noise_level(io["unet.noise_level"])
        out = model.unet(io["unet.input"], io["unet.noise_level"])
    torch.testing.assert_close(posenc, io["unet.noise_emb_posenc"], **SINGLE_PASS)
    torch.testing.assert_close(emb, io["unet.noise_emb"], **SINGLE_PASS)
    torch.testing.assert_close(out, io["unet.output"], **SINGLE_PASS)
    assert io["unet.output"].abs().max() > 0.5  # the reference is not trivially small


def test_sr3_parity_noise_level_conditioning(fixtures_dir):
    io = load_file(fixtures_dir / "sr3_tiny" / "io.safetensors")
    schedule = SR3NoiseSchedule.create()  # the seed's 500-step inference schedule
    levels = torch.tensor([[schedule.noise_level(int(t))] for t in io["unet.t_index"]])
    torch.testing.assert_close(levels, io["unet.noise_level"], atol=0, rtol=0)


def test_sr3_parity_schedule_arrays(fixtures_dir):
    reference = load_file(fixtures_dir / "sr3_tiny" / "schedule_val500.safetensors")
    schedule = SR3NoiseSchedule.create("linear", 500, 1e-6, 1e-2)
    assert schedule.num_timesteps == 500
    for key, expected in reference.items():
        ours = getattr(schedule, key.removesuffix("_f64")).to(expected.dtype)
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0, msg=key)


def test_sr3_parity_loop_schedule_arrays(fixtures_dir):
    reference = load_file(fixtures_dir / "sr3_tiny" / "loop10.safetensors")
    schedule = SR3NoiseSchedule.create("linear", 10, 1e-6, 1e-2)
    keys = [k for k in reference if k.startswith("loop.sched.")]
    assert len(keys) == 13
    for key in keys:
        expected = reference[key]
        ours = getattr(schedule, key.removeprefix("loop.sched.").removesuffix("_f64")).to(expected.dtype)
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0, msg=key)


def test_sr3_parity_single_reverse_step(fixtures_dir):
    model = load_tiny(fixtures_dir)
    io = load_file(fixtures_dir / "sr3_tiny" / "io.safetensors")
    schedule = SR3NoiseSchedule.create()
    ddpm = FaithfulDDPM(schedule)
    t = int(io["p_sample.t"])
    x_t, condition, noise = io["p_sample.x_t"], io["p_sample.condition"], io["p_sample.noise"]
    torch.testing.assert_close(torch.tensor([[schedule.noise_level(t)]]), io["p_sample.noise_level"])
    eps = make_eps_model(model.unet, condition)(x_t, schedule.noise_level(t))
    torch.testing.assert_close(eps, io["p_sample.eps_pred"], **SINGLE_PASS)
    torch.testing.assert_close(ddpm.predict_x0(x_t, t, eps, clip=False), io["p_sample.x0_pred_unclipped"],
                               **SINGLE_PASS)
    torch.testing.assert_close(ddpm.predict_x0(x_t, t, eps, clip=True), io["p_sample.x0_pred_clipped"],
                               **SINGLE_PASS)
    for variant, clip in (("clip", True), ("noclip", False)):
        out, x0 = ddpm.step(x_t, t, eps, noise, clip=clip)
        if variant == "clip":
            torch.testing.assert_close(schedule.posterior_log_variance_clipped[t:t + 1],
                                       io["p_sample.clip.model_log_variance"], atol=1e-6, rtol=0)
        torch.testing.assert_close(ddpm.posterior_mean(x0, x_t, t), io[f"p_sample.{variant}.model_mean"],
                                   **SINGLE_PASS)
        torch.testing.assert_close(out, io[f"p_sample.{variant}.out"], **SINGLE_PASS)
    # clipping matters here (half the x0 pixels are outside [-1, 1]): the two outputs must differ
    assert (io["p_sample.clip.out"] - io["p_sample.noclip.out"]).abs().max() > 100 * SINGLE_PASS["atol"]


def test_sr3_parity_last_step_draws_no_noise(fixtures_dir):
    model = load_tiny(fixtures_dir)
    io = load_file(fixtures_dir / "sr3_tiny" / "io.safetensors")
    ddpm = FaithfulDDPM(SR3NoiseSchedule.create())
    x_t, condition = io["p_sample.x_t"], io["p_sample.condition"]
    eps = make_eps_model(model.unet, condition)(x_t, ddpm.schedule.noise_level(0))
    out, _ = ddpm.step(x_t, 0, eps, noise=torch.full_like(x_t, 100.0))  # noise must be ignored at t = 0
    torch.testing.assert_close(out, io["p_sample_t0.out"], **SINGLE_PASS)
    torch.testing.assert_close(out, io["p_sample_t0.model_mean"], **SINGLE_PASS)


def test_sr3_parity_full_loop_with_seed_noise(fixtures_dir):
    model = load_tiny(fixtures_dir)
    loop = load_file(fixtures_dir / "sr3_tiny" / "loop10.safetensors")
    draws = iter([loop["loop.noise_init"], *loop["loop.step_noise"]])
    used = []

    def replay(shape):
        tensor = next(draws)
        assert tuple(tensor.shape) == tuple(shape)
        used.append(shape)
        return tensor

    previews = []
    final = sample_sr3(
        make_eps_model(model.unet, loop["loop.condition"]), (1, 3, 32, 32), SR3NoiseSchedule.create(n_timestep=10),
        Stage1Options(steps=10, tile_size=0), replay,
        callback=lambda step, total, stage, preview=None: previews.append((step, total, stage)),
    )
    assert len(used) == 10  # one initial draw + one per step t = 9..1, none at t = 0, as in the seed
    reference = loop["loop.final"]
    assert (final - reference).abs().max() <= 1e-4 * reference.abs().max()
    torch.testing.assert_close(final, loop["loop.ret_img"][-1:], atol=1e-4, rtol=0)
    assert previews == [(i, 10, "stage1") for i in range(1, 11)]
