"""Core-shaped model files for the ComfyUI-native host tests, built once and cached between test sessions.

ComfyUI's own loaders (CLIPLoader, CheckpointLoaderSimple) build their models from fixed configs, so these
files have the real tensor shapes (random weights, seeded); they are written to a cache folder once
(`RSVL_TEST_CACHE`, default ~/.cache/rsvl-tests) and reused, each written to a temporary name then renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

import rsvl_core  # noqa: F401  (its torchvision guard, before transformers)

CACHE = Path(os.environ.get("RSVL_TEST_CACHE", Path.home() / ".cache" / "rsvl-tests"))


def _cached(name: str, build) -> Path:
    """The cached file `name`, built by `build() -> state dict` and written atomically when absent."""
    from safetensors.torch import save_file

    path = CACHE / name
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in build().items()}
        partial = path.with_suffix(f".{os.getpid()}.partial")
        save_file(state, str(partial))
        os.replace(partial, path)
    return path


def clip_l_file() -> Path:
    """A CLIP-L text encoder (SD 1.x shape: 12 layers, width 768) in Hugging Face key names, fp16, seeded."""

    def build() -> dict[str, torch.Tensor]:
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(0)
        config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, max_position_embeddings=77, vocab_size=49408,
                                projection_dim=768, hidden_act="quick_gelu")
        return {k: v.half() for k, v in CLIPTextModel(config).state_dict().items()}

    return _cached("clip_l_random_v1.safetensors", build)


# ComfyUI recognises SDXL by model_channels 320, transformer_depth [0, 0, 2, 2, 10, 10], context_dim 2048 and
# adm_in_channels 2816 (comfy/supported_models.py SDXL.unet_config); the channel multipliers are free, so
# (1, 1, 1) keeps the UNet at ~190 M parameters instead of 2.6 B. The VAE must be the full SD VAE (core's
# loader builds that shape); the text encoders keep SDXL's widths (768 + 1280) with one layer each.
SDXL_SHAPED = dict(model_channels=320, channel_mult=(1, 1, 1), transformer_depth=(1, 2, 10), num_head_channels=64,
                   context_dim=2048, adm_in_channels=2816, zero_sft_hidden=128)
TEXT_SIZES = ({"hidden_size": 768, "num_hidden_layers": 1, "intermediate_size": 3072, "projection_dim": 768},
              {"hidden_size": 1280, "num_hidden_layers": 1, "intermediate_size": 5120, "projection_dim": 1280})


def sdxl_shaped_files() -> dict[str, Path]:
    """Three fp16 files from one seeded random SDXL-shaped refiner: "sdxl" (UNet + VAE + text encoders, for
    LoadRSVLModels), "sdxl_core" (the same UNet + VAE without text encoders: core's Load Checkpoint gives CLIP
    absent) and "supir" (control network, connectors, denoise encoder)."""
    names = {"sdxl": "sdxl_shaped_v1.safetensors", "sdxl_core": "sdxl_shaped_core_v1.safetensors",
             "supir": "supir_sdxl_shaped_v1.safetensors"}
    if all((CACHE / name).is_file() for name in names.values()):
        return {key: CACHE / name for key, name in names.items()}
    files = _sdxl_shaped_states()
    return {key: _cached(names[key], lambda key=key: files[key]) for key in names}


def _sdxl_shaped_states() -> dict[str, dict[str, torch.Tensor]]:
    from rsvl_core.refine.loading.loader import unet_and_control_to_single_file
    from rsvl_core.refine.nets.config import RefinerConfig
    from rsvl_core.refine.nets.control import GLVControl
    from rsvl_core.refine.nets.text import (
        build_empty_text_encoders,
        sdxl_text_encoders_to_single_file,
        text_encoder_config,
        with_text_model_prefix,
    )
    from rsvl_core.refine.nets.unet import RefinerUNet
    from rsvl_core.refine.nets.vae import RefinerVAE, sdxl_vae_config

    config = RefinerConfig(**SDXL_SHAPED)
    torch.manual_seed(0)
    with torch.no_grad():
        unet, control = RefinerUNet(config), GLVControl(config)
        vae = RefinerVAE.from_config(sdxl_vae_config())
        for module in (unet, control, vae):
            for param in module.parameters():
                if not param.any():  # zero-initialised injections: give them a small effect
                    param.normal_(0, 0.01)
        sdxl, supir = unet_and_control_to_single_file(unet, control)
        for key, value in vae.single_file_state().items():
            (supir if ".denoise_encoder." in key else sdxl)[key] = value
        encoders = build_empty_text_encoders(text_encoder_config(0, **TEXT_SIZES[0]),
                                             text_encoder_config(1, **TEXT_SIZES[1]))
        texts = []
        for encoder in encoders:
            shapes = {with_text_model_prefix(k): tuple(v.shape) for k, v in encoder.state_dict().items()}
            shapes.pop("text_model.embeddings.position_ids", None)
            texts.append({k: (1.0 + 0.1 * torch.randn(s) if "layer_norm" in k and k.endswith("weight")
                              else torch.randn(s) * (0.02 if len(s) < 2 or "embedding" in k else s[-1] ** -0.5))
                          for k, s in shapes.items()})
        text = sdxl_text_encoders_to_single_file(texts[0], texts[1])
    half = {k: {n: t.detach().half() for n, t in v.items()} for k, v in
            {"sdxl_core": sdxl, "supir": supir, "text": text}.items()}
    return {"sdxl_core": half["sdxl_core"], "sdxl": {**half["sdxl_core"], **half["text"]}, "supir": half["supir"]}


def link_sdxl_shaped_files(host: dict) -> dict[str, Path]:
    """The SDXL-shaped files (see `sdxl_shaped_files`), linked into the test server's model folders."""
    files = sdxl_shaped_files()
    models = host["root"] / "models"
    for key, folder in (("sdxl", "checkpoints"), ("sdxl_core", "checkpoints"), ("supir", "rsvl/supir")):
        link = models / folder / files[key].name
        if not link.exists():
            link.symlink_to(files[key])
    return files


def native_workflow_values(host: dict) -> dict[str, dict]:
    """The shipped ComfyUI-native workflow's inputs, by node type, set to the test models: the SDXL-shaped files
    are linked into the server's model folders (core Load Checkpoint gets the one without text encoders, so
    Load RSVL Models names the SDXL file whose encoders then encode the caption), tiny sizes for the CPU."""
    files = link_sdxl_shaped_files(host)
    return {
        "CheckpointLoaderSimple": {"ckpt_name": files["sdxl_core"].name},
        "UpscaleModelLoader": {"model_name": "4x_tiny_esrgan.pth"},
        "LoadRSVLModels": {"llava_model": host["choices"]["llava_model"], "llava_adapter": "none",
                           "sdxl_checkpoint": files["sdxl"].name, "supir_model": files["supir"].name},
        "Stage1FidelitySR": {"scale": "2"},
        "LlavaRSCaption": {"max_new_tokens": 4},
        "ControlNetRefine": {"steps": 2, "min_size": 64, "latent_tile_size": 0},
    }
