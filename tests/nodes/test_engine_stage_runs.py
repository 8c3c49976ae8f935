"""One stage run per stage (`pipeline.stage_runs`): a ComfyUI node and a command-line work item of the same stage go
through the same function and give torch-equal results; image k of a batch is a one-image run with seed + k."""

from __future__ import annotations

import sys

import pytest
import torch

from rsvl_core.pipeline import PipelineModels, RunConfig
from rsvl_core.pipeline.models import ModelFiles
from rsvl_core.pipeline.run import run_pipeline

STAGE1 = dict(scale="2", sampler="ddim", steps=3, tile_size=0, tile_overlap=0)
REFINE = dict(positive_prompt="sharp", negative_prompt="blurry", steps=2, cfg_scale=4.0, cfg_scale_start=4.0,
              control_scale=1.0, color_fix="wavelet", latent_tile_size=0, min_size=64)


def spy_on(monkeypatch, modules: list, name: str) -> list[str]:
    """Record every call of stage_runs.<name>, in each copy of the module (the pack's and the CLI's)."""
    calls: list[str] = []
    for module in modules:
        real = getattr(module, name)

        def spy(*args, _real=real, _where=module.__name__, **kwargs):
            calls.append(_where)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls


def stage_run_modules(comfy) -> list:
    import rsvl_core.pipeline.run as cli_run

    node_module = sys.modules[f"{comfy.pack_name}.nodes.stage1"]
    return [cli_run, node_module]


def cli_models(files: dict) -> PipelineModels:
    return PipelineModels.from_files(ModelFiles(stage1=files["sr3"], sdxl=files.get("sdxl"),
                                                supir=files.get("supir")), torch.device("cpu"))


def test_engine_stage1_node_and_cli_run_the_same_function_torch_equal(comfy, demo_models, monkeypatch):
    models_dir, choices = demo_models
    sr3 = comfy.node("LoadRSVLModels").execute(**choices, dtype="fp32", device="auto",
                                               llava_quantization="none").args[0]
    image = torch.rand(2, 12, 16, 3, generator=torch.Generator().manual_seed(3))
    calls = spy_on(monkeypatch, stage_run_modules(comfy), "run_stage1")
    node = comfy.node("Stage1FidelitySR").execute(image=image, sr3=sr3, seed=7, **STAGE1).args[0]

    config = RunConfig.from_values(scale=2, stage1_sampler="ddim", stage1_steps=3, tile_size=0, tile_overlap=0,
                                   seed=7, stage1_only=True)
    files = {"sr3": models_dir / "rsvl" / "sr3" / choices["sr3_model"]}
    pixels = image.movedim(-1, 1)
    # the CLI's work item for image k of a batch is a one-image run with seed + k
    cli = [run_pipeline(pixels[k:k + 1], RunConfig.from_values(
        scale=2, stage1_sampler="ddim", stage1_steps=3, tile_size=0, tile_overlap=0, seed=7 + k, stage1_only=True),
        cli_models(files)).image for k in range(2)]
    assert config.seed == 7 and len(calls) == 3  # the node's one call over the batch, the CLI's two
    assert {c.rsplit(".", 1)[-1] for c in calls} == {"stage1", "run"}
    assert torch.equal(node.movedim(-1, 1), torch.cat(cli))
    assert not torch.equal(cli[0], cli[1])  # seed + k: the two images' noise differs


@pytest.mark.slow
def test_engine_refine_node_and_cli_run_the_same_function_torch_equal(comfy, demo_models, monkeypatch):
    models_dir, choices = demo_models
    refiner = comfy.node("LoadRSVLModels").execute(**choices, dtype="fp32", device="auto",
                                                   llava_quantization="none").args[2]
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    import rsvl_core.pipeline.run as cli_run

    node_module = sys.modules[f"{comfy.pack_name}.nodes.refine"]
    calls = spy_on(monkeypatch, [cli_run, node_module], "run_refine")
    widgets = {name: [value] for name, value in REFINE.items()}
    (node,), _ = comfy.node("ControlNetRefine").execute(image=[image], refiner=[refiner], caption=["a field"],
                                                        seed=[11], **widgets).args

    files = {"sr3": models_dir / "rsvl" / "sr3" / choices["sr3_model"],
             "sdxl": models_dir / "checkpoints" / choices["sdxl_checkpoint"],
             "supir": models_dir / "rsvl" / "supir" / choices["supir_model"]}
    config = RunConfig.from_values(scale=2, refine_steps=2, cfg_scale=4.0, cfg_scale_start=4.0, control_scale=1.0,
                                   color_fix="wavelet", latent_tile_size=0, min_size=64, seed=11,
                                   positive_prompt="sharp", negative_prompt="blurry", caption_text="a field")
    models = cli_models(files)
    # the stage-1 image the refiner sees in both runs: the node's input (the CLI's stage 1 returns it as it is)
    monkeypatch.setattr(cli_run, "run_stage1", lambda source, images, *a, **k: _identity_stage1(images))
    cli = run_pipeline(image.movedim(-1, 1), config, models).image
    assert len(calls) == 2 and {c.rsplit(".", 1)[-1] for c in calls} == {"refine", "run"}
    assert torch.equal(node.movedim(-1, 1), cli)


def _identity_stage1(images):
    from rsvl_core.pipeline.stage_runs import BatchRun
    from rsvl_core.stages import Stage1Result

    return BatchRun(images, seconds=[0.0] * images.shape[0], stage1=Stage1Result(images, {"model": "given"}))
