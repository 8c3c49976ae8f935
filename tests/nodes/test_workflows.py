"""Every shipped workflow against the node definitions; UI and API versions describe the same graph."""

from __future__ import annotations

import json
import os

import pytest
from nodes_testing import WORKFLOWS, check_api_workflow, ui_to_api

NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def test_workflow_set():
    assert {"rsvl_full_two_stage", "rsvl_stage1_only", "rsvl_refine_handwritten_caption"} <= set(NAMES)
    for name in NAMES:
        assert (WORKFLOWS / "api" / f"{name}.json").is_file(), f"no API version of {name}"
        assert (WORKFLOWS / f"{name}.jpg").is_file(), f"no thumbnail for {name}"


@pytest.fixture(scope="module")
def object_info(comfy, tmp_path_factory):
    from build_workflows import MODELS

    # the shipped workflows name the README's file names: give the loader those choices
    fp = comfy.folder_paths
    placed = []  # empty stand-ins in the session's shared models folder: removed after this module
    for key, folder in (("sr3_model", "rsvl_sr3"), ("sdxl_checkpoint", "checkpoints"), ("supir_model", "rsvl_supir")):
        path = fp.get_folder_paths(folder)[0]
        os.makedirs(path, exist_ok=True)
        placed.append(os.path.join(path, MODELS[key]))
        open(placed[-1], "wb").close()
    for key, folder, marker in (("llava_model", "rsvl_llava", "config.json"),
                                ("llava_adapter", "rsvl_llava_adapter", "adapter_config.json")):
        target = tmp_path_factory.mktemp("extra") / MODELS[key]
        target.mkdir()
        (target / marker).write_text("{}")
        fp.add_model_folder_path(folder, str(target.parent))
    yield comfy.object_info()
    for path in placed:
        os.remove(path)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_matches_definitions(name, object_info):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
    assert "nodes" in ui and "links" in ui and "class_type" not in json.dumps(ui)
    assert check_api_workflow(api, object_info) == []
    assert ui_to_api(ui, object_info) == api
    for link in ui["links"]:  # link ids, slots and types agree with both ends
        link_id, source, slot, target, target_slot, kind = link
        source_node = next(n for n in ui["nodes"] if n["id"] == source)
        target_node = next(n for n in ui["nodes"] if n["id"] == target)
        assert link_id in source_node["outputs"][slot]["links"] and source_node["outputs"][slot]["type"] == kind
        assert target_node["inputs"][target_slot]["link"] == link_id


@pytest.mark.parametrize("name", NAMES)
def test_template_note_says_what_it_does_and_where_its_weights_go(name):
    """The frontend lists a pack's templates by file name only: each carries a note on its canvas, and a missing
    weights file (ComfyUI's bare "Value not in list") is explained there, with the README section to read."""
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1, name
    text = notes[0]["widgets_values"][0]
    loaders = {n["class_type"]: n["inputs"] for n in api.values()}
    expected = {"rsvl/sr3/": loaders.get("LoadRSVLModels", {}).get("sr3_model", "none") != "none",
                "rsvl/supir/": loaders.get("LoadRSVLModels", {}).get("supir_model", "none") != "none",
                "upscale_models/": "UpscaleModelLoader" in loaders}
    for folder, needed in expected.items():
        assert (f"`{folder}" in text) == needed, (name, folder, text)
    assert "Value not in list" in text and "Where the weights go" in text
    readme = (WORKFLOWS.parent / "README.md").read_text(encoding="utf-8")
    assert "### Where the weights go" in readme
