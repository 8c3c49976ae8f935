"""Write workflows/*.json (UI format), workflows/api/*.json (API format) and the .jpg thumbnails from one spec.

    python3 tests/nodes/build_workflows.py

The node definitions come from the nodes' own schemas (through the ComfyUI stand-in), so widget order and the
seed's extra "control after generate" value match what ComfyUI's frontend expects. test_workflows.py checks
the written files against the definitions and against each other.
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from nodes_testing import REPO, WORKFLOWS, FakeComfy, widget_names  # noqa: E402

# What users' model files are called in the README's layout; they pick their own in the loader.
MODELS = {"sr3_model": "I640000_E37_gen.pth", "llava_model": "llama3-llava-next-8b-hf",
          "llava_adapter": "rs_llava_lora", "sdxl_checkpoint": "juggernautXL_v8Rundiffusion.safetensors",
          "supir_model": "SUPIR-v0Q.ckpt"}
SAMPLE_SCENE = "rsvl_sample_scene.tif"  # the bundled sample as a GeoTIFF (RSVLLoadScene), copied to input/ too
SAMPLE = "rsvl_sample.png"  # copy an image of yours to ComfyUI's input/ folder, or pick one in LoadImage
UPSCALE_MODEL = "RealESRGAN_x4plus.pth"  # any x4 model in models/upscale_models
HANDWRITTEN = "dense pine forest crossed by a dirt road, a small clearing with two farm buildings"


def loader(**choices):
    return {"class_type": "LoadRSVLModels", "inputs": {**MODELS, **choices, "dtype": "auto", "device": "auto",
                                                       "llava_quantization": "none", "max_vram": ""}}


def stage1(image, sr3, **extra):
    return {"class_type": "Stage1FidelitySR", "inputs": {"image": image, "sr3": sr3, "scale": "4",
                                                         "sampler": "faithful", "steps": 0, "seed": 0,
                                                         "tile_size": 224, "tile_overlap": 32, "tile_batch": 4,
                                                         **extra}}


def refine(image, refiner, caption, **extra):
    from rsvl_core.refine.options import SEED_NEGATIVE_PROMPT, SEED_POSITIVE_PROMPT

    return {"class_type": "ControlNetRefine", "inputs": {
        "image": image, "refiner": refiner, "caption": caption, "positive_prompt": SEED_POSITIVE_PROMPT,
        "negative_prompt": SEED_NEGATIVE_PROMPT, "steps": 50, "cfg_scale": 7.5, "cfg_scale_start": 4.0,
        "control_scale": 1.0, "color_fix": "wavelet", "seed": 0, "latent_tile_size": 128, "min_size": 1024,
        "restoration_scale": -1.0, "s_churn": 5.0, "preset": "paper", **extra}}


def load_image():
    return {"class_type": "LoadImage", "inputs": {"image": SAMPLE}}


def save(images, prefix):
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}


def spec() -> dict[str, tuple[dict, dict[str, tuple[int, int]]]]:
    from rsvl_core.caption.config import SEED_PROMPT
    from rsvl_core.refine.options import SEED_NEGATIVE_PROMPT, SEED_POSITIVE_PROMPT

    full = {
        "1": load_image(),
        "2": loader(),
        "3": {"class_type": "DynamicStepScheduler", "inputs": {
            "cache_preset": "off", "refine_steps": 50, "cache_threshold": 0.0, "stage1_sampler": "faithful",
            "stage1_steps": 0, "stage1_cache": "off"}},
        "4": stage1(["1", 0], ["2", 0], schedule=["3", 0]),
        "5": {"class_type": "LlavaRSCaption", "inputs": {"image": ["4", 0], "captioner": ["2", 1],
                                                         "prompt": SEED_PROMPT, "max_new_tokens": 256,
                                                         "temperature": 0.2, "seed": 0}},
        "6": refine(["4", 0], ["2", 2], ["5", 0], schedule=["3", 0]),
        "7": save(["4", 0], "rsvl/stage1"),
        "8": save(["6", 0], "rsvl/refined"),
    }
    stage1_only = {
        "1": load_image(),
        "2": loader(llava_model="none", llava_adapter="none", sdxl_checkpoint="none", supir_model="none"),
        "3": stage1(["1", 0], ["2", 0]),
        "4": save(["3", 0], "rsvl/stage1"),
    }
    handwritten = {
        "1": load_image(),
        "2": loader(llava_model="none", llava_adapter="none"),
        "3": stage1(["1", 0], ["2", 0]),
        "4": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": HANDWRITTEN}},
        "5": refine(["3", 0], ["2", 2], ["4", 0]),
        "6": save(["5", 0], "rsvl/refined"),
    }
    uncertainty = {
        "1": load_image(),
        "2": loader(),
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}},
        "4": stage1(["3", 0], ["2", 0]),
        "5": {"class_type": "LlavaRSCaption", "inputs": {"image": ["4", 0], "captioner": ["2", 1],
                                                         "prompt": SEED_PROMPT, "max_new_tokens": 256,
                                                         "temperature": 0.2, "seed": 0}},
        "6": refine(["4", 0], ["2", 2], ["5", 0]),
        "7": {"class_type": "RSVLUncertainty", "inputs": {"samples": ["6", 0], "combine": "median", "guard": 12.0,
                                                          "feather": 8, "stage_1": ["4", 0]}},
        "8": save(["7", 0], "rsvl/guarded"),
        "9": save(["7", 1], "rsvl/uncertainty"),
    }
    # ComfyUI-native: the SDXL and the upscale model come from core's loaders; the pack loads only SUPIR's parts
    # and the captioner. The caption list goes to core's Preview as Text (one entry per image).
    native = {
        "1": load_image(),
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": MODELS["sdxl_checkpoint"]}},
        "3": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": UPSCALE_MODEL}},
        "4": loader(sr3_model="none", sdxl_checkpoint="none"),
        "5": {"class_type": "Stage1FidelitySR", "inputs": {
            "image": ["1", 0], "upscale_model": ["3", 0], "scale": "4", "sampler": "faithful", "steps": 0,
            "seed": 0, "tile_size": 224, "tile_overlap": 32, "tile_batch": 4}},
        "6": {"class_type": "LlavaRSCaption", "inputs": {"image": ["5", 0], "captioner": ["4", 1],
                                                         "prompt": SEED_PROMPT, "max_new_tokens": 256,
                                                         "temperature": 0.2, "seed": 0}},
        "7": refine(["5", 0], ["4", 2], ["6", 0], model=["2", 0], clip=["2", 1], vae=["2", 2]),
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
        "9": save(["7", 0], "rsvl/refined"),
    }
    # For users of core SUPIR (ComfyUI >= 0.20): core Load Checkpoint + core Load Model Patch (a SUPIR file in
    # models/model_patches) -> our SR3 stage 1, caption and refiner; the pack reads nothing of SUPIR or SDXL.
    core_supir = {
        "1": load_image(),
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": MODELS["sdxl_checkpoint"]}},
        "3": {"class_type": "ModelPatchLoader", "inputs": {"name": MODELS["supir_model"]}},
        "4": loader(sdxl_checkpoint="none", supir_model="none"),
        "5": stage1(["1", 0], ["4", 0]),
        "6": {"class_type": "LlavaRSCaption", "inputs": {"image": ["5", 0], "captioner": ["4", 1],
                                                         "prompt": SEED_PROMPT, "max_new_tokens": 256,
                                                         "temperature": 0.2, "seed": 0}},
        "7": refine(["5", 0], ["4", 2], ["6", 0], model=["2", 0], clip=["2", 1], vae=["2", 2],
                    model_patch=["3", 0]),
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
        "9": save(["7", 0], "rsvl/refined"),
    }
    # A georeferenced scene in, a GeoTIFF out: Load Scene's geo carries the place to Save GeoTIFF.
    geotiff_scene = {
        "1": {"class_type": "RSVLLoadScene", "inputs": {"scene": SAMPLE_SCENE, "bands": "", "stretch": "auto",
                                                        "percentiles": ""}},
        "2": loader(),
        "3": stage1(["1", 0], ["2", 0]),
        "4": {"class_type": "LlavaRSCaption", "inputs": {"image": ["3", 0], "captioner": ["2", 1],
                                                         "prompt": SEED_PROMPT, "max_new_tokens": 256,
                                                         "temperature": 0.2, "seed": 0}},
        "5": refine(["3", 0], ["2", 2], ["4", 0]),
        "6": {"class_type": "RSVLSaveGeoTIFF", "inputs": {"image": ["5", 0], "geo": ["1", 1],
                                                          "filename_prefix": "rsvl/scene", "format": "GeoTIFF",
                                                          "bit_depth": "8"}},
    }
    geotiff_pos = {"1": col(0), "2": col(0, 1), "3": col(1), "4": col(2), "5": col(3), "6": col(4)}
    # A scene too large for an IMAGE: file in input/ -> windows -> file in output/, in one node.
    upscale_scene = {
        "1": loader(),
        "2": {"class_type": "RSVLUpscaleScene", "inputs": {
            "scene": SAMPLE_SCENE, "output_folder": "rsvl_scenes", "sr3": ["1", 0], "captioner": ["1", 1],
            "refiner": ["1", 2], "caption": "", "scale": "4", "seed": 0, "sampler": "faithful", "steps": 0,
            "tile_size": 224, "tile_overlap": 32, "window_size": 512, "window_overlap": 16, "caption_per": "scene",
            "bands": "", "stretch": "auto", "percentiles": "", "cog": False, "preset": "paper", "refine_steps": 50,
            "positive_prompt": SEED_POSITIVE_PROMPT, "negative_prompt": SEED_NEGATIVE_PROMPT, "min_size": 1024}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    scene_pos = {"1": col(0), "2": col(1), "3": col(2)}
    # Below the frontend's toolbar (TOP), one column per large node, room for what each node shows after a run
    # (image previews, the caption / report text): the browser test checks nothing overlaps after a run.
    full_pos = {"1": col(0), "2": col(0, 1), "3": col(0, 2), "4": col(1), "7": col(1, 1), "5": col(2), "6": col(3),
                "8": col(2, 1)}  # the final image under the caption: in view, clear of the queue panel
    s1_pos = {"1": col(0), "2": col(0, 1), "3": col(1), "4": col(2)}
    hw_pos = {"1": col(0), "2": col(0, 1), "3": col(1), "4": col(1, 1), "5": col(2), "6": col(3)}
    unc_pos = {"1": col(0), "2": col(0, 1), "3": col(0, 2), "4": col(1), "5": col(2), "6": col(3), "7": col(4),
               "8": col(5), "9": col(5, 1)}
    native_pos = {"1": col(0), "2": col(0, 1), "3": col(0, 2), "4": col(1, 1), "5": col(1), "6": col(2),
                  "8": col(2, 1), "7": col(3), "9": col(4)}
    core_supir_pos = {"1": col(0), "2": col(0, 1), "3": col(0, 2), "4": col(1, 1), "5": col(1), "6": col(2),
                      "8": col(2, 1), "7": col(3), "9": col(4)}
    return {"rsvl_native_comfy_models": (native, native_pos), "rsvl_core_supir": (core_supir, core_supir_pos),
            "rsvl_full_two_stage": (full, full_pos), "rsvl_stage1_only": (stage1_only, s1_pos),
            "rsvl_refine_handwritten_caption": (handwritten, hw_pos), "rsvl_uncertainty_guard": (uncertainty, unc_pos),
            "rsvl_geotiff_scene": (geotiff_scene, geotiff_pos), "rsvl_upscale_scene": (upscale_scene, scene_pos)}


TOP = 210          # canvas y of the first row: titles clear the tab bar, the workflow name and the Run bar
COLUMN = 480       # node width 400 + a gap for the links
LEFT = 160         # canvas x of the first column: clear of the sidebar at the saved zoom
ROWS = (0, 700, 1060)  # y offsets in a column: below LoadImage or Stage 1 (with their previews), then below the loader
# Node sizes as the frontend grows them when a run adds previews and text (the browser test measures them).
SIZES = {"LoadImage": (400, 500), "LoadRSVLModels": (400, 300), "DynamicStepScheduler": (400, 240),
         "Stage1FidelitySR": (400, 580), "LlavaRSCaption": (400, 480), "ControlNetRefine": (400, 860),
         "SaveImage": (400, 520), "PrimitiveStringMultiline": (400, 200), "CheckpointLoaderSimple": (400, 160),
         "UpscaleModelLoader": (400, 100), "ModelPatchLoader": (400, 100), "PreviewAny": (400, 300),
         "RepeatImageBatch": (400, 120), "RSVLUncertainty": (400, 420), "RSVLLoadScene": (400, 300),
         "RSVLSaveGeoTIFF": (400, 260), "RSVLUpscaleScene": (400, 1000)}
ZOOM = 0.6


def col(index: int, row: int = 0) -> tuple[int, int]:
    return LEFT + index * COLUMN, TOP + ROWS[row]


def api_to_ui(api: dict, positions: dict, info: dict) -> dict:
    """The UI-format (litegraph) workflow the frontend would save for this API graph."""
    links, nodes = [], []
    outgoing: dict[tuple[str, int], list[int]] = {}
    for node_id, node in api.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), value[1], int(node_id), name,
                              info[api[value[0]]["class_type"]]["output"][value[1]]])
                outgoing.setdefault((value[0], value[1]), []).append(link_id)
    for order, (node_id, node) in enumerate(api.items()):
        kind = node["class_type"]
        node_info = info[kind]
        widgets = {name: options for name, options, _ in widget_names(node_info)}
        declared = {**node_info["input"]["required"], **node_info["input"].get("optional", {})}
        inputs, values = [], []
        for name, spec_ in declared.items():
            value = node["inputs"].get(name)
            link = next((k for k in links if k[3] == int(node_id) and k[4] == name), None)
            socket_type = "COMBO" if isinstance(spec_[0], list) else spec_[0]
            if name not in widgets:
                inputs.append({"name": name, "type": socket_type, "link": link[0] if link else None})
            elif link:
                inputs.append({"name": name, "type": socket_type, "widget": {"name": name}, "link": link[0]})
        for name, options, _ in widget_names(node_info):
            value = node["inputs"].get(name)
            if isinstance(value, list) or value is None:
                value = options.get("default", "")
            values.append(value)
            if options.get("control_after_generate"):
                values.append("fixed")
            if options.get("image_upload"):
                values.append("image")
        for i, _ in enumerate(inputs):
            inputs[i]["localized_name"] = inputs[i]["name"]
        outputs = []
        names = node_info.get("output_name", node_info["output"])
        for slot, out_type in enumerate(node_info["output"]):
            outputs.append({"name": names[slot], "type": out_type, "links": outgoing.get((node_id, slot), []),
                            "slot_index": slot})
        # link entries store the target slot index, not the input name
        nodes.append({"id": int(node_id), "type": kind, "pos": list(positions[node_id]),
                      "size": list(SIZES[kind]), "flags": {}, "order": order, "mode": 0,
                      "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": kind},
                      "widgets_values": values})
    by_id = {n["id"]: n for n in nodes}
    for link in links:
        target = by_id[link[3]]
        link[4] = next(i for i, slot in enumerate(target["inputs"]) if slot["name"] == link[4])
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(api, sort_keys=True))), "revision": 0,
            "last_node_id": max(by_id), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": ZOOM, "offset": [0, 0]}}, "version": 0.4}


# What each template does, shown in a note on its canvas (the frontend lists a pack's templates by file name
# only), with where its weights go: a shipped name that is not on disk is answered by ComfyUI with a bare
# "Value not in list".
PURPOSES = {
    "rsvl_native_comfy_models": "ComfyUI-native: your SDXL from core **Load Checkpoint** and an upscale model from "
                                "core **Load Upscale Model** → stage 1 (one pass of that model) → caption → SUPIR "
                                "refine over the checkpoint's MODEL/CLIP/VAE: one SDXL in memory.",
    "rsvl_core_supir": "**Needs ComfyUI ≥ 0.20** (core SUPIR: on older ComfyUI, Load Model Patch cannot read a "
                       "SUPIR file and the run stops there). Your SDXL from core **Load Checkpoint** and SUPIR "
                       "from core **Load Model Patch** (the same files core's SUPIR Apply uses) → SR3 stage 1 → "
                       "caption → SUPIR refine: SDXL and SUPIR are loaded once, by ComfyUI.",
    "rsvl_full_two_stage": "The paper's pipeline: SR3 stage 1 (no text, no guidance: it cannot invent objects) → "
                           "LLaVA caption → SUPIR/SDXL refine guided by the caption, colour-fixed against stage 1; "
                           "the scheduler sets steps and the step cache.",
    "rsvl_stage1_only": "SR3 stage 1 alone: 2×/4×/8× super-resolution from the low-resolution image, with no text "
                        "and no guidance.",
    "rsvl_refine_handwritten_caption": "Stage 1, then the SUPIR/SDXL refiner guided by a caption you write in the "
                                       "text node (no captioner needed).",
    "rsvl_geotiff_scene": "A GeoTIFF in, a GeoTIFF out: **RSVL Load Scene** reads a raster from ComfyUI's input "
                          "folder as `rsvl upscale` does (bands, stretch, nodata) → SR3 stage 1 → caption → SUPIR "
                          "refine → **RSVL Save GeoTIFF** writes it back in the same place (CRS, finer grid, "
                          "nodata) in the output folder.",
    "rsvl_upscale_scene": "A scene too large for an IMAGE (e.g. 20000 × 20000): **RSVL Upscale Scene** reads it "
                          "from ComfyUI's input folder window by window → SR3 stage 1 → caption (one overview) → "
                          "SUPIR refine → a GeoTIFF in output/rsvl_scenes, exactly as `rsvl upscale --window-size`. "
                          "Cancel stops between windows; queue again to finish (a finished output is kept).",
    "rsvl_uncertainty_guard": "N refined samples of one scene → a per-pixel spread map (where the model invented "
                              "detail) and a guarded image that falls back to stage 1 there.",
}
# model folder of each weights input of the templates (ComfyUI/models/...)
WEIGHT_FOLDERS = {
    ("LoadRSVLModels", "sr3_model"): "`rsvl/sr3/` (SR3 generator)",
    ("LoadRSVLModels", "llava_model"): "`rsvl/llava/<model folder>/` (LLaVA-NeXT, Hugging Face layout)",
    ("LoadRSVLModels", "sdxl_checkpoint"): "`checkpoints/` (SDXL base, single file)",
    ("LoadRSVLModels", "supir_model"): "`rsvl/supir/` or `model_patches/` (SUPIR v0Q/v0F)",
    ("CheckpointLoaderSimple", "ckpt_name"): "`checkpoints/` (SDXL base, single file)",
    ("UpscaleModelLoader", "model_name"): "`upscale_models/` (e.g. a 4x ESRGAN)",
    ("ModelPatchLoader", "name"): "`model_patches/` (SUPIR v0Q/v0F)",
}
NOTE_SIZE = (400, 330)


def template_note(name: str, api: dict) -> str:
    """The note text of template `name`: what it does, and the folders its weights go in."""
    folders = []
    for node in api.values():
        for (kind, field), folder in WEIGHT_FOLDERS.items():
            if node["class_type"] == kind and node["inputs"].get(field, "none") != "none" and folder not in folders:
                folders.append(folder)
    return (f"## rsvl: {name}\n\n{PURPOSES[name]}\n\n**Weights** (pick your files in the loaders), in "
            "`ComfyUI/models/`:\n\n" + "".join(f"- {folder}\n" for folder in folders)
            + "\nA file name shown on a loader but not on disk makes ComfyUI answer *Value not in list*. "
            "Details: the pack's README, section *ComfyUI → Where the weights go*.")


def add_note(ui: dict, text: str) -> None:
    """A MarkdownNote (frontend-only: not queued) in the first free place of rows 1 and 2, from the last column
    leftwards (in view at the saved zoom), else right of the graph."""
    columns = sorted({n["pos"][0] for n in ui["nodes"]}, reverse=True)
    places = [(x, TOP + ROWS[row]) for x in columns for row in (1, 2)] + [(columns[0] + COLUMN, TOP)]

    def free(x: float, y: float) -> bool:
        return all(x + NOTE_SIZE[0] <= n["pos"][0] or n["pos"][0] + n["size"][0] <= x
                   or y + NOTE_SIZE[1] + 40 <= n["pos"][1] or n["pos"][1] + n["size"][1] + 40 <= y
                   for n in ui["nodes"])

    x, y = next(place for place in places if free(*place))
    note_id = ui["last_node_id"] + 1
    ui["nodes"].append({"id": note_id, "type": "MarkdownNote", "pos": [x, y], "size": list(NOTE_SIZE),
                        "flags": {}, "order": len(ui["nodes"]), "mode": 0, "inputs": [], "outputs": [],
                        "properties": {}, "widgets_values": [text], "color": "#432", "bgcolor": "#653"})
    ui["last_node_id"] = note_id


def thumbnail(ui: dict, path: Path) -> None:
    """A small diagram of the graph (boxes and links), drawn with PIL, with the sample image in the loader box."""
    scale = 0.22
    width = int(max(n["pos"][0] + n["size"][0] for n in ui["nodes"]) * scale) + 30
    height = int(max(n["pos"][1] + n["size"][1] for n in ui["nodes"]) * scale) + 30
    canvas = Image.new("RGB", (max(width, 320), max(height, 180)), (32, 34, 38))
    draw = ImageDraw.Draw(canvas)
    boxes = {}
    for n in ui["nodes"]:
        x, y = n["pos"][0] * scale + 10, n["pos"][1] * scale + 10
        box = (x, y, x + n["size"][0] * scale, y + n["size"][1] * scale)
        boxes[n["id"]] = box
        if n["type"] == "MarkdownNote":
            draw.rounded_rectangle(box, 4, fill=(100, 80, 50), outline=(200, 200, 200))
            draw.text((box[0] + 3, box[1] + 2), "Note", fill=(240, 240, 240))
            continue
        ours = n["type"] in ("LoadRSVLModels", "Stage1FidelitySR", "LlavaRSCaption", "ControlNetRefine",
                             "DynamicStepScheduler", "RSVLUncertainty", "RSVLLoadScene", "RSVLSaveGeoTIFF",
                             "RSVLUpscaleScene")
        draw.rounded_rectangle(box, 4, fill=(52, 84, 120) if ours else (70, 70, 74), outline=(200, 200, 200))
        draw.text((box[0] + 3, box[1] + 2), n["type"][:18], fill=(240, 240, 240))
    for link in ui["links"]:
        a, b = boxes[link[1]], boxes[link[3]]
        draw.line((a[2], a[1] + 14, b[0], b[1] + 14), fill=(230, 190, 80), width=2)
    sample = Image.open(REPO / "rsvl_core" / "samples" / "osbs_029_lr100.png").convert("RGB")
    first = boxes[ui["nodes"][0]["id"]]
    side = int(min(first[2] - first[0], first[3] - first[1]) - 18)
    canvas.paste(sample.resize((side, side)), (int(first[0]) + 4, int(first[1]) + 14))
    canvas.save(path, quality=85)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        comfy = FakeComfy(Path(scratch))
        try:
            info = comfy.object_info()
        finally:
            comfy.close()
    (WORKFLOWS / "api").mkdir(parents=True, exist_ok=True)
    for name, (api, positions) in spec().items():
        ui = api_to_ui(api, positions, info)
        add_note(ui, template_note(name, api))
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n", encoding="utf-8")
        (WORKFLOWS / "api" / f"{name}.json").write_text(json.dumps(api, indent=1) + "\n", encoding="utf-8")
        thumbnail(ui, WORKFLOWS / f"{name}.jpg")
        print("wrote", name)


if __name__ == "__main__":
    main()
