"""The nodes' logic without ComfyUI: the five nodes run on the tiny demo models through the ComfyUI stand-in."""

from __future__ import annotations

import pytest
import torch
from nodes_testing import OUR_NODES, REPO, Interrupted


def load(comfy, choices, **overrides):
    inputs = {**choices, "dtype": "auto", "device": "auto", "llava_quantization": "none", **overrides}
    return comfy.node("LoadRSVLModels").execute(**inputs).args


def test_one_registration_form_and_schemas(comfy):
    for path in [REPO / "__init__.py", *(REPO / "nodes").glob("*.py")]:
        assert "NODE_CLASS_MAPPINGS" not in path.read_text(encoding="utf-8"), path
    info = comfy.object_info()
    assert set(OUR_NODES) <= set(info)
    assert [cls.define_schema().node_id for cls in comfy.nodes.NODE_CLASSES] == list(comfy.pack.nodes.NODE_IDS)
    for node_id in OUR_NODES:
        assert info[node_id]["category"] == "RSVL"
        for section in ("required", "optional"):
            for name, (kind, options) in info[node_id]["input"][section].items():
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
                if kind in ("INT", "FLOAT"):
                    assert {"min", "max", "step", "default"} <= set(options), f"{node_id}.{name}"
                    assert options["min"] <= options["default"] <= options["max"]


def test_model_folders_registered_after_user_entries(comfy):
    fp = comfy.folder_paths
    for name in ("rsvl_sr3", "rsvl_llava", "rsvl_llava_adapter", "rsvl_supir"):
        assert fp.get_folder_paths(name)[-1].startswith(fp.models_dir)
    fp.add_model_folder_path("rsvl_sr3", "/elsewhere/sr3")  # an extra_model_paths.yaml entry survives a re-register
    comfy.logic.register_model_folders(fp)
    assert "/elsewhere/sr3" in fp.get_folder_paths("rsvl_sr3")
    assert ".pth" in fp.folder_names_and_paths["rsvl_sr3"][1]


def test_loader_is_lazy_and_none_is_a_clear_error(comfy, demo_models):
    _, choices = demo_models
    sr3, captioner, refiner = load(comfy, choices, llava_model="none", llava_adapter="none")
    assert sr3.model is None and refiner.model is None and not captioner.chosen
    with pytest.raises(comfy.logic.NodeError, match="no captioner model chosen"):
        comfy.node("LlavaRSCaption").execute(image=torch.rand(1, 8, 8, 3), captioner=captioner, prompt="x",
                                             max_new_tokens=2, temperature=0.2, seed=0)
    with pytest.raises(comfy.logic.NodeError, match="RSVL Load Models: .*needs both"):
        load(comfy, choices, supir_model="none")
    with pytest.raises(comfy.logic.NodeError, match="not found"):
        load(comfy, choices, sr3_model="missing.pth")


@pytest.mark.parametrize(("tile_size", "tile_overlap", "words"), [
    (16, 0, "tile_size must be 0 (no tiling) or >= 32, got 16"), (-8, 0, "got -8"), (64, -8, "got -8")])
def test_bad_settings_are_one_line_errors(comfy, demo_models, tile_size, tile_overlap, words):
    sr3 = load(comfy, demo_models[1])[0]
    with pytest.raises(comfy.logic.NodeError) as error:
        comfy.node("Stage1FidelitySR").execute(image=torch.rand(1, 8, 8, 3), sr3=sr3, scale="2", sampler="ddim",
                                               steps=2, seed=0, tile_size=tile_size, tile_overlap=tile_overlap)
    assert str(error.value).startswith("Upscale Aerial/Satellite: SR3 (RSVL stage 1): stage-1 tile_") \
        and words in str(error.value) and "\n" not in str(error.value)
    assert sr3.model is None  # settings are checked before anything loads


def test_two_stage_graph_progress_previews_and_host_memory(comfy, demo_models):
    state = comfy.state
    schedule = comfy.node("DynamicStepScheduler").execute(
        cache_preset="fast", refine_steps=3, cache_threshold=0.0, stage1_sampler="ddim", stage1_steps=2,
        stage1_cache="off").args[0]
    sr3, captioner, refiner = load(comfy, demo_models[1])
    image = torch.rand(2, 16, 24, 3)
    state.updates.clear()
    up = comfy.node("Stage1FidelitySR").execute(image=image, sr3=sr3, scale="2", sampler="faithful", steps=500,
                                                seed=0, tile_size=224, tile_overlap=32, schedule=schedule).args[0]
    assert up.shape == (2, 32, 48, 3) and up.device.type == "cpu" and 0 <= up.min() and up.max() <= 1
    # the schedule's 2 ddim steps, not the node's 500, for each image (seed + k each) on one bar of 4
    assert [u[:2] for u in state.updates] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    kind, preview, size = state.updates[-1][2]
    assert kind == "JPEG" and preview.size == (48, 32) and size == 512
    assert state.loads[-1][0].model.unet is sr3.model.modules()["unet"] and state.loads[-1][2] is True

    caption = comfy.node("LlavaRSCaption").execute(image=up, captioner=captioner, prompt="<image> describe",
                                                   max_new_tokens=4, temperature=0.2, seed=0)
    captions = caption.args[0]  # a list: one caption per image
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    assert caption.ui.as_dict() == {"text": (f"image 1: {captions[0]}\nimage 2: {captions[1]}",)}

    state.updates.clear()
    refined = comfy.node("ControlNetRefine").execute(
        image=up, refiner=refiner, caption=captions, positive_prompt="sharp", negative_prompt="blurry", steps=50,
        cfg_scale=7.5, cfg_scale_start=4.0, control_scale=1.0, color_fix="wavelet", seed=0, latent_tile_size=128,
        min_size=64, schedule=schedule)
    (out,), report = refined.args  # the image output is a list of batches, one per input batch
    assert out.shape == up.shape and 0 <= out.min() and out.max() <= 1
    assert "image 2:" in report and "steps computed" in report and refined.ui.as_dict()["text"] == (report,)
    # both images on one bar of 2 x 3 steps, each step's latent preview turned to RGB by the engine's map
    steps = [u[:2] for u in state.updates]
    assert {total for _, total in steps} == {6} and steps == sorted(steps) and steps[-1] == (6, 6)
    assert {1, 2, 3} <= {step for step, _ in steps} and {4, 5, 6} <= {step for step, _ in steps}
    latent_previews = [u for u in state.updates if u[2] is not None]
    assert latent_previews and all(u[2][1].mode == "RGB" for u in latent_previews)
    assert sr3.load_count == refiner.load_count == captioner.load_count == 1


def test_cancel_stops_within_one_step(comfy, demo_models):
    sr3 = load(comfy, demo_models[1])[0]
    state = comfy.state
    state.updates.clear()
    state.interrupt_after = 1
    try:
        with pytest.raises(Interrupted):  # not turned into a NodeError: ComfyUI must see its own exception
            comfy.node("Stage1FidelitySR").execute(image=torch.rand(1, 8, 8, 3), sr3=sr3, scale="2",
                                                   sampler="ddim", steps=20, seed=0, tile_size=0, tile_overlap=0)
    finally:
        state.interrupt_after = None
    assert len(state.updates) == 1


def test_image_layout_and_latent_preview(comfy):
    logic = comfy.logic
    image = torch.rand(2, 5, 7, 4)
    bchw = logic.to_bchw(image)
    assert bchw.shape == (2, 3, 5, 7) and torch.equal(logic.to_bhwc(bchw, torch.device("cpu")), image[..., :3])
    assert logic.to_bchw(torch.rand(1, 5, 7, 1)).shape == (1, 3, 5, 7)
    latent = torch.randn(1, 4, 6, 6)
    rgb = torch.einsum("bchw,cd->bdhw", latent, torch.randn(4, 3)).sigmoid()
    fitted = logic.LatentPreview.fit(latent, rgb)(latent)
    assert fitted.shape == (1, 3, 6, 6) and (fitted - rgb).abs().mean() < 0.1
    assert logic.pair_captions([f"a{logic.BATCH_SEPARATOR}b"], 2) == ["a", "b"]
    assert logic.pair_captions(["one"], 3) == ["one"] * 3
    assert logic.pair_captions(["a", "b", "c"], 3) == ["a", "b", "c"]
    with pytest.raises(logic.NodeError, match="caption: 2 captions for 3 images"):
        logic.pair_captions(["a", "b"], 3)


def test_spandrel_upscale_model_as_stage1_in_the_node_pack(comfy, demo_models):
    """A model in ComfyUI's models/upscale_models is a stage-1 choice; x4 gives exactly x2/x4/x8."""
    from rsvl_testing import tiny_esrgan

    folder = comfy.folder_paths.get_folder_paths("upscale_models")[0]
    import os

    os.makedirs(folder, exist_ok=True)
    torch.save(tiny_esrgan(), os.path.join(folder, "4x_tiny_esrgan.pth"))
    choices = comfy.object_info()["LoadRSVLModels"]["input"]["required"]["sr3_model"]
    assert "upscale_models/4x_tiny_esrgan.pth" in str(choices)
    stage1 = load(comfy, demo_models[1], sr3_model="upscale_models/4x_tiny_esrgan.pth")[0]
    image = torch.rand(1, 13, 21, 3)
    for scale in (2, 4, 8):
        up = comfy.node("Stage1FidelitySR").execute(image=image, sr3=stage1, scale=str(scale), sampler="faithful",
                                                    steps=0, seed=0, tile_size=224, tile_overlap=32).args[0]
        assert up.shape == (1, 13 * scale, 21 * scale, 3)
    assert stage1.model.kind == "spandrel" and stage1.load_count == 1


def test_node_defaults_and_ranges_come_from_the_engine_settings(comfy):
    from rsvl_core.pipeline import SETTINGS

    info = comfy.object_info()
    for node_id, name, setting in (("Stage1FidelitySR", "tile_size", "tile_size"),
                                   ("Stage1FidelitySR", "steps", "stage1_steps"),
                                   ("ControlNetRefine", "steps", "refine_steps"),
                                   ("ControlNetRefine", "cfg_scale", "cfg_scale"),
                                   ("ControlNetRefine", "min_size", "min_size"),
                                   ("LlavaRSCaption", "max_new_tokens", "caption_max_tokens"),
                                   ("DynamicStepScheduler", "cache_threshold", "cache_threshold")):
        _, options = info[node_id]["input"]["required"][name]
        spec = SETTINGS[setting]
        assert (options["default"], options["min"], options["max"]) == (spec.default, spec.min, spec.max), name


def test_engine_every_setting_is_reachable_from_the_nodes(comfy):
    from test_engine_settings import EXPECTED, NEEDS, PROBES

    from rsvl_core.pipeline import SETTINGS, RunConfig

    carried = {setting: (node, name) for node, inputs in comfy.logic.NODE_SETTINGS.items()
               for name, setting in inputs.items()}
    assert set(carried) | set(comfy.logic.CLI_ONLY_SETTINGS) == set(SETTINGS)  # a node input, or a said reason
    assert not set(carried) & set(comfy.logic.CLI_ONLY_SETTINGS)
    info = comfy.object_info()
    for setting, (node, name) in carried.items():
        inputs = {**info[node]["input"]["required"], **info[node]["input"].get("optional", {})}
        assert name in inputs, f"{node} has no input {name} for {setting}"
        value, read = PROBES[setting]
        widget = str(value) if isinstance(inputs[name][0], list) else value  # a COMBO gives text
        values = comfy.logic.setting_values(node, {name: widget})
        config = RunConfig.from_values(**values, **NEEDS.get(setting, {}))
        assert read(config) == EXPECTED.get(setting, value), setting


def test_stage1_batch_image_k_is_a_one_image_run_with_seed_plus_k(comfy, demo_models):
    """As ControlNetRefine and the CLI's uncertainty samples (pipeline.run: sample k uses seed + k): a batch of
    copies of one image gives N different samples, each equal to a one-image run with its seed."""
    sr3 = load(comfy, demo_models[1])[0]
    image = torch.rand(1, 12, 12, 3, generator=torch.Generator().manual_seed(3))

    def run(pixels, seed):
        return comfy.node("Stage1FidelitySR").execute(image=pixels, sr3=sr3, scale="2", sampler="ddim", steps=3,
                                                      seed=seed, tile_size=0, tile_overlap=0).args[0]

    batch = run(image.repeat(3, 1, 1, 1), 7)
    singles = [run(image, 7 + k)[0] for k in range(3)]
    assert batch.shape == (3, 24, 24, 3)
    for k in range(3):  # a batch of 3 and a batch of 1 may take other kernel paths: float32 rounding apart
        assert (batch[k] - singles[k]).abs().max() <= 1e-5, k
    assert (batch[0] - batch[1]).abs().max() > 1e-3  # different noise: N samples, not N copies
