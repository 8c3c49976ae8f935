"""Stage 1: fidelity super-resolution from the image alone (SR3, or any SR model spandrel knows)."""

from .config import SR3Config
from .loader import SR3Model, load_sr3, save_sr3
from .model import SR3UNet
from .sampler import SAMPLERS, SR3SamplerOptions
from .schedule import SR3NoiseSchedule
from .stage import SpandrelStage1, SR3Stage1, load_stage1
from .upscaler import SCALES, upscale_stage1

__all__ = [
    "SAMPLERS",
    "SCALES",
    "SR3Config",
    "SR3Model",
    "SR3NoiseSchedule",
    "SR3SamplerOptions",
    "SR3Stage1",
    "SR3UNet",
    "SpandrelStage1",
    "load_stage1",
    "load_sr3",
    "save_sr3",
    "upscale_stage1",
]
