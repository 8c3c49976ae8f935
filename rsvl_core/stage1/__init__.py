"""Stage 1: fidelity super-resolution from the image alone (SR3, or any SR model spandrel knows)."""

from ..kit.lazy import lazy_exports

_HOMES = {  # name -> the module it lives in
    "SR3Config": "config",
    "SR3Model": "loader", "load_sr3": "loader", "save_sr3": "loader",
    "SR3UNet": "model",
    "SAMPLERS": "sampler", "Stage1Options": "sampler", "SR3SamplerOptions": "sampler",
    "SR3NoiseSchedule": "schedule",
    "SpandrelStage1": "stage", "SR3Stage1": "stage", "load_stage1": "stage",
    "SCALES": "upscaler", "upscale_stage1": "upscaler",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
