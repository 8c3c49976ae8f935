"""Stage 1: SR3 fidelity super-resolution (no text, no guidance)."""

from .config import SR3Config
from .loader import SR3Model, load_sr3, save_sr3
from .model import SR3UNet
from .sampler import SAMPLERS, SR3SamplerOptions
from .schedule import SR3NoiseSchedule
from .upscaler import SCALES, upscale_stage1

__all__ = [
    "SAMPLERS",
    "SCALES",
    "SR3Config",
    "SR3Model",
    "SR3NoiseSchedule",
    "SR3SamplerOptions",
    "SR3UNet",
    "load_sr3",
    "save_sr3",
    "upscale_stage1",
]
