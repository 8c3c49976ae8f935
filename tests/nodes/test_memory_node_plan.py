"""LoadRSVLModels' max_vram: the plan's weight storage reaches the loaded models, its line the refine report."""

from __future__ import annotations

import pytest
import torch

from rsvl_core.memory.lowbit import Fp8Linear


@pytest.mark.slow
def test_memory_plan_in_the_nodes(comfy, demo_models):
    _, choices = demo_models
    inputs = {**choices, "dtype": "auto", "device": "auto", "llava_quantization": "none", "max_vram": "8G"}
    _, captioner, refiner = comfy.node("LoadRSVLModels").execute(**inputs).args
    assert captioner.options["storage"] == "int4" and refiner.options["fp8"] is True
    assert refiner.options["memory_plan"].startswith("memory plan for 8G (28x28 input): sequential, captioner "
                                                     "int4, refiner fp8; predicted peak ")
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    refined = comfy.node("ControlNetRefine").execute(
        image=image, refiner=refiner, caption="a road", positive_prompt="sharp", negative_prompt="blurry", steps=2,
        cfg_scale=7.5, cfg_scale_start=4.0, control_scale=1.0, color_fix="wavelet", seed=0, latent_tile_size=0,
        min_size=64)
    _, report = refined.args
    assert report.splitlines()[-1] == refiner.options["memory_plan"]
    # stored as the plan says (the pack imports its own copy of rsvl_core: compare class names)
    assert any(type(m).__name__ == Fp8Linear.__name__ for m in refiner.model.unet.modules())
