"""The nodes read the engine's one weights table: their model folders, their choices, and the command line's lookup
agree on what a ComfyUI models folder holds."""

from __future__ import annotations

from pathlib import Path

from rsvl_core.weights.catalogue import find_weights


def test_engine_node_folders_and_choices_follow_the_weights_table(comfy, demo_models):
    models, choices = demo_models
    fp, logic = comfy.folder_paths, comfy.logic
    table = logic.WEIGHTS
    assert logic.FOLDERS == {"sr3": "rsvl_sr3", "captioner": "rsvl_llava", "caption-adapter": "rsvl_llava_adapter",
                            "sdxl": "checkpoints", "supir": "rsvl_supir"}
    for entry in table.values():
        if entry.comfy_folder.startswith("rsvl_"):
            assert fp.get_folder_paths(entry.comfy_folder)[-1] == str(models / "rsvl" / entry.subdir)
    # a sub-folder the table's entry does not accept (no config.json) is no choice
    broken = models / "rsvl" / "llava" / "half_copied"
    broken.mkdir()
    try:
        assert logic.list_model_folders(fp, "rsvl_llava") == ["rsvl_demo_llava"]
        # what the nodes offer is what the command line's lookup finds in the same folder
        root = models / "rsvl"
        node_paths = {
            "sr3": logic.find_stage1_file(fp, choices["sr3_model"]),
            "captioner": logic.find_model_folder(fp, "rsvl_llava", choices["llava_model"]),
            "caption-adapter": logic.find_model_folder(fp, "rsvl_llava_adapter", choices["llava_adapter"]),
            "supir": logic.find_model_file(fp, "rsvl_supir", choices["supir_model"]),
        }
        for item, path in node_paths.items():
            found = find_weights(item, models_dir=root, env={}, cwd=models)
            assert (found.status, found.label, found.path) == ("found", "--models-dir", Path(path)), item
    finally:
        broken.rmdir()
