"""ComfyUI-native inputs without ComfyUI (the stand-in): core's UPSCALE_MODEL as stage 1."""

from __future__ import annotations

import pytest
import spandrel
import torch

STAGE1 = dict(scale="4", sampler="faithful", steps=500, seed=0, tile_size=224, tile_overlap=32)


@pytest.fixture(scope="module")
def upscale_model():
    """What core's Load Upscale Model outputs: a spandrel descriptor in eval mode (tiny ESRGAN x4)."""
    from rsvl_testing import tiny_esrgan

    return spandrel.ModelLoader().load_from_state_dict(tiny_esrgan()).eval()


def test_native_stage1_upscale_model_runs_one_pass_and_says_so(comfy, upscale_model):
    image = torch.rand(2, 16, 24, 3)
    comfy.state.loads.clear()
    out = comfy.node("Stage1FidelitySR").execute(image=image, upscale_model=upscale_model, **STAGE1)
    with torch.inference_mode():
        expected = upscale_model(image.movedim(-1, 1).contiguous()).clamp(0, 1).movedim(1, -1)
    assert out.args[0].shape == (2, 64, 96, 3)
    assert torch.equal(out.args[0], expected)  # one tile: the model's own output, untouched
    text = out.ui.value
    assert text.startswith("ran: ESRGAN x4 upscale model, one pass, 1 tile of up to 512 input px")
    assert "500" not in text and "faithful" not in text and "not used by a one-pass model" in text
    # registered with the memory manager (a patcher over the descriptor's network), with room for the run
    patcher, memory, _ = comfy.state.loads[-1]
    assert patcher.model.model is upscale_model.model and memory > 512 * 512 * 3 * 4
    comfy.node("Stage1FidelitySR").execute(image=image, upscale_model=upscale_model, **STAGE1)
    assert comfy.state.loads[-1][0] is patcher  # one patcher per loaded model, reused


def test_native_stage1_upscale_model_resampled_scale_and_seed_free(comfy, upscale_model):
    image = torch.rand(1, 16, 24, 3)
    node = comfy.node("Stage1FidelitySR")
    a = node.execute(image=image, upscale_model=upscale_model, **{**STAGE1, "scale": "2"})
    b = node.execute(image=image, upscale_model=upscale_model, **{**STAGE1, "scale": "2", "seed": 7,
                                                                  "sampler": "ddim", "steps": 3})
    assert a.args[0].shape == (1, 32, 48, 3) and torch.equal(a.args[0], b.args[0])
    assert "resampled to x2" in a.ui.value


def test_native_stage1_needs_exactly_one_model(comfy, upscale_model, demo_models):
    node = comfy.node("Stage1FidelitySR")
    with pytest.raises(comfy.logic.NodeError, match="connect either sr3 .* or upscale_model .*none is connected"):
        node.execute(image=torch.rand(1, 8, 8, 3), **STAGE1)
    sr3 = comfy.node("LoadRSVLModels").execute(**demo_models[1], dtype="auto", device="auto",
                                               llava_quantization="none").args[0]
    with pytest.raises(comfy.logic.NodeError, match="not both"):
        node.execute(image=torch.rand(1, 8, 8, 3), sr3=sr3, upscale_model=upscale_model, **STAGE1)
    with pytest.raises(comfy.logic.NodeError, match="expected the UPSCALE_MODEL of core's Load Upscale Model"):
        node.execute(image=torch.rand(1, 8, 8, 3), upscale_model=object(), **STAGE1)


@pytest.mark.slow
def test_native_captions_pair_with_images_in_order(comfy, demo_models, monkeypatch):
    """ControlNetRefine (is_input_list): a list of 3 captions meets one batch of 3 images, caption i on image i;
    the image output is a list of batches like the input's."""
    refiner = comfy.node("LoadRSVLModels").execute(**demo_models[1], dtype="auto", device="auto",
                                                   llava_quantization="none").args[2]
    seen = []
    real = comfy.nodes.refine_image

    def spy(model, image, caption, *args, **kwargs):
        seen.append((caption, float(image.mean())))
        return real(model, image, caption, *args, **kwargs)

    monkeypatch.setattr(comfy.nodes, "refine_image", spy)
    images = torch.stack([torch.full((16, 24, 3), v) for v in (0.2, 0.5, 0.8)])
    widgets = dict(positive_prompt=["sharp"], negative_prompt=["blurry"], steps=[2], cfg_scale=[4.0],
                   cfg_scale_start=[4.0], control_scale=[1.0], color_fix=["wavelet"], seed=[0],
                   latent_tile_size=[0], min_size=[64])
    out = comfy.node("ControlNetRefine").execute(image=[images], refiner=[refiner], caption=["a", "b", "c"],
                                                 **widgets)
    assert [(c, round(m, 1)) for c, m in seen] == [("a", 0.2), ("b", 0.5), ("c", 0.8)]
    (batch,), report = out.args
    assert batch.shape == (3, 16, 24, 3) and report.count("\n") == 2
    with pytest.raises(comfy.logic.NodeError, match="2 captions for 3 images"):
        comfy.node("ControlNetRefine").execute(image=[images], refiner=[refiner], caption=["a", "b"], **widgets)


def test_native_supir_from_model_patches_and_supir_alone(comfy, demo_models, tmp_path):
    """SUPIR files in models/model_patches (core's folder) are choices as model_patches/<file> (a safetensors
    file by its header: other patch kinds are not offered); SUPIR alone makes a refiner that needs core's MODEL."""
    from safetensors.torch import save_file

    fp, logic = comfy.folder_paths, comfy.logic
    patches = tmp_path / "model_patches"
    patches.mkdir()
    fp.add_model_folder_path("model_patches", str(patches))
    supir = next(p for p in (demo_models[0] / "rsvl" / "supir").iterdir())
    (patches / "my_supir.safetensors").symlink_to(supir)
    save_file({"diffusion_model.blocks.0.weight": torch.zeros(2)}, str(patches / "other_patch.safetensors"))
    choices = logic.supir_choices(fp)
    assert "model_patches/my_supir.safetensors" in choices and not any("other_patch" in c for c in choices)
    refiner = comfy.node("LoadRSVLModels").execute(
        **{**demo_models[1], "sdxl_checkpoint": "none", "supir_model": "model_patches/my_supir.safetensors"},
        dtype="auto", device="auto", llava_quantization="none").args[2]
    assert refiner.chosen and refiner.sources == {"supir": str(patches / "my_supir.safetensors")}
    with pytest.raises(comfy.logic.NodeError, match="the refiner has no SDXL: connect model, clip and vae"):
        comfy.node("ControlNetRefine").execute(image=torch.rand(1, 8, 8, 3), refiner=refiner, caption="x",
                                               steps=2, seed=0, min_size=64)
    with pytest.raises(comfy.logic.NodeError, match="clip / vae are connected but model is not"):
        comfy.node("ControlNetRefine").execute(image=torch.rand(1, 8, 8, 3), refiner=refiner, caption="x",
                                               steps=2, seed=0, min_size=64, vae=[object()])


def test_native_caption_encoded_by_the_connected_clip(comfy):
    """With core's CLIP connected, prompts are encoded as CLIP Text Encode does (tokenize + encode_from_tokens,
    pooled too); a 154-token positive and a 77-token negative are repeated to a common length for CFG."""
    calls = []

    class FakeClip:
        def tokenize(self, text):
            return {"text": text}

        def encode_from_tokens(self, tokens, return_pooled=False):
            calls.append((tokens["text"], return_pooled))
            chunks = 2 if len(tokens["text"]) > 10 else 1
            value = float(len(tokens["text"]))
            return torch.full((1, 77 * chunks, 2048), value), torch.full((1, 1280), value)

    text = comfy.logic.HostClipText(FakeClip())
    assert text.pooled_dim == 1280
    positive, negative = text.encode_pair(["a long caption, sharp"], ["blurry"])
    assert positive.context.shape == negative.context.shape == (1, 154, 2048)
    assert positive.pooled.shape == (1, 1280) and float(negative.context[0, 100, 0]) == len("blurry")
    assert ("a long caption, sharp", True) in calls and ("blurry", True) in calls


@pytest.mark.parametrize("word, node", [("SUPIR", "ControlNetRefine"), ("sr3", "Stage1FidelitySR"),
                                        ("aerial", "Stage1FidelitySR"), ("satellite", "Stage1FidelitySR"),
                                        ("remote sensing", "LlavaRSCaption"), ("super resolution", "Stage1FidelitySR"),
                                        ("upscale", "Stage1FidelitySR"), ("caption", "LlavaRSCaption")])
def test_native_search_words_name_the_node(comfy, word, node):
    """The words users type are in the node's display name or its search aliases (frontends that search aliases
    find it by them; ComfyUI 0.8's 1.35 frontend searches ids and display names only)."""
    names = comfy.nodes.DISPLAY_NAMES[node].lower().replace("-", " ")
    assert word.lower() in names or word.lower() in [a.lower() for a in comfy.nodes.SEARCH_ALIASES[node]]
