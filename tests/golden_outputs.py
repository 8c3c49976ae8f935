"""Outputs of `rsvl upscale` and of the three shipped workflows on tiny models, for the unchanged-output test.

`python3 tests/golden_outputs.py` records them into tests/golden/outputs.npz (recorded before the engine
redesign, issue 12; the windowed case re-recorded when window noise became keyed by scene position, issue 13);
`tests/test_outputs_unchanged.py` reruns the same cases and compares. Everything is
seeded: the tiny models (write_demo_models, seed 0), the input crop, the samplers. Images are recorded
rounded to 8 bits (uint8 HWC, as written to PNG), captions as text; the comparison allows another
machine's float32 rounding (see test_outputs_unchanged.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "nodes"))

from rsvl_testing import SAMPLE_IMAGE  # noqa: E402

GOLDEN = HERE / "golden" / "outputs.npz"
FAST_STAGE1 = ["--sampler", "ddim", "--steps", "3"]
FAST_REFINE = ["--refine-steps", "2", "--refine-min-size", "0", "--caption-max-tokens", "6"]
CLI_CASES = {
    "cli_stage1_only": ["--scale", "4", *FAST_STAGE1, "--stage1-only"],
    "cli_full": ["--scale", "2", *FAST_STAGE1, *FAST_REFINE],
    "cli_full_cache_fast": ["--scale", "2", *FAST_STAGE1, *FAST_REFINE, "--refine-steps", "6", "--cache", "fast"],
    "cli_given_caption_windows": ["--scale", "2", *FAST_STAGE1, *FAST_REFINE, "--caption", "a dirt road",
                                  "--window-size", "16", "--window-overlap", "4"],
}
# tiny CPU settings over the shipped workflows (which carry the paper's settings)
WORKFLOW_TINY = {
    "DynamicStepScheduler": {"stage1_sampler": "ddim", "stage1_steps": 2, "refine_steps": 3, "cache_preset": "fast"},
    "Stage1FidelitySR": {"scale": "2", "sampler": "ddim", "steps": 2},
    "LlavaRSCaption": {"max_new_tokens": 4},
    "ControlNetRefine": {"steps": 3, "min_size": 64},
}
WORKFLOWS = ("rsvl_full_two_stage", "rsvl_stage1_only", "rsvl_refine_handwritten_caption")


def small_input(folder: Path) -> Path:
    """A 24x16 crop of the bundled aerial sample (non-square, so a crop or transpose would show)."""
    path = folder / "small.png"
    Image.open(SAMPLE_IMAGE).convert("RGB").crop((10, 20, 34, 36)).save(path)
    return path


def run_cli_cases(root: Path, models: Path) -> dict[str, np.ndarray]:
    """Each CLI case's output image (uint8 HWC) and caption (as a 0-d string array)."""
    from rsvl_core.cli import main

    source, out = small_input(root), {}
    for name, flags in CLI_CASES.items():
        target = root / name
        code = main(["upscale", str(source), "-o", str(target), "--models-dir", str(models), "-q", "--device", "cpu",
                     *flags])
        assert code == 0, name
        written = next(p for p in sorted(target.iterdir()) if p.suffix == ".png")
        out[name] = np.asarray(Image.open(written).convert("RGB"))
        record = json.loads(written.with_suffix(".json").read_text())
        out[name + ".caption"] = np.array(record.get("caption") or "")
    return out


def run_workflow(comfy, api: dict, image: torch.Tensor, choices: dict) -> dict[str, object]:
    """Execute an API-format graph on the ComfyUI stand-in: our nodes for real, LoadImage/SaveImage/primitives
    as ComfyUI defines them. Returns SaveImage outputs by filename prefix (B, H, W, C float)."""
    results: dict[str, tuple] = {}
    saved: dict[str, object] = {}

    def value(node_id: str) -> tuple:
        if node_id in results:
            return results[node_id]
        node = api[node_id]
        inputs = {k: value(v[0])[v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        kind = node["class_type"]
        if kind == "LoadImage":
            out = (image, None)
        elif kind == "PrimitiveStringMultiline":
            out = (inputs["value"],)
        elif kind == "SaveImage":
            images = inputs["images"]  # a list of batches from a list-output node (ControlNetRefine), as ComfyUI
            saved[inputs["filename_prefix"]] = torch.cat(images) if isinstance(images, list) else images  # saves
            out = ()
        else:
            if kind == "LoadRSVLModels":
                inputs.update({k: choices[k] if v != "none" else v for k, v in inputs.items() if k in choices})
            inputs.update(WORKFLOW_TINY.get(kind, {}))
            out = tuple(comfy.node(kind).execute(**inputs).args)
        results[node_id] = out
        return out

    for node_id in api:
        value(node_id)
    return saved


def run_workflow_cases(root: Path) -> dict[str, np.ndarray]:
    from nodes_testing import REPO, FakeComfy, place_demo_models

    models = root / "comfy_models"
    choices = place_demo_models(models)
    comfy = FakeComfy(models, pack_name="rsvl_pack_golden")
    try:
        from rsvl_core.kit.image import read_image

        image = read_image(small_input(root))[0].movedim(1, -1)  # ComfyUI IMAGE (1, H, W, 3)
        out = {}
        for name in WORKFLOWS:
            api = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text(encoding="utf-8"))
            for prefix, images in run_workflow(comfy, api, image, choices).items():
                out[f"{name}:{prefix}"] = (images[0].float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return out
    finally:
        comfy.close()


def run_all(root: Path) -> dict[str, np.ndarray]:
    from rsvl_core.demo import write_demo_models

    models = root / "models"
    write_demo_models(models)
    return {**run_cli_cases(root, models), **run_workflow_cases(root)}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        outputs = run_all(Path(scratch))
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **outputs)
    for key, array in outputs.items():
        print(key, array.shape, array.dtype, repr(array.item())[:60] if array.ndim == 0 else "")
