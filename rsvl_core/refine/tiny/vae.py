"""A tiny random refiner VAE in the real single-file layout, for tests and demos without the real weights.

Four levels like SDXL (so one latent pixel is 8x8 image pixels), 32 channels everywhere (GroupNorm uses 32
groups, as in LDM), one ResNet per level. Norm scales/shifts are randomised too, so a key mix-up (norm1 vs
norm2, reversed decoder levels) changes the output instead of hiding behind identity norms.
"""

from __future__ import annotations

from typing import Any

import torch

from ..nets.vae import RefinerVAE, sdxl_vae_config


def tiny_vae_config() -> dict[str, Any]:
    """AutoencoderKL kwargs of the tiny VAE (SDXL's config with small channels)."""
    config = sdxl_vae_config()
    config.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
    return config


def tiny_refiner_vae(seed: int = 0, with_denoise_encoder: bool = True) -> RefinerVAE:
    """A seeded random tiny RefinerVAE; its denoise encoder is a perturbed copy of the encoder (as if fine-tuned)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RefinerVAE.from_config(tiny_vae_config())
        with torch.no_grad():
            for name, param in model.vae.named_parameters():
                if "norm" in name:  # GroupNorm affine: identity at init; make it informative
                    param.add_(0.2 * torch.randn_like(param))
            model.denoise_encoder.load_state_dict(model.vae.encoder.state_dict())
            if with_denoise_encoder:
                for param in model.denoise_encoder.parameters():
                    param.add_(0.1 * param.std() * torch.randn_like(param))
    return model.eval().requires_grad_(False)


def tiny_first_stage_single_file_state(seed: int = 0, with_denoise_encoder: bool = True) -> dict[str, torch.Tensor]:
    """`first_stage_model.*` tensors of a tiny VAE, as an SDXL (+ SUPIR) single file holds them (contiguous)."""
    model = tiny_refiner_vae(seed, with_denoise_encoder)
    state = model.single_file_state()
    if not with_denoise_encoder:
        state = {k: v for k, v in state.items() if ".denoise_encoder." not in k}
    return {k: v.detach().clone().contiguous() for k, v in state.items()}
