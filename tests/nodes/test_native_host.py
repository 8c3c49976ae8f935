"""The pack plugged into ComfyUI's own types in a real ComfyUI (comfy_host, CPU): core's Load Upscale Model
into Stage1FidelitySR, compared with core's own upscale node.

Runs when a ComfyUI is found (see test_comfy_host.py, whose server fixture this module shares); skips otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from nodes_testing import REPO
from PIL import Image
from test_comfy_host import TOOLS, pytestmark, server  # noqa: F401  (marks: slow, skip without ComfyUI)


def upload_crop(host: dict, name: str, width: int, height: int) -> str:
    """The bundled aerial sample's top-left width x height crop, saved for upload as `name`."""
    path = host["root"] / name
    if not path.exists():
        Image.open(REPO / "rsvl_core" / "samples" / "osbs_029_lr100.png").convert("RGB").crop(
            (0, 0, width, height)).save(path)
    return str(path)


def queue(host: dict, api: dict, name: str, uploads: list[str]) -> tuple[dict, dict]:
    """Run an API prompt; (history entry, {SaveImage filename_prefix: image as uint8 array})."""
    prompt = host["root"] / f"{name}.json"
    prompt.write_text(json.dumps(api))
    out = host["root"] / f"out_{name}"
    command = [sys.executable, str(TOOLS / "run_workflow.py"), str(prompt), "--port", str(host["port"]),
               "--out", str(out), "--no-ws", "--timeout", "400"]
    for path in uploads:
        command += ["--upload", path]
    run = subprocess.run(command, capture_output=True, text=True, timeout=460)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    images = {}
    for path in out.rglob("*.png"):
        images[path.name.rsplit("_", 2)[0]] = np.asarray(Image.open(path).convert("RGB"))
    return history, images


def node_texts(history: dict, node_id: str) -> list[str]:
    """The `ui.text` lines a node reported in a finished prompt's history."""
    entry = next(iter(history.values())) if "outputs" not in history else history
    return list(entry["outputs"].get(node_id, {}).get("text", []))


def test_native_upscale_model_equals_core_upscale_node(server):  # noqa: F811
    """Core Load Upscale Model -> Stage1FidelitySR at x4 gives core's "Upscale Image (using Model)" pixels and
    says which model ran; a 96x64 crop is one whole-image pass in both (core's 512-pixel tiles)."""
    crop = upload_crop(server, "rsvl_native_crop.png", 96, 64)
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "rsvl_native_crop.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x_tiny_esrgan.pth"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "core"}},
        "5": {"class_type": "Stage1FidelitySR",
              "inputs": {"image": ["1", 0], "upscale_model": ["2", 0], "scale": "4", "sampler": "faithful",
                         "steps": 0, "seed": 123, "tile_size": 224, "tile_overlap": 32, "tile_batch": 1}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "rsvl"}},
    }
    history, images = queue(server, api, "native_upscale_model", [crop])
    core, ours = images["core"], images["rsvl"]
    assert core.shape == ours.shape == (256, 384, 3)
    difference = np.abs(core.astype(int) - ours.astype(int))
    assert difference.max() <= 1, f"max {difference.max()}, mean {difference.mean():.4f}"
    assert core.std() > 1  # not a blank image on both sides
    text = "\n".join(node_texts(history, "5"))
    assert text.startswith("ran: ESRGAN x4 upscale model, one pass, 1 tile of up to 512 input px"), text
    assert "faithful" not in text and "500 steps" not in text


def test_native_batch_of_three_gives_three_captions_paired_and_a_text_node_runs_three_times(server):  # noqa: F811
    """A batch of 3 images: LlavaRSCaption gives a list of 3 captions (no joined string); ControlNetRefine
    refines 3 images, one report line each; core "Preview as Text" and "CLIP Text Encode" after the caption
    run once per caption."""
    from native_models import clip_l_file

    clip = server["root"] / "models" / "text_encoders" / "clip_l_random.safetensors"
    if not clip.exists():
        clip.parent.mkdir(parents=True, exist_ok=True)
        clip.symlink_to(clip_l_file())
    crops = [upload_crop(server, f"rsvl_native_batch_{i}.png", 24, 16) for i in range(3)]
    for i, path in enumerate(crops):  # three different images of the same size
        Image.open(REPO / "rsvl_core" / "samples" / "osbs_029_lr100.png").convert("RGB").crop(
            (30 * i, 20 * i, 30 * i + 24, 20 * i + 16)).save(path)
    choices = server["choices"]
    api = {
        **{f"1{i}": {"class_type": "LoadImage", "inputs": {"image": f"rsvl_native_batch_{i}.png"}} for i in range(3)},
        "20": {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["11", 0]}},
        "21": {"class_type": "ImageBatch", "inputs": {"image1": ["20", 0], "image2": ["12", 0]}},
        "3": {"class_type": "LoadRSVLModels",
              "inputs": {"sr3_model": "none", "llava_model": choices["llava_model"], "llava_adapter": "none",
                         "sdxl_checkpoint": choices["sdxl_checkpoint"], "supir_model": choices["supir_model"],
                         "dtype": "auto", "device": "auto", "llava_quantization": "none"}},
        "4": {"class_type": "LlavaRSCaption",
              "inputs": {"image": ["21", 0], "captioner": ["3", 1], "prompt": "<image> describe",
                         "max_new_tokens": 4, "temperature": 0.0, "seed": 0}},
        "5": {"class_type": "ControlNetRefine",
              "inputs": {"image": ["21", 0], "refiner": ["3", 2], "caption": ["4", 0], "positive_prompt": "sharp",
                         "negative_prompt": "blurry", "steps": 2, "cfg_scale": 4.0, "cfg_scale_start": 4.0,
                         "control_scale": 1.0, "color_fix": "wavelet", "seed": 0, "latent_tile_size": 0,
                         "min_size": 64, "restoration_scale": -1.0, "s_churn": 5, "preset": "paper"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "refined"}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
        "8": {"class_type": "CLIPLoader", "inputs": {"clip_name": clip.name, "type": "stable_diffusion"}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["8", 0], "text": ["4", 0]}},
        "90": {"class_type": "PreviewAny", "inputs": {"source": ["9", 0]}},
    }
    history, _ = queue(server, api, "native_batch", crops)
    entry = history if "outputs" in history else next(iter(history.values()))
    captions = node_texts(history, "7")
    assert len(captions) == 3 and all(c.strip() and "---" not in c for c in captions), captions
    shown = "\n".join(node_texts(history, "4"))
    assert [line.split(": ", 1)[0] for line in shown.splitlines()] == ["image 1", "image 2", "image 3"], shown
    assert len(node_texts(history, "90")) == 3  # CLIP Text Encode ran once per caption
    report = "\n".join(node_texts(history, "5")).splitlines()
    assert [line.split(":", 1)[0] for line in report] == ["image 1", "image 2", "image 3"], report
    saved = entry["outputs"]["6"]["images"]
    assert len(saved) == 3
    sizes = {Image.open(next((server["root"] / "out_native_batch").rglob(s["filename"]))).size for s in saved}
    assert sizes == {(24, 16)}  # the refiner's output is its input's size
