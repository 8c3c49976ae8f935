"""Captioning: a vision-language model (LLaVA-NeXT + the seed's LoRA adapter) describes the stage-1 image."""

from .adapter import AdapterReport, LoraAdapter, apply_adapter, map_module_name, read_adapter
from .captioner import Captioner, collapse_whitespace, to_pil_images
from .config import SEED_PROMPT, CaptionOptions
from .loader import check_model_folder, load_captioner, load_vlm

__all__ = [
    "SEED_PROMPT", "AdapterReport", "CaptionOptions", "Captioner",
    "collapse_whitespace", "LoraAdapter", "apply_adapter",
    "check_model_folder", "load_captioner", "load_vlm", "map_module_name", "read_adapter", "to_pil_images",
]
