"""The pack plugged into ComfyUI's own types in a real ComfyUI (comfy_host, CPU): core's Load Upscale Model
into Stage1FidelitySR, compared with core's own upscale node.

Runs when a ComfyUI is found (see test_comfy_host.py, whose server fixture this module shares); skips otherwise.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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


def run_prompt(host: dict, api: dict, name: str, uploads: list[str], returncode: int) -> tuple[dict, Path]:
    """Run an API prompt through the host's run_workflow.py, which must exit with `returncode` (1: the prompt
    failed at run time); (its history entry, the folder its outputs landed in)."""
    prompt = host["root"] / f"{name}.json"
    prompt.write_text(json.dumps(api))
    out = host["root"] / f"out_{name}"
    command = [sys.executable, str(TOOLS / "run_workflow.py"), str(prompt), "--port", str(host["port"]),
               "--out", str(out), "--no-ws", "--timeout", "400"]
    for path in uploads:
        command += ["--upload", path]
    run = subprocess.run(command, capture_output=True, text=True, timeout=460)
    assert run.returncode == returncode, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "history.json").read_text()), out


def queue(host: dict, api: dict, name: str, uploads: list[str]) -> tuple[dict, dict]:
    """Run an API prompt; (history entry, {SaveImage filename_prefix: image as uint8 array})."""
    history, out = run_prompt(host, api, name, uploads, returncode=0)
    images = {}
    for path in out.rglob("*.png"):
        images[path.name.rsplit("_", 2)[0]] = np.asarray(Image.open(path).convert("RGB"))
    return history, images


def queue_error(host: dict, api: dict, name: str, uploads: list[str]) -> str:
    """Run an API prompt that must fail at run time; the exception message ComfyUI recorded."""
    history, _ = run_prompt(host, api, name, uploads, returncode=1)
    entry = history if "status" in history else next(iter(history.values()))
    return dict(entry["status"]["messages"])["execution_error"]["exception_message"]


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


def server_rss(host: dict) -> int:
    """The ComfyUI server process's resident memory, bytes (start.sh records its PID)."""
    pid = (Path(host["env"]["COMFY_STATE_DIR"]) / str(host["port"]) / "server.pid").read_text().strip()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for server PID {pid}")


def refine_graph(image: str, loader: dict, prefix: str = "", name: str = "refined", **refine_links) -> dict:
    """LoadImage -> ControlNetRefine (+ SaveImage `name`), with LoadRSVLModels `loader` inputs; node ids start
    with `prefix` (ComfyUI keeps a node's output cached only while the next prompt holds that node)."""
    return {
        f"{prefix}1": {"class_type": "LoadImage", "inputs": {"image": image}},
        f"{prefix}3": {"class_type": "LoadRSVLModels",
                       "inputs": {"sr3_model": "none", "llava_model": "none", "llava_adapter": "none",
                                  "dtype": "auto", "device": "auto", "llava_quantization": "none", **loader}},
        f"{prefix}5": {"class_type": "ControlNetRefine",
                       "inputs": {"image": [f"{prefix}1", 0], "refiner": [f"{prefix}3", 2],
                                  "caption": "farm fields and a road", "positive_prompt": "sharp",
                                  "negative_prompt": "blurry", "steps": 2, "cfg_scale": 4.0, "cfg_scale_start": 4.0,
                                  "control_scale": 1.0, "color_fix": "wavelet", "seed": 3, "latent_tile_size": 0,
                                  "min_size": 64, "restoration_scale": -1.0, "s_churn": 5, "preset": "paper",
                                  **refine_links}},
        f"{prefix}6": {"class_type": "SaveImage", "inputs": {"images": [f"{prefix}5", 0], "filename_prefix": name}},
    }


def test_native_core_checkpoint_refines_with_one_sdxl_copy(server):  # noqa: F811
    """Core Load Checkpoint (an SDXL-shaped file) -> ControlNetRefine: the pack loads only SUPIR's parts (and,
    with CLIP absent, the text encoders of LoadRSVLModels' SDXL file); the UNet and VAE are ComfyUI's own tensors.
    RSS grows by those parts only, against SDXL + SUPIR for LoadRSVLModels' own path; both give the same image."""
    from native_models import link_sdxl_shaped_files

    files = link_sdxl_shaped_files(server)
    crop = upload_crop(server, "rsvl_native_refine.png", 48, 32)
    # core loads its checkpoint first: the baseline holds ComfyUI's SDXL (UNet + VAE, CLIP absent)
    warm = {"10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files["sdxl_core"].name}},
            "11": {"class_type": "PreviewAny", "inputs": {"source": ["10", 2]}}}
    history, _ = queue(server, warm, "native_checkpoint", [])
    assert node_texts(history, "11")  # the VAE exists
    # and the pack has refined once with the tiny demo refiner: the libraries it imports are in the baseline too
    demo = refine_graph("rsvl_native_refine.png", {"sdxl_checkpoint": server["choices"]["sdxl_checkpoint"],
                                                   "supir_model": server["choices"]["supir_model"]}, "d", "demo")
    queue(server, {**warm, **demo}, "native_warm", [crop])
    before = server_rss(server)
    native = refine_graph("rsvl_native_refine.png", {"sdxl_checkpoint": files["sdxl"].name,
                                                     "supir_model": files["supir"].name},
                          model=["10", 0], vae=["10", 2])
    native = {**native, **warm}
    native["3"]["inputs"]["sdxl_checkpoint"] = "none"  # SUPIR alone: no CLIP connected, so ...
    error = queue_error(server, native, "native_no_text", [crop])
    assert "no text encoder: connect the CLIP of your Load Checkpoint" in error, error
    native["3"]["inputs"]["sdxl_checkpoint"] = files["sdxl"].name  # ... its text encoders come from here
    history, images = queue(server, native, "native_refine", [crop])
    after_native = server_rss(server)
    report = "\n".join(node_texts(history, "5"))
    shared = re.search(r"SDXL UNet \+ VAE (\d+) MiB shared", report)
    loaded = re.search(r"loaded by the pack: (\d+) MiB", report)
    assert shared and loaded, report
    ours_native = images["refined"]

    full = refine_graph("rsvl_native_refine.png", {"sdxl_checkpoint": files["sdxl"].name,
                                                   "supir_model": files["supir"].name}, "f", "full")
    history, images = queue(server, {**native, **full}, "full_refine", [crop])  # the native part stays cached
    after_full = server_rss(server)
    growth_native, growth_full = after_native - before, after_full - after_native
    mib = 1024 ** 2
    print(f"RSS growth: core checkpoint -> ControlNetRefine {growth_native / mib:.0f} MiB; LoadRSVLModels "
          f"(SDXL + SUPIR) {growth_full / mib:.0f} MiB; SDXL UNet+VAE shared {shared[1]} MiB, SUPIR parts + text "
          f"loaded {loaded[1]} MiB")
    difference = np.abs(ours_native.astype(int) - images["full"].astype(int))
    assert ours_native.shape == (32, 48, 3) and difference.max() <= 1, difference.max()  # same weights, same image
    sdxl_bytes, pack_bytes = int(shared[1]) * mib, int(loaded[1]) * mib
    assert sdxl_bytes > 1000 * mib  # the fp32 UNet + VAE (~1.4 GiB): every parameter is ComfyUI's own tensor
    # RSS: the native path grows by what the pack loads (SUPIR parts + text encoders) and little more; the
    # LoadRSVLModels path by a second SDXL on top (less than all of it where it reuses memory freed before)
    assert growth_native < pack_bytes + 0.2 * sdxl_bytes, (growth_native, pack_bytes)
    assert growth_full > growth_native + 0.5 * sdxl_bytes, (growth_full, growth_native)


def server_log(host: dict) -> str:
    """The ComfyUI server's log so far."""
    return (Path(host["env"]["COMFY_STATE_DIR"]) / str(host["port"]) / "server.log").read_text(errors="replace")


def post_free(host: dict) -> None:
    """ComfyUI's "Unload models" (POST /free {"unload_models": true}): the queue worker calls unload_all_models."""
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{host['port']}/free", method="POST",
                                     data=json.dumps({"unload_models": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200


def upscale_graph(scale: str, oom_above: int | None = None) -> dict:
    """LoadImage -> Load Upscale Model (-> test-only OOM injection) -> Stage1FidelitySR -> SaveImage "rsvl"."""
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "rsvl_native_crop.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x_tiny_esrgan.pth"}},
        "5": {"class_type": "Stage1FidelitySR",
              "inputs": {"image": ["1", 0], "upscale_model": ["2", 0], "scale": scale, "sampler": "faithful",
                         "steps": 0, "seed": 0, "tile_size": 224, "tile_overlap": 32, "tile_batch": 1}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "rsvl"}},
    }
    if oom_above is not None:
        api["4"] = {"class_type": "RsvlTestOutOfMemoryAbove", "inputs": {"upscale_model": ["2", 0],
                                                                        "max_pixels": oom_above}}
        api["5"]["inputs"]["upscale_model"] = ["4", 0]
    return api


def test_native_models_are_evicted_by_unload_all_models(server):  # noqa: F811
    """Our weights are ComfyUI's: loaded through load_models_gpu (ComfyUI logs "Requested to load"), kept loaded
    between runs, dropped by "Unload models" (unload_all_models), and loaded again by the next run."""
    crop = upload_crop(server, "rsvl_native_crop.png", 96, 64)
    marker = "Requested to load ModuleBundle"

    def loads_during(api: dict, name: str) -> int:
        before = server_log(server).count(marker)
        queue(server, api, name, [crop])
        return server_log(server).count(marker) - before

    loads_during(upscale_graph("2"), "evict_first")  # loaded now, or earlier in this module
    assert loads_during(upscale_graph("4"), "evict_again") == 0  # a re-run: still loaded
    post_free(server)
    assert loads_during(upscale_graph("2"), "evict_after_free") == 1  # unloaded by the manager: loaded again
    # the refiner (SDXL + SUPIR + text, as LoadRSVLModels loads it) is the manager's too
    choices = server["choices"]
    refine = refine_graph("rsvl_native_crop.png", {"sdxl_checkpoint": choices["sdxl_checkpoint"],
                                                   "supir_model": choices["supir_model"]}, "r", "refine")
    loads_during(refine, "evict_refine")
    post_free(server)
    refine["r5"]["inputs"]["seed"] = 4
    assert loads_during(refine, "evict_refine_after_free") == 1


def test_native_out_of_memory_halves_the_tile_once_then_fails_in_one_line(server):  # noqa: F811
    """An upscale model that runs out of memory above 48x48 input pixels: Stage1FidelitySR halves its tile
    (whole 96x64 image -> 48-pixel tiles), says so in its report and the log, and gives the x4 image; one that
    runs out of memory on every tile fails with one line naming the sizes tried."""
    crop = upload_crop(server, "rsvl_native_crop.png", 96, 64)
    history, images = queue(server, upscale_graph("4"), "oom_reference", [crop])
    reference = images["rsvl"]
    log_before = server_log(server)
    history, images = queue(server, upscale_graph("4", oom_above=48 * 48), "oom_retry", [crop])
    text = "\n".join(node_texts(history, "5"))
    assert "tiles of up to 48 input px (halved after running out of memory with [512])" in text, text
    new_log = server_log(server)[len(log_before):]
    assert new_log.count("stage 1 (spandrel): out of memory with 512-pixel tiles; trying 48-pixel tiles") == 1, \
        new_log[-2000:]
    assert images["rsvl"].shape == reference.shape == (256, 384, 3)
    assert np.abs(images["rsvl"].astype(int) - reference.astype(int)).mean() < 2  # blended tiles, not a new image
    error = queue_error(server, upscale_graph("4", oom_above=8 * 8), "oom_fail", [crop])
    assert error.splitlines()[0].startswith("Upscale Aerial/Satellite: SR3 (RSVL stage 1) #5: stage 1 (spandrel): "
                                            "out of memory even with 16-pixel tiles"), error
    assert len(error.strip().splitlines()) == 1


def test_native_workflow_validates_and_runs(server):  # noqa: F811
    """The shipped ComfyUI-native workflow (core Load Checkpoint + Load Upscale Model -> Stage 1 -> Caption ->
    Refine over core's MODEL/CLIP/VAE -> Preview as Text + Save Image): its UI version gives its API version
    under the server's own definitions, and it runs on the test models (the test checkpoint has no CLIP, so
    LoadRSVLModels names the SDXL-shaped file whose text encoders then encode the caption)."""
    from native_models import native_workflow_values
    from nodes_testing import WORKFLOWS, ui_to_api
    from test_comfy_host import get

    info = get(server, "/object_info")
    api = json.loads((WORKFLOWS / "api" / "rsvl_native_comfy_models.json").read_text(encoding="utf-8"))
    ui = json.loads((WORKFLOWS / "rsvl_native_comfy_models.json").read_text(encoding="utf-8"))
    assert ui_to_api(ui, info) == api
    values = native_workflow_values(server)
    crop = upload_crop(server, "rsvl_native_crop.png", 96, 64)
    by_type = {node["class_type"]: node["inputs"] for node in api.values()}
    by_type["LoadImage"]["image"] = "rsvl_native_crop.png"
    for kind, inputs in values.items():
        by_type[kind].update(inputs)
    history, images = queue(server, api, "native_workflow", [crop])  # the server validates it as queued
    assert images["refined"].shape == (128, 192, 3)
    preview = next(k for k, v in api.items() if v["class_type"] == "PreviewAny")
    assert len(node_texts(history, preview)) == 1  # one image, one caption
    refine = next(k for k, v in api.items() if v["class_type"] == "ControlNetRefine")
    assert "shared with the connected MODEL/VAE" in "\n".join(node_texts(history, refine))
