"""rsvl: two-stage, vision-language-guided diffusion super-resolution for remote-sensing imagery.

The engine. It never imports ComfyUI; the node pack in `nodes/` adapts it. The names below load on first
use (PEP 562), so `import rsvl_core.cli` and `rsvl --help` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .kit import torchvision_guard

torchvision_guard.install()  # a CUDA-built torchvision beside a CPU torch would otherwise fail to import

__version__ = "0.1.0"

_LAZY = {
    "Cancelled": "kit.errors", "CheckpointError": "kit.errors", "InputImageError": "kit.errors",
    "RsvlError": "kit.errors",
    "WeightsNotFoundError": "kit.errors", "read_image": "kit.image", "write_image_atomic": "kit.image",
    "SR3Config": "stage1", "SR3Model": "stage1", "Stage1Options": "stage1", "SR3SamplerOptions": "stage1",
    "SR3UNet": "stage1",
    "load_sr3": "stage1", "save_sr3": "stage1", "upscale_stage1": "stage1", "load_stage1": "stage1",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
