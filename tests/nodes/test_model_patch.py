"""ControlNetRefine over core ComfyUI's SUPIR MODEL_PATCH, and our SUPIR networks against core's (`comfy.ldm.supir`,
ComfyUI >= 0.20: an implementation we did not write).

Everything here runs on the 0.20.1 host (hosts.py `comfy0201`): it fails under CI when that host is missing and
skips elsewhere.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hosts import HOSTS, require
from nodes_testing import REPO

pytestmark = [pytest.mark.slow]

HOST = HOSTS["comfy0201"]
HERE = Path(__file__).parent
# fp32 on the CPU, same weights, same inputs: what remains is the order of floating-point operations (SDPA vs
# core's optimized attention, diffusers' vs core's layers); values are O(1-5) here and differ by about 2e-6 at most
TOLERANCE = 2e-5


def perturb_constants(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every constant parameter (zero biases, unit norm scales, zero-initialised convs) random values, so a
    dropped or mis-wired branch changes the numbers instead of hiding behind zeros and ones."""
    with torch.no_grad():
        for param in module.parameters():
            if param.numel() and bool((param == param.flatten()[0]).all()):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def write_core_sized_tiny_files(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Tiny SDXL + SUPIR files in the released key layout (our tiny config, rsvl_core/refine/tiny.py), except
    ZeroSFT's hidden width: 128, as in the real SUPIR, where core's ZeroSFT hard-codes it (ours reads it from
    the file; the tiny demo files use 16). Constant parameters are randomised."""
    from rsvl_core.refine.tiny import tiny_refiner, tiny_refiner_config, write_tiny_refiner_files

    refiner = tiny_refiner(seed, replace(tiny_refiner_config(), zero_sft_hidden=128))
    generator = torch.Generator().manual_seed(seed + 1)
    for module in (refiner.unet, refiner.control):
        perturb_constants(module, generator)
    return write_tiny_refiner_files(folder, folder, refiner=refiner,
                                    names=("rsvl_tiny_sdxl_core_sized.safetensors",
                                           "rsvl_tiny_supir_core_sized.safetensors"))


@pytest.fixture(scope="module")
def core_sized_files(tmp_path_factory) -> tuple[Path, Path]:
    return write_core_sized_tiny_files(tmp_path_factory.mktemp("core_sized"))


def run_core_comparison(sdxl: Path, supir: Path) -> dict:
    """compare_core_supir.py in the 0.20.1 host's interpreter (its comfy, our rsvl_core): its JSON result."""
    run = subprocess.run([str(HOST.python), str(HERE / "compare_core_supir.py"), str(HOST.comfy_dir), str(REPO),
                          str(sdxl), str(supir)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_model_patch_core_supir_modules_give_our_features(core_sized_files):
    """Tiny random SUPIR weights in the released key layout, loaded both ways: by our loader (`load_refiner`), and
    into core ComfyUI 0.20.1's own classes from `comfy.ldm.supir.supir_modules`. Core's `SUPIR()` hard-codes the
    full SDXL sizes, so core's ModelPatchLoader cannot load a tiny file: comfy_probe/core_supir.py builds core's
    GLVControl, ZeroSFT and ZeroCrossAttn at the file's sizes (read from its tensors; ZeroSFT's hidden width and
    the norms' groups stay core's) and loads the file with ModelPatchLoader's prefix mapping and strict
    load_state_dict, so the key layout is checked too. Same inputs to both, in fp32 on the CPU:
    - the 10 control features (ours: GLVControl; core's: GLVControl, hint / x / t / context / y);
    - every connector call our decoder makes (at control scales 1, 0.5, 0), replayed on core's module;
    - epsilon of the whole UNet step with core's control (through the adapter, rsvl_core/hosted/model_patch.py) and
      core's connectors in place of ours;
    - the denoise encoder: ours against core's VAE Encoder class over the patch's `denoise_encoder_sd`.
    All agree within TOLERANCE (2e-5 absolute, on values up to about 5; measured at most 2.2e-6, on the features:
    see the printed line)."""
    require(HOST.missing())
    result = run_core_comparison(*core_sized_files)
    print("core vs ours, largest |difference| (largest |value|):",
          ", ".join(f"{k} {v['max_abs_diff']:.2e} ({v['max_abs']:.2f})" for k, v in result.items()))
    assert result["features"]["count"] == 10
    for scale in ("1.0", "0.5", "0.0"):
        assert result[f"connectors_cs{scale}"]["calls"] == list(range(12))  # every connector, ZeroCrossAttn too
    for name, value in result.items():
        assert value["max_abs"] > 0.1, (name, value)  # not all zeros on both sides
        assert value["max_abs_diff"] <= TOLERANCE, (name, value)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The pack in a fresh ComfyUI 0.20.1 (core SUPIR), with the test-only probe pack beside it."""
    from test_comfy_host import start_server

    require(HOST.missing())
    yield from start_server(tmp_path_factory.mktemp("comfy_model_patch"), HOST)


def test_model_patch_refines_as_our_own_supir_and_loads_nothing_of_supir_again(server):
    """Core's MODEL_PATCH -> ControlNetRefine(model_patch) over core's Load Checkpoint gives the image that
    ControlNetRefine gives with LoadRSVLModels' SUPIR file of the same weights (within 1 of 255: both fp32 from
    the same fp16 file), and the server's RSS grows by what the pack loads, not by SUPIR.

    Files: the SDXL-shaped test files (native_models.py: SDXL widths, one channel multiplier, ~190 M UNet
    parameters, fp16), which core's Load Checkpoint recognises as SDXL; its text encoders come from LoadRSVLModels'
    SDXL file (the core file has no CLIP). The MODEL_PATCH is core's classes at the file's size, built by the probe
    pack (core_supir.py) with ModelPatchLoader's key mapping, since ModelPatchLoader builds only full SDXL sizes.
    RSS (VmRSS of the server, after a warm-up with core's SDXL and the MODEL_PATCH loaded): the patch run, first use
    of its LoadRSVLModels handle, grows by the text encoders and the denoise encoder's conversion fp16 -> fp32 (both
    reported) plus first-run costs, never by the control network and connectors; the run that loads the SUPIR file
    instead (same handle: text encoders already loaded) grows by its SUPIR parts. Measured on the 2-core CPU test
    machine: 733-746 MiB (495 text + 130 denoise encoder loaded) against 721-741 MiB (722 SUPIR parts loaded)."""
    from native_models import link_sdxl_shaped_files
    from test_comfy_host import get
    from test_native_host import node_texts, queue, refine_graph, server_rss, upload_crop

    optional = get(server, "/object_info")["ControlNetRefine"]["input_order"]["optional"]
    assert optional[-1] == "model_patch"  # appended: saved workflows keep their inputs and links
    files = link_sdxl_shaped_files(server)
    crop = upload_crop(server, "rsvl_model_patch.png", 48, 32)
    core = {"10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files["sdxl_core"].name}},
            "12": {"class_type": "RsvlTestCoreSupirPatch", "inputs": {"path": str(files["supir"])}},
            "13": {"class_type": "PreviewAny", "inputs": {"source": ["10", 2]}},
            "14": {"class_type": "PreviewAny", "inputs": {"source": ["12", 0]}}}
    # the baseline holds core's SDXL (UNet + VAE) and the MODEL_PATCH, and the libraries the refiner imports
    # (a refine with the tiny demo refiner)
    demo = refine_graph("rsvl_model_patch.png", {"sdxl_checkpoint": server["choices"]["sdxl_checkpoint"],
                                                 "supir_model": server["choices"]["supir_model"]}, "d", "demo")
    queue(server, {**core, **demo}, "model_patch_warm", [crop])
    before = server_rss(server)

    loader = {"sdxl_checkpoint": files["sdxl"].name, "supir_model": files["supir"].name}
    patch = {**core, **refine_graph("rsvl_model_patch.png", loader, name="patch", model=["10", 0], vae=["10", 2],
                                    model_patch=["12", 0])}
    history, images = queue(server, patch, "model_patch_refine", [crop])
    after_patch = server_rss(server)
    patch_report = "\n".join(node_texts(history, "5"))
    assert "SUPIR: the connected model_patch's control network, connectors and denoise encoder" in patch_report, \
        patch_report
    patched = images["patch"]

    own = {**core, **refine_graph("rsvl_model_patch.png", loader, name="own", model=["10", 0], vae=["10", 2])}
    history, images = queue(server, own, "model_patch_own", [crop])  # the same LoadRSVLModels: text loaded
    after_own = server_rss(server)
    own_report = "\n".join(node_texts(history, "5"))
    assert "(SUPIR parts + text encoders)" in own_report, own_report

    difference = np.abs(patched.astype(int) - images["own"].astype(int))
    assert patched.shape == (32, 48, 3) and patched.std() > 1
    assert difference.max() <= 1, f"max {difference.max()}, mean {difference.mean():.4f}"

    mib = 1024 ** 2
    text = int(re.search(r"loaded by the pack: (\d+) MiB \(text encoders\)", patch_report)[1]) * mib
    converted = re.search(r"denoise encoder converted to the VAE's precision, (\d+) MiB", patch_report)
    converted = int(converted[1]) * mib if converted else 0
    # the report counts the handle's text encoders on every run (loaded once, by the patch run)
    supir = int(re.search(r"loaded by the pack: (\d+) MiB \(SUPIR parts \+", own_report)[1]) * mib - text
    growth_patch, growth_own = after_patch - before, after_own - after_patch
    print(f"RSS growth: ControlNetRefine(model_patch) {growth_patch / mib:.0f} MiB (text encoders {text / mib:.0f} "
          f"MiB + denoise encoder fp32 {converted / mib:.0f} MiB loaded); LoadRSVLModels' SUPIR file "
          f"{growth_own / mib:.0f} MiB (SUPIR parts {supir / mib:.0f} MiB loaded); images differ by at most "
          f"{difference.max()} of 255")
    control_and_connectors = supir - converted  # what the patch path never loads
    assert control_and_connectors > 300 * mib  # big enough to see in RSS
    # the patch run, the first to load core's MODEL through load_models_gpu, also pays ~100 MiB of first-run costs
    # (measured 120 MiB; 80 MiB when LoadRSVLModels' path runs first): well below the control network and
    # connectors, which a second SUPIR copy would add
    assert growth_patch < text + converted + 0.5 * control_and_connectors, (growth_patch, text, converted)
    assert growth_own > 0.5 * supir, (growth_own, supir)


def test_model_patch_needs_model_and_a_supir_patch(comfy, demo_models):
    """Without a ComfyUI: model_patch alone (no MODEL to run SUPIR over) and a MODEL_PATCH of another kind (core's
    ModelPatchLoader also loads Qwen / Z-Image patches) are refused in one line naming the node."""
    import importlib
    from types import SimpleNamespace

    refiner = comfy.node("LoadRSVLModels").execute(**demo_models[1], dtype="auto", device="auto",
                                                   llava_quantization="none").args[2]
    widgets = dict(positive_prompt="sharp", negative_prompt="blurry", steps=2, cfg_scale=4.0, cfg_scale_start=4.0,
                   control_scale=1.0, color_fix="wavelet", seed=1, latent_tile_size=0, min_size=64)
    patch = SimpleNamespace(model=torch.nn.Linear(1, 1))
    with pytest.raises(comfy.logic.NodeError, match="model_patch is connected but model is not"):
        comfy.node("ControlNetRefine").execute(image=torch.rand(1, 16, 16, 3), refiner=refiner, caption="fields",
                                               model_patch=[patch], **widgets)
    adapter = importlib.import_module(f"{comfy.pack_name}.rsvl_core.hosted.model_patch")
    with pytest.raises(ValueError, match="expected a SUPIR model patch .* got Linear"):
        adapter.supir_parts_from_patch(patch, {}, {})
    assert refiner.model is None  # nothing was loaded
