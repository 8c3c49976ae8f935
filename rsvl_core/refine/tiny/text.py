"""Tiny random SDXL text encoders in the real single-file layout, for tests and `rsvl demo`.

Same vocabulary (49408) and 77 positions as SDXL, so the real shipped tokenizer drives them; everything else is
small: width 64 (one 64-dim head), 2 layers, MLP 128, bigG projection 64 -> context_dim 128, pooled_dim 64.
"""

from __future__ import annotations

import torch

from ..nets.text import (
    build_empty_text_encoders,
    sdxl_text_encoders_to_single_file,
    text_encoder_config,
    with_text_model_prefix,
)

TINY_SIZES = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=1, projection_dim=64)


def tiny_text_encoder_single_file_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tiny ViT-L and bigG text encoders under `conditioner.embedders.{0,1}`, deterministic for a `seed`."""
    text_encoder, text_encoder_2 = build_empty_text_encoders(
        text_encoder_config(0, **TINY_SIZES), text_encoder_config(1, **TINY_SIZES)
    )
    generator = torch.Generator().manual_seed(seed)
    states = []
    for model in (text_encoder, text_encoder_2):
        # Checkpoint names, sorted: the values do not depend on module order or on the transformers version.
        shapes = {with_text_model_prefix(k): tuple(v.shape) for k, v in model.state_dict().items()}
        shapes.pop("text_model.embeddings.position_ids", None)
        states.append({key: _random_tensor(key, shapes[key], generator) for key in sorted(shapes)})
    return sdxl_text_encoders_to_single_file(states[0], states[1])


def _random_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Values with a sensible scale per kind of tensor; norms get random (not unit) gains so tests see them."""
    noise = torch.randn(shape, generator=generator)
    if "layer_norm" in key:
        return 1.0 + 0.1 * noise if key.endswith("weight") else 0.02 * noise
    if "embedding" in key:
        return 0.02 * noise
    if key.endswith("bias"):
        return 0.02 * noise
    return noise / shape[-1] ** 0.5  # linear weights: unit-variance outputs for unit-variance inputs
