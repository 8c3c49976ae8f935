"""Our single-file key mappings against diffusers' own converters (`diffusers.loaders.single_file_utils`).

The VAE now converts with diffusers' converter directly. The SDXL UNet and the text encoders keep our tables
(the UNet table also maps GLVControl, which diffusers does not know; the text mapping infers the architecture
from the file before a model exists), so these tests prove the tables give exactly diffusers' tensors.
Our strict key checks (`checkpoint.check_state`) run on top either way.
"""

from __future__ import annotations

import torch

from rsvl_core.refine.loading.ldm_keys import ldm_to_ours
from rsvl_core.refine.nets.text import (
    CLIP_G_PREFIX,
    CLIP_L_PREFIX,
    convert_sdxl_text_encoders,
    infer_text_encoder_configs,
)
from rsvl_core.refine.nets.vae import convert_first_stage
from rsvl_core.refine.refiner import refiner_single_files
from rsvl_core.refine.tiny import tiny_refiner
from rsvl_core.refine.tiny.text import tiny_text_encoder_single_file_state
from rsvl_core.refine.tiny.vae import tiny_first_stage_single_file_state, tiny_vae_config


def same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []


def test_unet_table_equals_diffusers_convert_ldm_unet_checkpoint():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    refiner = tiny_refiner(0)
    sdxl, _ = refiner_single_files(refiner)
    unet = {k: v for k, v in sdxl.items() if k.startswith("model.diffusion_model.")}
    ours, unknown = ldm_to_ours({k[len("model.diffusion_model."):]: v for k, v in unet.items()}, refiner.config)
    assert unknown == []
    same_tensors(ours, convert_ldm_unet_checkpoint(unet, refiner.config.to_diffusers_unet_kwargs()))


def test_text_encoder_mapping_equals_diffusers_clip_converters():
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection

    state = tiny_text_encoder_single_file_state(seed=0)
    clip_l, clip_g = convert_sdxl_text_encoders(state)
    with torch.device("meta"):
        bigg = CLIPTextModelWithProjection(infer_text_encoder_configs(clip_l, clip_g)[1])
    same_tensors(clip_l, convert_ldm_clip_checkpoint(state, remove_prefix=CLIP_L_PREFIX))
    same_tensors(clip_g, convert_open_clip_checkpoint(bigg, state, prefix=CLIP_G_PREFIX))


def test_vae_conversion_is_diffusers_and_the_denoise_encoder_goes_through_it_too():
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = tiny_first_stage_single_file_state()
    vae, denoise = convert_first_stage(state)
    first = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    own = {k: v for k, v in first.items() if not k.startswith("denoise_encoder.")}
    same_tensors(vae, convert_ldm_vae_checkpoint(own, tiny_vae_config()))
    encoder = {k[len("encoder."):]: v for k, v in vae.items() if k.startswith("encoder.")}
    assert sorted(denoise) == sorted(encoder)  # the denoise encoder has exactly the VAE encoder's layout
