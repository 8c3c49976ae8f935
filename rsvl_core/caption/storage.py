"""Low-bit weight storage for the captioner's language model (no bitsandbytes): fp8, int8 (torchao) or int4.

Only the language model's decoder layers are stored low-bit (they are ~85 % of llama3-llava-next-8b's
bytes); the vision tower, the projector, the token embeddings and the LM head stay in the compute dtype, as
the bitsandbytes path keeps them (`loader.quantization_config`): small, and the most sensitive to rounding.
Compute stays in the model's dtype (bf16 on a GPU): each layer dequantises its weight at every call.
"""

from __future__ import annotations

import torch
from torch import nn

from ..memory.lowbit import store_fp8_weights, store_int4_weights, store_int8_weights, to_dtype

CAPTION_STORAGES = ("none", "fp8", "int8", "int4")
# Relative L2 of the next-token logits against the same model in bf16, on the tiny captioner
# (tests/caption/test_lowbit_caption_memory.py; measured fp8 0.17, int8 0.05, int4 0.56, and bf16 itself 0.04
# against fp32): the bound each storage is held to. The random tiny model is far more sensitive than a trained
# one (weights of std 0.3 at width 64), so these bound the code, not the real model's caption quality.
LOGIT_RELATIVE_ERROR = {"fp8": 0.22, "int8": 0.07, "int4": 0.70}


def language_model_of(model: nn.Module) -> nn.Module:
    """The text decoder of a LLaVA-style model (the module with token embeddings and decoder layers; found
    inside a PEFT wrapper too)."""
    for module in model.modules():
        if hasattr(module, "embed_tokens") and isinstance(getattr(module, "layers", None), nn.ModuleList):
            return module
    raise ValueError(f"low-bit caption storage: {type(model).__name__} has no language model (token embeddings "
                     "and decoder layers)")


def store_language_model(model: nn.Module, storage: str, dtype: torch.dtype | None = None) -> int:
    """Store the language model's decoder-layer weights as `storage` (in place); returns the layers replaced.

    Args:
        model: a LlavaNextForConditionalGeneration (or its inner LlavaNextModel).
        storage: none, fp8, int8 (needs torchao) or int4.
        dtype: compute dtype (default: the model's own floating dtype).
    """
    if storage not in CAPTION_STORAGES:
        raise ValueError(f"caption weight storage must be one of {', '.join(CAPTION_STORAGES)}, got {storage!r}")
    if storage == "none":
        return 0
    dtype = dtype or next(p for p in model.parameters() if p.is_floating_point()).dtype
    to_dtype(model, dtype)
    layers = language_model_of(model).layers
    if storage == "fp8":
        return store_fp8_weights(layers, dtype)
    if storage == "int4":
        return store_int4_weights(layers, dtype)
    try:
        return store_int8_weights(layers, dtype)
    except RuntimeError as exc:
        raise ValueError(f"caption weight storage int8: {exc}") from None
