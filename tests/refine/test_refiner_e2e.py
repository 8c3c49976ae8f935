"""Stage 2 end to end on CPU: tiny SDXL + SUPIR files written in the real layouts, loaded by the real loaders."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from rsvl_core.kit.errors import Cancelled, CheckpointError
from rsvl_core.kit.image import read_image
from rsvl_core.pipeline.options import refine_options_from, refine_preset
from rsvl_core.refine.refiner import RefineOptions, load_refiner, refine_image, working_size
from rsvl_core.refine.tiny import TINY_SDXL_NAME, tiny_refiner, write_tiny_refiner_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("refiner")
    return write_tiny_refiner_files(root / "sdxl", root / "supir")


@pytest.fixture(scope="module")
def refiner(files):
    return load_refiner(*files)


@pytest.fixture(scope="module")
def image():
    from pathlib import Path

    sample = Path(__file__).parents[2] / "rsvl_core" / "samples" / "osbs_029_lr100.png"
    img, _ = read_image(sample)
    return torch.nn.functional.interpolate(img, (72, 120), mode="bilinear", align_corners=False)


FAST = refine_options_from({"refine_steps": 4, "min_size": 0})


def test_single_files_load_into_the_same_model(files, refiner):
    """Write (SDXL file, SUPIR file) -> load: every tensor comes back exactly."""
    original = tiny_refiner(0)
    for ours, theirs in ((refiner.unet, original.unet), (refiner.control, original.control),
                         (refiner.vae, original.vae), (refiner.text, original.text)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    sdxl = load_file(files[0])
    supir = load_file(files[1])
    # split as the releases are: the SDXL file has no SUPIR parts; the SUPIR file carries them
    assert not any(k.startswith(("model.control_model.", "model.diffusion_model.project_modules.")) for k in sdxl)
    assert not any(".denoise_encoder." in k for k in sdxl)
    assert any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.") for k in sdxl)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in supir} == {"model.control_model", "model.diffusion_model",
                                                                          "first_stage_model.denoise_encoder"}


def test_refine_output_is_exactly_the_input_size(refiner, image):
    odd = image[..., :37, :53]
    out, report = refine_image(refiner, odd, "a road through pine forest", replace(FAST, min_size=100), seed=0)
    assert out.shape == (1, 3, 37, 53) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert report.working_size == working_size(37, 53, 100, 64) == (128, 128)
    assert report.unet_calls == 4 and report.control_calls == 4


def test_working_size_follows_the_seed_rule():
    assert working_size(256, 384) == (1024, 1536)      # short side brought up to 1024
    assert working_size(1000, 1500) == (1024, 1536)    # and rounded to multiples of 64
    assert working_size(2000, 3000) == (1984, 3008)    # large: only rounded
    assert working_size(37, 53, 0) == (64, 64)


def test_seed_makes_runs_reproducible_and_different_seeds_differ(refiner, image):
    a, _ = refine_image(refiner, image, "fields", FAST, seed=3)
    b, _ = refine_image(refiner, image, "fields", FAST, seed=3)
    c, _ = refine_image(refiner, image, "fields", FAST, seed=4)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.02
    # churn noise is seeded too: without churn a different seed changes less than with it
    no_churn = replace(FAST, sampler=replace(FAST.sampler, s_churn=0))
    d, _ = refine_image(refiner, image, "fields", no_churn, seed=3)
    e, _ = refine_image(refiner, image, "fields", no_churn, seed=3)
    assert torch.equal(d, e) and not torch.equal(a, d)


def test_caption_and_text_after_token_77_change_the_result(refiner, image):
    words = " ".join(["farmland"] * 80)
    a, _ = refine_image(refiner, image, words + " river", FAST, seed=0)
    b, _ = refine_image(refiner, image, words + " airport", FAST, seed=0)
    assert refiner.text.count_chunks([words + " river " + FAST.positive_prompt]) >= 2
    assert (a - b).abs().max() > 1e-3


def test_tiled_latent_sampling_is_seamless_and_close_to_one_pass(refiner, image):
    big = torch.nn.functional.interpolate(image, (128, 192), mode="bilinear", align_corners=False)
    whole, one = refine_image(refiner, big, "fields", replace(FAST, latent_tile_size=0), seed=0)
    tiled, many = refine_image(refiner, big, "fields", replace(FAST, latent_tile_size=16, latent_tile_overlap=8),
                               seed=0)
    other_seed, _ = refine_image(refiner, big, "fields", replace(FAST, latent_tile_size=0), seed=1)
    assert one.latent_tiles == 1 and many.latent_tiles == 2 and tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 0.1 * (other_seed - whole).abs().mean()
    # no seam: column-to-column change of the tiled image stays within 25% of the one-pass image's, everywhere
    def column_energy(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(0, 1, 2))
    assert (column_energy(tiled) / column_energy(whole)).max() < 1.25


def test_cancel_stops_within_one_step(refiner, image):
    seen = []

    def callback(step, total, stage, preview=None):
        seen.append((step, stage))
        if stage == "refine" and step == 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        refine_image(refiner, image, "fields", FAST, seed=0, callback=callback)
    assert seen[-1] == (2, "refine")


def test_precision_bf16_runs_and_the_vae_never_runs_in_fp16(files, image):
    bf16 = load_refiner(*files, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.vae.dtype == torch.bfloat16
    out, _ = refine_image(bf16, image, "fields", FAST, seed=0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    fp16 = load_refiner(*files, dtype=torch.float16)
    assert fp16.unet.conv_in.weight.dtype == torch.float16 and fp16.vae.dtype == torch.float32


def test_colour_fix_keeps_the_stage1_colours(refiner, image):
    fixed, _ = refine_image(refiner, image, "fields", FAST, seed=0)
    raw, _ = refine_image(refiner, image, "fields", replace(FAST, color_fix="none"), seed=0)
    assert (fixed.mean(dim=(2, 3)) - image.mean(dim=(2, 3))).abs().max() < \
        (raw.mean(dim=(2, 3)) - image.mean(dim=(2, 3))).abs().max()


def test_bad_options_are_refused_before_work(refiner, image):
    with pytest.raises(ValueError, match="color_fix"):
        refine_image(refiner, image, "x", replace(FAST, color_fix="sepia"))
    with pytest.raises(ValueError, match="latent_tile_size"):
        RefineOptions(latent_tile_size=12)
    with pytest.raises(ValueError, match="unknown refiner preset"):
        refine_preset("fastest")


def test_swapped_or_wrong_files_are_named(files, tmp_path):
    sdxl, supir = files
    with pytest.raises(CheckpointError, match="is a SUPIR checkpoint, given where the SDXL file goes"):
        load_refiner(supir, sdxl)
    with pytest.raises(CheckpointError, match="no control network"):
        load_refiner(sdxl, sdxl)
    state = load_file(sdxl)
    state.pop("model.diffusion_model.output_blocks.0.0.in_layers.0.weight")
    broken = tmp_path / TINY_SDXL_NAME
    save_file(state, str(broken))
    with pytest.raises(CheckpointError, match=r"1 missing key \(e\.g\. .*\)") as info:
        load_refiner(broken, supir)
    assert str(info.value).startswith(str(broken))  # the SDXL file is blamed, not the SUPIR file


def test_diffusers_sdxl_folder_gives_the_same_model(files, refiner, image, tmp_path):
    folder = tmp_path / "sdxl-diffusers"
    base = UNet2DConditionModel(**refiner.config.to_diffusers_unet_kwargs())
    own = {k: v for k, v in refiner.unet.state_dict().items() if not k.startswith("project_modules.")}
    base.load_state_dict(own)
    base.save_pretrained(folder / "unet")
    refiner.vae.vae.save_pretrained(folder / "vae")
    refiner.text.text_encoder.save_pretrained(folder / "text_encoder")
    refiner.text.text_encoder_2.save_pretrained(folder / "text_encoder_2")
    from_folder = load_refiner(folder, files[1])
    a, _ = refine_image(refiner, image, "fields", FAST, seed=0)
    b, _ = refine_image(from_folder, image, "fields", FAST, seed=0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_supir_ckpt_in_a_lightning_wrapper_loads_like_safetensors(files, refiner, tmp_path):
    """SUPIR-v0Q/v0F ship as .ckpt ({"state_dict": ...}); read with torch.load(weights_only=True)."""
    ckpt = tmp_path / "SUPIR-v0Q.ckpt"
    torch.save({"state_dict": load_file(files[1]), "global_step": 0}, ckpt)
    from_ckpt = load_refiner(files[0], ckpt)
    a, b = from_ckpt.control.state_dict(), refiner.control.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
