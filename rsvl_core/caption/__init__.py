"""Captioning: a vision-language model (LLaVA-NeXT + the seed's LoRA adapter) describes the stage-1 image."""

from ..kit.lazy import lazy_exports

_HOMES = {  # name -> the module it lives in
    "AdapterReport": "adapter", "LoraAdapter": "adapter", "apply_adapter": "adapter", "map_module_name": "adapter",
    "read_adapter": "adapter",
    "Captioner": "captioner", "collapse_whitespace": "captioner", "to_pil_images": "captioner",
    "SEED_PROMPT": "config", "CaptionOptions": "config",
    "check_model_folder": "loader", "load_captioner": "loader", "load_vlm": "loader",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
