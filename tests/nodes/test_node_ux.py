"""What a ComfyUI user sees of the nodes, without ComfyUI: error titles, tile rules checked at validation time,
the refine report, the schedule's override, the size guard, the CPU warning, the sample image, display names."""

from __future__ import annotations

import re

import pytest
import torch
from nodes_testing import OUR_NODES, REPO, Interrupted

STAGE1 = "Upscale Aerial/Satellite: SR3 (RSVL stage 1)"


def as_comfy_runs_it(cls, unique_id: str):
    """The class the way ComfyUI 0.8 runs a V3 node: a shallow copy named "...Clone" with hidden inputs set."""
    import types

    clone = type(f"{cls.__name__}Clone", (cls, *cls.__bases__), dict(cls.__dict__))
    clone.hidden = types.SimpleNamespace(unique_id=unique_id)
    return clone


def load(comfy, choices, **overrides):
    inputs = {**choices, "dtype": "auto", "device": "auto", "llava_quantization": "none", **overrides}
    return comfy.node("LoadRSVLModels").execute(**inputs).args


def stage1(comfy, sr3, image, node=None, **overrides):
    inputs = dict(image=image, sr3=sr3, scale="2", sampler="ddim", steps=2, seed=0, tile_size=0, tile_overlap=0)
    return (node or comfy.node("Stage1FidelitySR")).execute(**{**inputs, **overrides})


def test_errors_name_the_node_by_display_name_and_id_not_the_clone_class(comfy, demo_models):
    sr3 = load(comfy, demo_models[1])[0]
    node = as_comfy_runs_it(comfy.node("Stage1FidelitySR"), "4")
    with pytest.raises(comfy.logic.NodeError) as error:
        stage1(comfy, sr3, torch.rand(1, 8, 8, 3), node=node, tile_size=16)
    message = str(error.value)
    assert message.startswith(f"{STAGE1} #4: ") and "Clone" not in message and "got 16" in message
    loader = as_comfy_runs_it(comfy.node("LoadRSVLModels"), "2")
    with pytest.raises(comfy.logic.NodeError, match=r"^RSVL Load Models #2: the refiner needs both"):
        loader.execute(**{**demo_models[1], "supir_model": "none", "dtype": "auto", "device": "auto",
                          "llava_quantization": "none"})


@pytest.mark.parametrize(("tile_size", "tile_overlap"), [(64, 32), (32, 16), (224, 112), (224, 32), (0, 1024)])
def test_tile_settings_that_follow_the_rule_pass_validation_and_run(comfy, demo_models, tile_size, tile_overlap):
    node = comfy.node("Stage1FidelitySR")
    assert node.validate_inputs(tile_size=tile_size, tile_overlap=tile_overlap) is True
    sr3 = load(comfy, demo_models[1])[0]
    up = stage1(comfy, sr3, torch.rand(1, 20, 40, 3), tile_size=tile_size, tile_overlap=tile_overlap).args[0]
    assert up.shape == (1, 40, 80, 3)


@pytest.mark.parametrize(("tile_size", "tile_overlap", "words"), [
    (224, 200, ["tile_overlap 200", "tile_size 224", "at most 112"]),
    (32, 32, ["tile_overlap 32", "tile_size 32", "at most 16"]),
])  # a tile_size under 32 alone is refused as the node runs, in one line (test_bad_settings_are_one_line_errors)
def test_invalid_tiles_are_rejected_at_validation_with_the_typed_values(comfy, tile_size, tile_overlap, words):
    node = as_comfy_runs_it(comfy.node("Stage1FidelitySR"), "7")
    message = node.validate_inputs(tile_size=tile_size, tile_overlap=tile_overlap)
    assert isinstance(message, str) and message.startswith(f"{STAGE1} #7: ")
    for word in words:
        assert word in message, message
    # a linked (not yet known) value is not judged at validation time
    assert node.validate_inputs(tile_size=None, tile_overlap=200) is True


def test_tile_widgets_ranges_and_tooltips_agree_with_the_rule(comfy):
    required = comfy.object_info()["Stage1FidelitySR"]["input"]["required"]
    size, overlap = required["tile_size"][1], required["tile_overlap"][1]
    assert overlap["max"] == size["max"] // 2  # the widest overlap any tile allows
    assert "at least 32" in size["tooltip"] and "half of tile_size" in overlap["tooltip"]
    assert overlap["default"] <= size["default"] // 2


def schedule(comfy, cache_preset="off"):
    return comfy.node("DynamicStepScheduler").execute(
        cache_preset=cache_preset, refine_steps=3, cache_threshold=0.0, stage1_sampler="ddim", stage1_steps=2,
        stage1_cache="off").args[0]


def refine(comfy, refiner, image, **overrides):
    inputs = dict(image=image, refiner=refiner, caption="fields", positive_prompt="sharp", negative_prompt="blurry",
                  steps=3, cfg_scale=7.5, cfg_scale_start=4.0, control_scale=1.0, color_fix="wavelet", seed=0,
                  latent_tile_size=128, min_size=64)
    return comfy.node("ControlNetRefine").execute(**{**inputs, **overrides})


def test_refine_report_with_the_cache_off_says_the_steps_ran(comfy, demo_models):
    refiner = load(comfy, demo_models[1])[2]
    image = torch.rand(1, 32, 48, 3)
    report = refine(comfy, refiner, image).args[1]
    assert "no steps run" not in report and "3 steps" in report and "cache: off: 3/3 steps computed" in report
    scheduled = refine(comfy, refiner, image, steps=50, schedule=schedule(comfy, "off")).args[1]
    assert "cache: off: 3/3 steps computed" in scheduled and "no steps run" not in scheduled
    assert "set by DynamicStepScheduler; this node's steps 50 were not used" in scheduled
    cached = refine(comfy, refiner, image, schedule=schedule(comfy, "fast")).args[1]
    assert "steps computed" in cached and "/3 steps computed" in cached


def test_stage1_shows_what_ran_and_that_the_schedule_replaced_its_widgets(comfy, demo_models):
    sr3 = load(comfy, demo_models[1])[0]
    out = stage1(comfy, sr3, torch.rand(1, 8, 8, 3), sampler="faithful", steps=0, schedule=schedule(comfy))
    text = out.ui.as_dict()["text"][0]
    assert text.startswith("ran: ddim, 2 steps, cache off, no tiling")
    assert "set by DynamicStepScheduler; this node's sampler/steps faithful/default were not used" in text
    plain = stage1(comfy, sr3, torch.rand(1, 8, 8, 3), steps=3, tile_size=32, tile_overlap=16).ui.as_dict()["text"][0]
    assert plain == "ran: ddim, 3 steps, cache off, tiles 32/16 px"


def test_size_guard_refuses_what_cannot_fit_before_loading(comfy, demo_models):
    sr3, _, refiner = load(comfy, demo_models[1])
    comfy.state.free_ram = 2 * 1024 ** 3
    try:
        # 8192x8192 at 8x: the float32 output alone, 65536x65536 RGB, is 48 GiB (the part of the stage run's estimate
        # known before any model loads); no array is made here: an expanded (zero-stride) tensor stands in
        big = torch.zeros(1, 1, 1, 3).expand(1, 8192, 8192, 3)
        with pytest.raises(comfy.logic.NodeError) as error:
            stage1(comfy, sr3, big, scale="8", tile_size=224, tile_overlap=32)
        message = str(error.value)
        assert message.startswith(f"{STAGE1}: stage 1 (1x 8192x8192 -> x8) needs about 48.0 GiB of memory, "
                                  "2.0 GiB free: ") and "smaller scale" in message and "\n" not in message
        assert "tiles on" not in message  # tiles are on (224): no advice to turn them on
        with pytest.raises(comfy.logic.NodeError, match=r"use a smaller scale, turn tiles on \(tile_size > 0\), crop .*"
                                                         r"processes them in windows\)$"):
            stage1(comfy, sr3, big, scale="8")  # tile_size 0
        assert sr3.model is None  # refused before the model loaded
        with pytest.raises(comfy.logic.NodeError,
                           match=r"Super Resolution Refine: SUPIR \(RSVL stage 2\): .*needs about .* GiB"):
            refine(comfy, refiner, torch.zeros(1, 1, 1, 3).expand(1, 4096, 4096, 3), min_size=8192)
        assert refiner.model is None
    finally:
        comfy.state.free_ram = 64 * 1024 ** 3
    assert stage1(comfy, sr3, torch.rand(1, 8, 8, 3)).args[0].shape == (1, 16, 16, 3)  # small images still run


def test_cpu_warning_for_a_long_stage1_run(comfy, demo_models, monkeypatch, caplog):
    logic = comfy.logic
    assert logic.cpu_time_warning("N", 30.0, 500, 0.06) is None
    line = logic.cpu_time_warning("RSVL Stage 1 #4", 2700.0, 500, 5.4)
    assert line == ("RSVL Stage 1 #4: running on the CPU: 500 steps at ~5.4 s/step, about 45 min left; for a quick "
                    "result connect a DynamicStepScheduler with ddim/dpmpp and fewer steps, or use a GPU")
    sr3 = load(comfy, demo_models[1])[0]
    monkeypatch.setattr(comfy.settings, "CPU_WARN_SECONDS", 0.0)  # the tiny model is fast: any estimate is "long" now
    with caplog.at_level("WARNING", logger="rsvl"):
        out = stage1(comfy, sr3, torch.rand(1, 8, 8, 3), steps=5)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{STAGE1}: running on the CPU: 5 steps at ~")
    assert warnings[0] in out.ui.as_dict()["text"][0]


def test_cpu_estimate_on_the_node_is_replaced_when_the_run_ends_or_is_cancelled(comfy, demo_models, monkeypatch):
    """The frontend keeps the last progress text on a node: after the estimate, the run's end is sent too."""
    host = comfy.host.HOST
    sent: list[str] = []
    monkeypatch.setattr(host, "send_text", lambda node_id, text: sent.append(text), raising=False)
    monkeypatch.setattr(comfy.settings, "CPU_WARN_SECONDS", 0.0)
    sr3 = load(comfy, demo_models[1])[0]
    node = as_comfy_runs_it(comfy.node("Stage1FidelitySR"), "4")
    stage1(comfy, sr3, torch.rand(1, 8, 8, 3), node, steps=5)
    assert len(sent) == 2 and sent[0].startswith(f"{STAGE1} #4: running on the CPU: 5 steps"), sent
    assert sent[1].startswith(f"{STAGE1} #4: finished in "), sent
    sent.clear()
    comfy.state.updates.clear()
    comfy.state.interrupt_after = 2
    try:
        with pytest.raises(Interrupted):
            stage1(comfy, sr3, torch.rand(1, 8, 8, 3), node, steps=20)
    finally:
        comfy.state.interrupt_after = None
    assert "running on the CPU: 20 steps" in sent[0], sent
    assert "stopped (cancelled or failed) after" in sent[-1] and "left" not in sent[-1], sent


def test_sample_image_reaches_the_input_folder_without_overwriting(comfy, tmp_path):
    from PIL import Image

    logic = comfy.logic
    target = tmp_path / "input" / logic.SAMPLE_NAME
    assert logic.provide_sample(str(tmp_path / "input")) is True
    assert Image.open(target).size == Image.open(logic.SAMPLE_SOURCE).size
    target.write_bytes(b"the user's own file")
    assert logic.provide_sample(str(tmp_path / "input")) is False
    assert target.read_bytes() == b"the user's own file"
    # importing the pack (what ComfyUI does at start) put the sample into ComfyUI's input folder
    assert (REPO / "workflows").is_dir()
    loaded = comfy.folder_paths.get_input_directory()
    assert Image.open(f"{loaded}/{logic.SAMPLE_NAME}").size == Image.open(logic.SAMPLE_SOURCE).size


def test_display_names_and_search_words(comfy):
    """Each word users type is found by ComfyUI 0.8's frontend, which searches ids and display names only and
    finds a word only near the start (fuzzy: threshold 0.3, distance 100, so within about 30 characters); the
    newer frontends' aliases are in the node info too."""
    info = comfy.object_info()
    names = {node: info[node]["display_name"] for node in OUR_NODES}
    assert all("RSVL" in name for name in names.values()), names
    words = {"upscale": "Stage1FidelitySR", "sr3": "Stage1FidelitySR", "aerial": "Stage1FidelitySR",
             "satellite": "Stage1FidelitySR", "super resolution": "ControlNetRefine", "supir": "ControlNetRefine",
             "caption": "LlavaRSCaption", "remote sensing": "LlavaRSCaption", "uncertainty": "RSVLUncertainty"}
    for query, node in words.items():
        name = names[node].lower()
        starts = [name.find(word) for word in query.split()]
        assert all(0 <= start <= 26 for start in starts), (query, names[node], starts)
    aliases = comfy.schema.SEARCH_ALIASES
    assert all("rsvl" in aliases[node] for node in OUR_NODES)
    for query, node in words.items():
        assert query in aliases[node] or query in names[node].lower(), (query, node)


def test_tile_check_at_queue_time_answers_only_problems_of_the_pair(comfy):
    """ComfyUI lists a validate_inputs answer under every input it names: only the pair's own problem is
    answered there; one input's problems are said once, by the node as it starts."""
    problem = comfy.logic.stage1_settings_problem
    assert problem(224, 200) == "stage-1 tile_overlap 200 is more than half of tile_size 224: use at most 112 " \
        "(or tile_size 0 = no tiling)"
    assert problem(-8, 32) is None and problem(64, -8) is None  # one value below zero: the node, as it starts
    assert problem(16, 0) is None  # tile_size alone: the node refuses it when it runs (test_bad_settings...)
    assert problem(64, 32) is None and problem(0, 500) is None and problem(None, 32) is None


def test_step_previews_follow_comfyuis_preview_method(comfy, demo_models, monkeypatch):
    """As core's samplers: no preview images when the preview method is "none" (ComfyUI 0.8's default), so the
    frontend has nothing to grow the node for; previews with any other method."""
    sr3 = load(comfy, demo_models[1])[0]
    args = comfy.modules["comfy.cli_args"].args
    for method, shown in (("none", False), ("auto", True)):
        monkeypatch.setattr(args, "preview_method", method)
        comfy.state.updates.clear()
        stage1(comfy, sr3, torch.rand(1, 8, 8, 3), steps=3)
        previews = [u for u in comfy.state.updates if u[2] is not None]
        assert len(comfy.state.updates) == 3 and bool(previews) == shown, (method, comfy.state.updates)


def test_frontend_extension_imports_only_the_public_api():
    """The extension imports the frontend's `app` only (newer frontends flag other `scripts/*` modules, e.g.
    widgets.js, as internal), and makes its text box with the node's own addDOMWidget under its own widget type
    (a core type such as customtext is redrawn by Nodes 2.0 with a text area that does not see our value)."""
    source = (REPO / "web" / "rsvl_nodes.js").read_text(encoding="utf-8")
    imports = re.findall(r"^import .* from \"([^\"]+)\";$", source, flags=re.MULTILINE)
    assert imports == ["../../scripts/app.js"], imports
    assert "addDOMWidget(TEXT_WIDGET, TEXT_TYPE," in source and 'const TEXT_TYPE = "rsvl_text";' in source
    assert ".link " not in source and ".link)" not in source  # connectivity through node.isInputConnected
