"""Stage 1 end to end: low-resolution image -> bicubic condition -> SR3 sampling -> base image."""

from __future__ import annotations

import torch

from ..cache.evaluator import CachedEvaluator
from ..cache.policy import CacheReport
from ..kit.image import bicubic_resize
from ..kit.noise import NoiseField, coordinate_noise_source
from ..kit.progress import ProgressCallback
from .graphs import graph_eligible, sample_faithful_static
from .loader import SR3Model
from .sampler import Stage1Options, gaussian_noise_source, make_eps_model, sample_sr3, stage1_tile_fit

SCALES: tuple[int, ...] = (2, 4, 8)


def check_stage1_inputs(image: torch.Tensor, scale: int) -> None:
    """Raise ValueError for an unusable image tensor or scale, before any heavy work."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale}")
    check_image_batch(image)


def check_image_batch(image: torch.Tensor) -> None:
    """Raise ValueError unless `image` is a (B, 3, H, W) float tensor (what every stage-1 model takes)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W) RGB, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a float tensor in [0, 1], got {image.dtype}")


def upscale_stage1(
    model: SR3Model,
    image: torch.Tensor,
    scale: int,
    options: Stage1Options | None = None,
    seed: int = 0,
    callback: ProgressCallback | None = None,
    cache_report: CacheReport | None = None,
    origin: tuple[int, int] | None = None,
    static_loop: bool = False,
    tiling: dict | None = None,
) -> torch.Tensor:
    """Super-resolve with SR3: no text, no guidance, only the low-resolution image.

    Args:
        model: a loaded SR3 model (see :func:`rsvl_core.stage1.loader.load_sr3`).
        image: (B, 3, h, w) float in [0, 1], any size and aspect ratio (nothing is cropped).
        scale: 2, 4 or 8.
        options: sampler and tiling (default: the seed's faithful 500-step sampler).
        seed: seeds every random draw (noise is drawn on the CPU, so devices agree).
        callback: progress (step, total, "stage1", preview); raise from it to cancel.
        cache_report: filled with the step cache's decisions when `options.cache` is on.
        origin: the image's top-left (y, x) in a scene's input pixels: noise is then keyed by output-pixel
            position in the scene (`noise.NoiseField`), not drawn from one generator.
        static_loop: run the faithful loop on static buffers without host syncs, as a CUDA graph on CUDA
            (`graphs.py`; same result), where it applies; otherwise the plain loop.
        tiling: filled with the tile size used (`TileFit.record`: smaller than asked after out-of-memory).
    Returns:
        (B, 3, h * scale, w * scale) float in [0, 1] on the model's device.
    """
    options = options or Stage1Options()
    check_stage1_inputs(image, scale)
    height, width = image.shape[-2] * scale, image.shape[-1] * scale
    device = model.device
    condition = bicubic_resize(image, (height, width)).to(device) * 2 - 1
    steps = options.steps if options.sampler == "faithful" else None
    schedule = model.inference_schedule(steps)
    cache = CachedEvaluator(options.cache, options.total_steps) if options.cache.enabled else None
    fit = stage1_tile_fit(options, height, width)
    eps_model = make_eps_model(model.unet, condition, fit, options.tile_batch, cache)
    if origin is None:
        noise = gaussian_noise_source(torch.Generator().manual_seed(seed), device)
    else:
        noise = coordinate_noise_source(NoiseField(seed), "stage1", (origin[0] * scale, origin[1] * scale), device)
    shape = (image.shape[0], 3, height, width)
    if static_loop and graph_eligible(model.unet, shape, options):
        sample = sample_faithful_static(model.unet, condition, shape, schedule, options, noise, callback)
    else:
        sample = sample_sr3(eps_model, shape, schedule, options, noise, callback)
    if cache is not None and cache_report is not None:
        cache_report.decisions.extend(cache.report.decisions)
    if tiling is not None:
        tiling.update(fit.record())
    return ((sample + 1) / 2).clamp(0, 1)
