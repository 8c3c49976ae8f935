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
    # (room: memory.py's estimate of this network on this tile, plus the batch's float32 outputs)
    assert patcher.model.model is upscale_model.model and memory > 2 * 64 * 96 * 3 * 4
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
    real = comfy.stage_runs.refine_image

    def spy(model, image, caption, *args, **kwargs):
        seen.append((caption, float(image.mean())))
        return real(model, image, caption, *args, **kwargs)

    monkeypatch.setattr(comfy.stage_runs, "refine_image", spy)
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
    names = comfy.schema.DISPLAY_NAMES[node].lower().replace("-", " ")
    assert word.lower() in names or word.lower() in [a.lower() for a in comfy.schema.SEARCH_ALIASES[node]]


def _core_checkpoint(sdxl_file):
    """Stand-ins for core Load Checkpoint's MODEL and VAE over a single file's tensors (what ComfyUI holds)."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    class Holder(torch.nn.Module):
        def __init__(self, state):
            super().__init__()
            self.held = state

        def state_dict(self, *args, **kwargs):
            return dict(self.held)

    state = load_file(str(sdxl_file))
    unet = {k[len("model.diffusion_model."):]: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    vae = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    base = torch.nn.Module()
    base.diffusion_model = Holder(unet)
    cpu = torch.device("cpu")
    model = SimpleNamespace(model=base, load_device=cpu, name="MODEL")
    vae_out = SimpleNamespace(first_stage_model=Holder(vae), patcher=SimpleNamespace(model=torch.nn.Module(),
                                                                                       load_device=cpu, name="VAE"))
    return model, vae_out, unet, vae


@pytest.mark.slow
def test_native_refine_over_core_model_shares_its_tensors_and_equals_the_full_path(comfy, demo_models):
    """ControlNetRefine with core's MODEL/VAE (stand-ins over the demo SDXL file's tensors): the UNet and VAE
    parameters are those very tensors, the result equals LoadRSVLModels' own path on the same files, and with a
    CLIP connected the prompts are encoded before the UNet is loaded."""
    models, choices = demo_models
    model, vae, unet_ldm, vae_ldm = _core_checkpoint(models / "checkpoints" / choices["sdxl_checkpoint"])
    load = comfy.node("LoadRSVLModels").execute
    full = load(**choices, dtype="auto", device="auto", llava_quantization="none").args[2]
    native = load(**choices, dtype="auto", device="auto", llava_quantization="none").args[2]
    image = torch.rand(1, 24, 32, 3, generator=torch.Generator().manual_seed(0))
    widgets = dict(positive_prompt="sharp", negative_prompt="blurry", steps=2, cfg_scale=4.0, cfg_scale_start=4.0,
                   control_scale=1.0, color_fix="wavelet", seed=1, latent_tile_size=0, min_size=64)
    node = comfy.node("ControlNetRefine")
    (expected,), _ = node.execute(image=image, refiner=full, caption="fields", **widgets).args
    (ours,), report = node.execute(image=image, refiner=native, caption="fields", model=[model], vae=[vae],
                                   **widgets).args
    assert torch.equal(ours, expected)
    host_bytes = sum(v.numel() * v.element_size() for v in (*unet_ldm.values(), *vae_ldm.values()))
    shared = int(report.split("SDXL UNet + VAE ")[1].split(" MiB")[0])
    assert shared == round(host_bytes / 1024 ** 2) and "caption encoded by the text encoders of" in report
    assert native.model is None  # LoadRSVLModels' own SDXL was never loaded on this path

    events = []

    class FakeClip:  # the demo refiner's widths: context 128, pooled 64
        def tokenize(self, text):
            return text

        def encode_from_tokens(self, tokens, return_pooled=False):
            events.append(("encode", tokens))
            return torch.zeros(1, 77, 128), torch.zeros(1, 64)

    real_load = comfy.modules["comfy.model_management"].load_models_gpu

    def load_models_gpu(models, *args, **kwargs):
        events.extend(("load", getattr(m, "name", "ours")) for m in models)
        return real_load(models, *args, **kwargs)

    comfy.modules["comfy.model_management"].load_models_gpu = load_models_gpu
    try:
        (with_clip,), report = node.execute(image=image, refiner=native, caption="fields", model=[model],
                                            vae=[vae], clip=[FakeClip()], **widgets).args
    finally:
        comfy.modules["comfy.model_management"].load_models_gpu = real_load
    assert with_clip.shape == ours.shape and "caption encoded by the connected CLIP" in report
    first_model_load = events.index(("load", "MODEL"))
    assert {("encode", "fields sharp"), ("encode", "blurry")} <= set(events[:first_model_load]), events
