"""Tiny random refiners in the real file layouts, for tests and `rsvl demo` (random weights: no real refinement)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ...kit.atomic import atomic_path
from ..nets.config import RefinerConfig
from ..nets.control import GLVControl
from ..nets.text import load_text_encoder_from_single_file
from ..nets.unet import RefinerUNet
from ..refiner import Refiner, refiner_single_files
from .text import tiny_text_encoder_single_file_state
from .vae import tiny_refiner_vae

TINY_SDXL_NAME = "rsvl_demo_sdxl.safetensors"
TINY_SUPIR_NAME = "rsvl_demo_supir.safetensors"


def tiny_refiner_config() -> RefinerConfig:
    """SDXL's structure (3 levels, 2 ResBlocks, attention at levels 1-2) with small widths.

    context 128 and pooled 64 match the tiny text encoders; the vector is 64 + 6 x 256 as in SDXL.
    """
    return RefinerConfig(model_channels=32, channel_mult=(1, 2, 2), transformer_depth=(1, 1, 1),
                         num_head_channels=64, context_dim=128, adm_in_channels=64 + 6 * 256, zero_sft_hidden=16)


def tiny_refiner(seed: int = 0, config: RefinerConfig | None = None) -> Refiner:
    """A seeded random tiny refiner (UNet, control, VAE with denoise encoder, text encoders).

    `config`: another UNet/control size (default `tiny_refiner_config()`); its context and vector widths must
    stay those of the tiny text encoders (128, 64 + 6 x 256).
    """
    config = config or tiny_refiner_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, control = RefinerUNet(config), GLVControl(config)
    text = load_text_encoder_from_single_file(tiny_text_encoder_single_file_state(seed), "<tiny>")
    vae = tiny_refiner_vae(seed)
    return Refiner(unet.eval().requires_grad_(False), control.eval().requires_grad_(False), vae, text, config)


def write_tiny_refiner_files(sdxl_dir: Path, supir_dir: Path, seed: int = 0, refiner: Refiner | None = None,
                             names: tuple[str, str] = (TINY_SDXL_NAME, TINY_SUPIR_NAME)) -> tuple[Path, Path]:
    """Write a tiny SDXL single file and a tiny SUPIR checkpoint (split as the real releases are).

    `refiner`: the refiner to write (default `tiny_refiner(seed)`); `names`: the two file names.
    """
    sdxl_state, supir_state = refiner_single_files(refiner or tiny_refiner(seed))
    paths = []
    for folder, name, state in ((sdxl_dir, names[0], sdxl_state), (supir_dir, names[1], supir_state)):
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        with atomic_path(target) as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        paths.append(target)
    return paths[0], paths[1]
