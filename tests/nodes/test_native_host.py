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
