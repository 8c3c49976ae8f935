"""rsvl: two-stage, vision-language-guided diffusion super-resolution for remote-sensing imagery.

The engine. It never imports ComfyUI; the node pack in `nodes/` adapts it.
"""

from .errors import Cancelled, CheckpointError, InputImageError, RsvlError, WeightsNotFoundError
from .image import read_image, write_image_atomic
from .stage1 import SR3Config, SR3Model, SR3SamplerOptions, SR3UNet, load_sr3, save_sr3, upscale_stage1

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "CheckpointError",
    "InputImageError",
    "RsvlError",
    "SR3Config",
    "SR3Model",
    "SR3SamplerOptions",
    "SR3UNet",
    "WeightsNotFoundError",
    "load_sr3",
    "read_image",
    "save_sr3",
    "upscale_stage1",
    "write_image_atomic",
]
