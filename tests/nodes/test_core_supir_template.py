"""The template for users of core SUPIR (`rsvl_core_supir`: core Load Checkpoint + core Load Model Patch -> our
SR3 stage 1, caption and refiner), on both hosts: it runs on ComfyUI 0.20.1; on 0.8, whose core has no SUPIR (its
Load Model Patch reads other patch kinds only), it stops at Load Model Patch, as its note says.

Core's ModelPatchLoader builds SUPIR at the full SDXL size only, so the run swaps it for the test-only probe node
that builds core's own SUPIR classes at the test file's size (comfy_probe/core_supir.py); the shipped graph, with
ModelPatchLoader itself, is validated by the server and stops where ModelPatchLoader reads the tiny file.
"""

from __future__ import annotations

import copy
import json

import pytest
from nodes_testing import WORKFLOWS, ui_to_api
from test_comfy_host import get
from test_comfy_host import server as server  # noqa: F401  (each host)
from test_native_host import node_texts, queue, run_prompt, upload_crop

pytestmark = [pytest.mark.slow]
NAME = "rsvl_core_supir"


def template() -> tuple[dict, dict]:
    api = json.loads((WORKFLOWS / "api" / f"{NAME}.json").read_text(encoding="utf-8"))
    ui = json.loads((WORKFLOWS / f"{NAME}.json").read_text(encoding="utf-8"))
    return api, ui


def on_test_models(server: dict, api: dict) -> dict:
    """The template set to the test models and CPU sizes (the core checkpoint has no CLIP: LoadRSVLModels names
    the SDXL-shaped file whose text encoders encode the caption, with its SUPIR file, which the refiner then does
    not read: the MODEL_PATCH is used)."""
    from native_models import link_sdxl_shaped_files

    files = link_sdxl_shaped_files(server)
    patches = server["root"] / "models" / "model_patches"
    patches.mkdir(parents=True, exist_ok=True)
    if not (patches / files["supir"].name).exists():
        (patches / files["supir"].name).symlink_to(files["supir"])
    values = {"LoadImage": {"image": "rsvl_core_supir_crop.png"},
              "CheckpointLoaderSimple": {"ckpt_name": files["sdxl_core"].name},
              "ModelPatchLoader": {"name": files["supir"].name},
              "LoadRSVLModels": {"sr3_model": server["choices"]["sr3_model"],
                                 "llava_model": server["choices"]["llava_model"], "llava_adapter": "none",
                                 "sdxl_checkpoint": files["sdxl"].name, "supir_model": files["supir"].name},
              "Stage1FidelitySR": {"scale": "2", "sampler": "ddim", "steps": 2},
              "LlavaRSCaption": {"max_new_tokens": 4},
              "ControlNetRefine": {"steps": 2, "min_size": 64, "latent_tile_size": 0}}
    api = copy.deepcopy(api)
    for node in api.values():
        node["inputs"].update(values.get(node["class_type"], {}))
    return api


def test_model_patch_core_supir_template_runs_on_0201_and_stops_at_core_loader_on_080(server):  # noqa: F811
    api, ui = template()
    note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    assert "Needs ComfyUI ≥ 0.20" in note and "Load Model Patch cannot read a SUPIR file" in note
    info = get(server, "/object_info")
    assert ui_to_api(ui, info) == api  # the UI version against the server's own definitions
    crop = upload_crop(server, "rsvl_core_supir_crop.png", 24, 16)
    shipped = on_test_models(server, api)
    # as shipped: validated and started on both hosts; it stops at core's ModelPatchLoader, which cannot read the
    # tiny file on 0.20.1 (full size only) nor any SUPIR file on 0.8 (no core SUPIR: as the template's note says)
    history, _ = run_prompt(server, shipped, "core_supir_shipped", [crop], returncode=1)
    entry = history if "status" in history else next(iter(history.values()))
    error = dict(entry["status"]["messages"])["execution_error"]
    assert error["node_type"] == "ModelPatchLoader", error
    if "SUPIRApply" not in info:  # ComfyUI 0.8: core has no SUPIR
        assert server["host"].id == "comfy080"
        return
    assert server["host"].id == "comfy0201"
    # the probe's MODEL_PATCH (core's classes at the file's size) in ModelPatchLoader's place: it runs
    patch = next(k for k, v in shipped.items() if v["class_type"] == "ModelPatchLoader")
    supir = server["root"] / "models" / "model_patches" / shipped[patch]["inputs"]["name"]
    shipped[patch] = {"class_type": "RsvlTestCoreSupirPatch", "inputs": {"path": str(supir.resolve())}}
    history, images = queue(server, shipped, "core_supir_run", [crop])
    refine = next(k for k, v in shipped.items() if v["class_type"] == "ControlNetRefine")
    report = "\n".join(node_texts(history, refine))
    assert "SUPIR: the connected model_patch's control network, connectors and denoise encoder" in report, report
    assert images["refined"].shape == (32, 48, 3) and images["refined"].std() > 1
    preview = next(k for k, v in shipped.items() if v["class_type"] == "PreviewAny")
    assert len(node_texts(history, preview)) == 1  # the caption that guided the refiner
