"""Core ComfyUI's SUPIR (SUPIRApply -> KSampler) and our refiner (ControlNetRefine with model_patch) in the same
ComfyUI 0.20.1 server, on the same SDXL-shaped test checkpoint, the same core SUPIR MODEL_PATCH and the same image;
with RSVL_WRITE_DOCS_PICTURES=1 the three images become the README's picture (docs/core_supir_vs_rsvl.jpg).

Runs on the 0.20.1 host only (hosts.py `comfy0201`, the first with core SUPIR): it fails under CI when that host is
missing and skips elsewhere.

The models are tiny and random: this checks that both paths run on the same inputs and what each runs, not which
looks better. Conditioning of core's path: the SDXL-shaped test checkpoint's text encoders have one layer each,
so core's Load Checkpoint builds SDXL's full CLIP-L / CLIP-G around them and the layers the file lacks are left
unset (its encodings are not finite); core's ConditioningZeroOut turns CLIP Text Encode's output into zeros of
SDXL's shapes (context 77 x 2048, pooled 1280), which KSampler takes as positive and negative. Ours encodes the
caption with the same file's text encoders through Load RSVL Models (our loader reads one-layer encoders as
they are). So core samples without text and ours with it: another difference besides the sampler.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hosts import HOSTS, require

pytestmark = [pytest.mark.slow]

HOST = HOSTS["comfy0201"]
CROP = 64      # the sample's top-left 64 x 64 pixels, scaled x2 by core's ImageScaleBy: 128 x 128 (16 x 16 latent)
STEPS, SEED, CFG = 4, 3, 4.0
CAPTION = "farm fields and a road"
PATCH_LINE = "SUPIR: the connected model_patch's control network, connectors and denoise encoder"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The pack in a fresh ComfyUI 0.20.1 (core SUPIR), with the test-only probe pack beside it."""
    from test_comfy_host import start_server

    require(HOST.missing())
    yield from start_server(tmp_path_factory.mktemp("comfy_core_supir_compare"), HOST)


def loaders(files: dict) -> dict:
    """Core's Load Checkpoint (SDXL-shaped file with its text encoders), the probe's MODEL_PATCH (core's SUPIR
    classes at the test file's size: core's ModelPatchLoader builds only the full size), the image: the crop
    scaled x2 by core's ImageScaleBy (standing in for stage 1), and core's zeroed text conditioning."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "rsvl_core_supir_compare.png"}},
        "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "lanczos",
                                                       "scale_by": 2.0}},
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files["sdxl"].name}},
        "12": {"class_type": "RsvlTestCoreSupirPatch", "inputs": {"path": str(files["supir"])}},
        "13": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": CAPTION}},
        "14": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["13", 0]}},
        "15": {"class_type": "PreviewAny", "inputs": {"source": ["12", 0]}},
        "16": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "input"}},
    }


def core_graph(model: list) -> dict:
    """KSampler (euler, normal schedule) over `model`, from the image's VAE latent, zeroed conditioning."""
    return {
        "22": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["10", 2]}},
        "23": {"class_type": "KSampler", "inputs": {"model": model, "seed": SEED, "steps": STEPS, "cfg": CFG,
                                                    "sampler_name": "euler", "scheduler": "normal",
                                                    "positive": ["14", 0], "negative": ["14", 0],
                                                    "latent_image": ["22", 0], "denoise": 1.0}},
        "24": {"class_type": "VAEDecode", "inputs": {"samples": ["23", 0], "vae": ["10", 2]}},
    }


def executed_s(history: dict) -> float:
    """Seconds the server spent on a finished prompt (its history's execution_start -> execution_success)."""
    entry = history if "status" in history else next(iter(history.values()))
    stamps = {kind: data["timestamp"] for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000


def test_model_patch_core_supir_apply_and_our_refiner_side_by_side(server):
    """One SDXL-shaped checkpoint, one core SUPIR MODEL_PATCH, one 128 x 128 image, seed 3, 4 steps, CFG 4:

    - core: SUPIRApply(model, model_patch, vae, image; strengths 1 -> 1, restore_cfg 4, its defaults) -> KSampler
      (euler, normal schedule, from the image's VAE latent at denoise 1) -> VAEDecode;
    - core without SUPIRApply (the same KSampler over the plain MODEL): the patch changes core's image, so core ran
      with it;
    - ours: ControlNetRefine(model, vae, model_patch, caption) over the same MODEL and VAE (restore-EDM sampler,
      linear CFG 4 -> 4, churn 5, restoration off as in the paper preset, wavelet colour fix); its report names
      the model_patch's modules.

    Both outputs are the input's size and not blank, and they are different images: different samplers (core's
    Euler over its schedule with restore_cfg toward the input's latent; our restore-EDM over SDXL's discrete
    sigmas with churn, from pure noise), different text (core's zeroed, ours the caption), ours colour-fixed
    (wavelet) against the input's denoise-encoder reconstruction. Server-side seconds of each prompt are printed
    (core's plain KSampler runs first, so core's SUPIR run finds the UNet loaded, as ours does)."""
    from native_models import link_sdxl_shaped_files
    from test_native_host import node_texts, queue, refine_graph, upload_crop

    files = link_sdxl_shaped_files(server)
    crop = upload_crop(server, "rsvl_core_supir_compare.png", CROP, CROP)
    base = loaders(files)
    history, images = queue(server, base, "core_supir_compare_load", [crop])  # checkpoint, patch, CLIP encode
    times = {"loaders": executed_s(history)}
    assert len(node_texts(history, "15")) == 1  # the MODEL_PATCH exists
    source = images["input"]
    assert source.shape == (2 * CROP, 2 * CROP, 3)

    # core's KSampler over the plain MODEL first: it also loads the UNet for sampling, so the SUPIR run after it
    # is timed with the UNet in place, as ours is
    plain = {**base, **core_graph(["10", 0]),
             "25": {"class_type": "SaveImage", "inputs": {"images": ["24", 0], "filename_prefix": "plain"}}}
    history, images = queue(server, plain, "core_supir_compare_plain", [crop])
    times["core without SUPIRApply"] = executed_s(history)
    plain_image = images["plain"]

    core = {**base, "21": {"class_type": "SUPIRApply",
                           "inputs": {"model": ["10", 0], "model_patch": ["12", 0], "vae": ["10", 2],
                                      "image": ["2", 0], "strength_start": 1.0, "strength_end": 1.0,
                                      "restore_cfg": 4.0, "restore_cfg_s_tmin": 0.05}},
            **core_graph(["21", 0]),
            "25": {"class_type": "SaveImage", "inputs": {"images": ["24", 0], "filename_prefix": "core"}}}
    history, images = queue(server, core, "core_supir_compare_core", [crop])
    times["core SUPIRApply + KSampler"] = executed_s(history)
    core_image = images["core"]

    ours = refine_graph("rsvl_core_supir_compare.png", {"sdxl_checkpoint": files["sdxl"].name,
                                                        "supir_model": files["supir"].name},
                        name="ours", model=["10", 0], vae=["10", 2], model_patch=["12", 0])
    ours.pop("1")  # the same image as core's: the scaled crop of the loaders' graph
    ours["5"]["inputs"].update(image=["2", 0], caption=CAPTION, steps=STEPS, seed=SEED, cfg_scale=CFG,
                               cfg_scale_start=CFG, min_size=2 * CROP)
    history, images = queue(server, {**base, **ours}, "core_supir_compare_ours", [crop])
    times["ours (loads its text encoders)"] = executed_s(history)
    ours_image = images["ours"]
    report = "\n".join(node_texts(history, "5"))
    assert PATCH_LINE in report, report

    for name, image in (("core", core_image), ("plain", plain_image), ("ours", ours_image)):
        assert image.shape == source.shape, (name, image.shape)
        assert image.std() > 1, (name, image.std())  # not blank
    with_patch = np.abs(core_image.astype(int) - plain_image.astype(int)).mean()
    core_vs_ours = np.abs(core_image.astype(int) - ours_image.astype(int)).mean()
    assert with_patch > 1, with_patch  # SUPIRApply changed core's image: core sampled with the patch
    assert core_vs_ours > 1, core_vs_ours  # different samplers and text: different images
    print("server-side seconds:", ", ".join(f"{k} {v:.1f}" for k, v in times.items()),
          f"; mean |difference| in levels: core vs core without SUPIRApply {with_patch:.1f}, core vs ours "
          f"{core_vs_ours:.1f}; ours: {report}")

    if os.environ.get("RSVL_WRITE_DOCS_PICTURES") == "1":
        from core_supir_picture import write_picture

        path = write_picture(
            source, core_image, ours_image,
            input_lines=[f"{CROP} px crop x2 (core ImageScaleBy)"],
            core_lines=[f"euler, {STEPS} steps, CFG {CFG:g}, restore_cfg 4", "text: zeroed (ConditioningZeroOut)"],
            ours_lines=[f"restore-EDM, {STEPS} steps, CFG {CFG:g}, churn 5", f'caption: "{CAPTION}", wavelet fix'])
        print("wrote", path)
