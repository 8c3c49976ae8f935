"""Full-size random-weight models of every stage, from the real configs, on any device (meta included).

What the memory estimator runs under fake tensors (`memory.py`), and what a GPU benchmark can build on the
device: SR3 as released (66.8 M parameters), llama3-llava-next-8b (Llama-3-8B text, CLIP ViT-L/14 at 336 px,
anyres pinpoints) with a real-size image processor and the tiny word-level tokenizer (token ids are all a
run needs; nothing is downloaded), and SDXL + SUPIR (UNet, GLVControl, connectors, the VAE with its denoise
encoder, both CLIP text encoders with the shipped tokenizers).
"""

from __future__ import annotations

import torch

from ..caption.captioner import Captioner
from ..refine.refiner import Refiner
from ..stage1 import SR3Config, SR3UNet
from ..stage1.loader import SR3Model
from ..stage1.stage import SR3Stage1

LLAVA_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def full_llava_config():
    """llama3-llava-next-8b's architecture (its config.json, as transformers names it)."""
    from transformers import LlavaNextConfig

    return LlavaNextConfig(
        text_config=dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128320, rope_theta=500000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         pad_token_id=1, bos_token_id=2, eos_token_id=3),
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768),
        image_token_index=4, image_grid_pinpoints=LLAVA_PINPOINTS,
        vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False,
    )


def full_llava_processor():
    """A LLaVA-NeXT processor with llama3-llava-next-8b's image settings and the tiny tokenizer."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    from ..caption.tiny import CHAT_TEMPLATE, IMAGE_TOKEN, tiny_tokenizer

    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                 image_grid_pinpoints=LLAVA_PINPOINTS)
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(), patch_size=14,
                              vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                              image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


def full_captioner(device: torch.device | str, dtype: torch.dtype) -> Captioner:
    """A random-weight LLaVA-NeXT-8B (see the module doc) on `device` in `dtype`."""
    from transformers import LlavaNextForConditionalGeneration

    with torch.device(device):
        model = LlavaNextForConditionalGeneration(full_llava_config()).to(dtype).eval().requires_grad_(False)
    return Captioner(model, full_llava_processor())


def full_refiner(device: torch.device | str, dtype: torch.dtype, vae_dtype: torch.dtype | None = None) -> Refiner:
    """SDXL + SUPIR at full size (see the module doc) on `device`; the VAE in `vae_dtype` (default `dtype`)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ..refine.nets.config import RefinerConfig
    from ..refine.nets.control import GLVControl
    from ..refine.nets.text import SDXLTextEncoder, load_shipped_tokenizers, text_encoder_config
    from ..refine.nets.unet import RefinerUNet
    from ..refine.nets.vae import RefinerVAE, sdxl_vae_config

    config = RefinerConfig.sdxl()
    with torch.device(device):
        unet, control = RefinerUNet(config), GLVControl(config)
        encoders = CLIPTextModel(text_encoder_config(0)), CLIPTextModelWithProjection(text_encoder_config(1))
        text = SDXLTextEncoder(*encoders, *load_shipped_tokenizers())
        vae = RefinerVAE.from_config(sdxl_vae_config())
    unet, control, text = (m.to(dtype).eval().requires_grad_(False) for m in (unet, control, text))
    vae = vae.to(vae_dtype or dtype).eval().requires_grad_(False)
    return Refiner(unet, control, vae, text, config)


def full_stage1(device: torch.device | str, dtype: torch.dtype) -> SR3Stage1:
    """The released SR3 generator's architecture (default SR3Config) with random weights."""
    with torch.device(device):
        unet = SR3UNet(SR3Config()).to(dtype).eval().requires_grad_(False)
    return SR3Stage1(SR3Model(unet))
