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
