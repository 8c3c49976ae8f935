"""Core's captioner driving ours, on ComfyUI 0.20.1 (whose core has TextGenerate): its STRING feeds
ControlNetRefine's caption.

No checkpoint that TextGenerate accepts can be built offline at a test size (its CLIP types have fixed full-size
configs: the smallest, Qwen3 0.6B, is a 1.2 GB file), so the graph with TextGenerate is queued and validated by the
server (types, links, widget values) and stops where the model file would load; the same graph with core's text
node in TextGenerate's place then runs, and the refined image follows the text it is given.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hosts import HOSTS, require
from nodes_testing import WORKFLOWS
from test_comfy_host import start_server
from test_native_host import node_texts, queue, run_prompt, upload_crop

pytestmark = [pytest.mark.slow]
HOST = HOSTS["comfy0201"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require(HOST.missing())
    yield from start_server(tmp_path_factory.mktemp("comfy_textgen"), HOST)


def native_graph(server: dict) -> dict:
    """The shipped native workflow on the test models, the caption node removed (its consumers relinked later)."""
    from native_models import native_workflow_values

    api = json.loads((WORKFLOWS / "api" / "rsvl_native_comfy_models.json").read_text(encoding="utf-8"))
    by_type = {node["class_type"]: node["inputs"] for node in api.values()}
    by_type["LoadImage"]["image"] = "rsvl_native_crop.png"
    for kind, inputs in native_workflow_values(server).items():
        if kind in by_type:
            by_type[kind].update(inputs)
    caption = next(k for k, v in api.items() if v["class_type"] == "LlavaRSCaption")
    del api[caption]
    return api


def relink_caption(api: dict, source: list) -> dict:
    for node in api.values():
        if node["class_type"] == "ControlNetRefine":
            node["inputs"]["caption"] = source
        if node["class_type"] == "PreviewAny":
            node["inputs"]["source"] = source
    return api


def test_model_patch_core_textgenerate_feeds_the_refiner_caption(server):
    """TextGenerate (a Qwen2.5-VL file through CLIPLoader, image = the stage-1 output) -> ControlNetRefine.caption:
    accepted by the server's validation; it stops at CLIPLoader, as the file is not a model."""
    crop = upload_crop(server, "rsvl_native_crop.png", 96, 64)
    encoders = server["root"] / "models" / "text_encoders"
    encoders.mkdir(parents=True, exist_ok=True)
    (encoders / "qwen_2.5_vl_7b_placeholder.safetensors").write_bytes(b"not a model")
    api = native_graph(server)
    stage1 = next(k for k, v in api.items() if v["class_type"] == "Stage1FidelitySR")
    api["20"] = {"class_type": "CLIPLoader",
                 "inputs": {"clip_name": "qwen_2.5_vl_7b_placeholder.safetensors", "type": "qwen_image"}}
    api["21"] = {"class_type": "TextGenerate",
                 "inputs": {"clip": ["20", 0], "prompt": "Describe this aerial image: land use, roads, buildings.",
                            "image": [stage1, 0], "max_length": 64, "sampling_mode": "off"}}
    history, _ = run_prompt(server, relink_caption(api, ["21", 0]), "textgen_graph", [crop], returncode=1)
    entry = history if "status" in history else next(iter(history.values()))
    messages = dict(entry["status"]["messages"])
    assert "execution_start" in messages  # validated and started: the server accepted TextGenerate -> caption
    error = messages["execution_error"]
    assert (error["node_id"], error["node_type"]) == ("20", "CLIPLoader"), error


def test_model_patch_core_text_in_textgenerate_place_drives_the_refiner(server):
    """The same graph with core's text node (a STRING, as TextGenerate gives) in TextGenerate's place: it runs,
    Preview as Text shows that string, and another string gives another refined image (the caption conditions
    the refiner's cross-attention)."""
    crop = upload_crop(server, "rsvl_native_crop.png", 96, 64)
    refined = {}
    for n, text in enumerate(("dense residential blocks with red roofs", "a river through green fields")):
        api = copy.deepcopy(native_graph(server))
        api["21"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": text}}
        history, images = queue(server, relink_caption(api, ["21", 0]), f"text_in_place_{n}", [crop])
        preview = next(k for k, v in api.items() if v["class_type"] == "PreviewAny")
        assert node_texts(history, preview) == [text]
        refined[text] = images["refined"].astype(int)
    first, second = refined.values()
    assert first.shape == second.shape == (128, 192, 3)
    assert np.abs(first - second).mean() > 0.1, "the caption did not change the refined image"
