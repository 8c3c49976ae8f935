"""ControlNetRefine under ComfyUI's dynamic VRAM (`ModelPatcherDynamic` as CoreModelPatcher, ComfyUI 0.20.1), forced
on the CPU (rsvl_core/hosted/dynamic_vram.py says what the pack does; dynamic_vram_probe.py how the class is forced).

Runs in the 0.20.1 host's interpreter (hosts.py `comfy0201`): fails under CI when that host is missing, skips
elsewhere. What only a GPU shows (comfy-aimdo's VBAR, weights really left on the CPU by core, VRAM and upload
time) is not checked here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hosts import HOSTS, require
from nodes_testing import REPO
from test_model_patch import write_core_sized_tiny_files

pytestmark = [pytest.mark.slow]

HOST = HOSTS["comfy0201"]
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    require(HOST.missing())
    sdxl, supir = write_core_sized_tiny_files(tmp_path_factory.mktemp("dynamic_vram"))
    run = subprocess.run([str(HOST.python), str(HERE / "dynamic_vram_probe.py"), str(HOST.comfy_dir), str(REPO),
                          str(sdxl), str(supir)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("supir", ["supir_file", "model_patch"])
def test_dynamic_vram_refiner_runs_on_views_of_core_weights_with_core_patches(probe, supir):
    """With CoreModelPatcher forced to core's ModelPatcherDynamic, MODEL, VAE (and MODEL_PATCH) are dynamic, and:
    - core's MODEL / VAE patchers are not loaded for us: our own classic patchers over views of their tensors are
      (exactly ModelPatcher, two views), in the same load_models_gpu call as ours and the MODEL_PATCH;
    - the only dynamic load is the MODEL_PATCH's, asked for no full load and no forced weight patching; no patcher
      has hooks;
    - the refiner's first conv is core's weight with the MODEL's weight patch (a LoRA stand-in) applied, while
      core's own tensor is left as it was; every other UNet tensor of the refiner is core's storage (on the CPU
      the view's load moves nothing);
    - the views live for the run and are gone (and unregistered from ComfyUI) once the refiner is dropped, by
      reference counting alone (no device copy waits for a garbage collection);
    - the image equals the one made with CoreModelPatcher classic (where ComfyUI patches core's tensors in place).
    """
    classic, dynamic = probe[f"classic_{supir}"], probe[f"dynamic_{supir}"]
    with_patch = supir == "model_patch"
    assert classic["core_dynamic"] == [False] * (2 + with_patch)
    assert classic["core_model_vae_loaded"] == [True, True] and classic["views"] == 0
    assert classic["conv_patched"] < 1e-6 and classic["unet_not_core_storage"] == []

    assert dynamic["core_dynamic"] == [True] * (2 + with_patch)
    assert dynamic["core_model_vae_loaded"] == [False, False]
    assert dynamic["model_patch_loaded"] is with_patch
    refiner_call = dynamic["calls"][-1]["classes"]
    assert refiner_call.count("ForcedDynamic") == int(with_patch), refiner_call
    assert set(refiner_call) <= {"ModelPatcher", "ForcedDynamic"}, refiner_call
    assert all(set(call["classes"]) <= {"ModelPatcher"} for call in dynamic["calls"][:-1]), dynamic["calls"]
    assert all(not call["force_patch_weights"] for call in dynamic["calls"])
    assert dynamic["dynamic_loads"] == ([{"full_load": False, "force_patch_weights": False, "device_to": "cpu"}]
                                        if with_patch else [])
    assert dynamic["our_patcher_classes"] == ["ModelPatcher"]
    assert not any(dynamic["hooks"]) and not any(classic["hooks"])

    assert dynamic["conv_patched"] < 1e-6 and dynamic["core_conv_untouched"]
    assert dynamic["unet_not_core_storage"] == ["conv_in.weight"]
    assert dynamic["views"] == 2 and dynamic["views_alive_during_run"] == 2
    assert dynamic["views_alive_after_run"] == 0 and dynamic["views_still_registered"] == 0
    assert "dynamic VRAM: the UNet and VAE tensors placed" in dynamic["line"] and "1 weight patch (LoRA)" in \
        dynamic["line"]
    assert probe[f"image_diff_{supir}"] == 0.0


def test_dynamic_vram_our_patchers_stay_classic_and_views_move_alone(probe):
    """With CoreModelPatcher forced dynamic, our registration still builds a classic ModelPatcher; a view loaded
    onto another device (meta) with a weight patch moves and patches only its own tensors: core's stay on the CPU,
    with the values they had."""
    assert probe["register_class"] == "ModelPatcher"
    move = probe["view_move"]
    assert move["view_class"] == "ModelPatcher" and move["patched"] == ["diffusion_model.a.weight"]
    assert move["view"] == {"a.weight": ["meta", "torch.float32"], "b.weight": ["meta", "torch.float32"]}
    assert move["core"] == {"a.weight": ["cpu", "torch.float32"], "b.weight": ["cpu", "torch.float32"]}
    assert move["core_unchanged"]
