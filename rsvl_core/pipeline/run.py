"""The whole pipeline on one image: stage 1 -> caption -> refine, with per-stage times and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..cache.policy import CacheReport
from ..caption import collapse_whitespace
from ..progress import ProgressCallback
from ..refine.refiner import RefineReport, refine_image
from .models import PipelineModels
from .options import RunConfig


@dataclass
class PipelineResult:
    image: torch.Tensor                       # (1, 3, H * scale, W * scale) float32 in [0, 1], on the CPU
    stage1_image: torch.Tensor
    caption: str | None
    caption_source: str | None                # "captioner", "given" or None
    seconds: dict[str, float]
    peak_memory_bytes: int
    peak_memory_kind: str                     # "cuda allocated" or "process RSS"
    placement: str
    refine_report: RefineReport | None = None
    stage1_cache: CacheReport | None = None
    stage1_record: dict[str, Any] | None = None  # which stage-1 model ran, and how
    acceleration: list[str] | None = None      # execution switches that were on (compile, fp8, ...)
    memory_plan: dict | None = None            # the --max-vram plan and its predicted peaks


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """The peak so far: CUDA memory allocated since the last reset, or the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process RSS"


def run_pipeline(image: torch.Tensor, config: RunConfig, models: PipelineModels,
                 callback: ProgressCallback | None = None, origin: tuple[int, int] | None = None,
                 scene_caption: str | None = None) -> PipelineResult:
    """stage 1 -> caption -> refine on one image (1, 3, H, W) in [0, 1]; output exactly (H * scale, W * scale).

    For a window of a larger scene: `origin` is its top-left (y, x) in the scene's input pixels (noise is then
    keyed by scene position, see `noise.py`), and `scene_caption` the scene's caption (used instead of
    captioning this window). `config` was validated when it was made; nothing here checks it again.
    """
    seconds: dict[str, float] = {}
    _peak_reset(models.device)

    # 1. stage 1: from the image alone
    start = time.perf_counter()
    stage1 = models.get("stage1").upscale(image, config.scale, config.stage1, config.seed, callback, origin)
    models.release("stage1")
    seconds["stage1"] = time.perf_counter() - start

    # 2. caption (only when the refiner will use it)
    caption, source = None, None
    if config.refine is not None:
        start = time.perf_counter()
        if config.caption_text is not None:
            caption, source = config.caption_text, "given"
        elif scene_caption is not None:
            caption, source = scene_caption, "scene overview"
        else:
            caption = collapse_whitespace(models.get("caption").caption(stage1.image, config.caption, callback)[0])
            source = "captioner"
            models.release("caption")
        seconds["caption"] = time.perf_counter() - start

    # 3. refine, guided by the caption
    result, refine_report = stage1.image, None
    if config.refine is not None:
        start = time.perf_counter()
        refiner = models.get("refine")
        at = None if origin is None else (origin[0] * config.scale, origin[1] * config.scale)
        result, refine_report = refine_image(refiner, stage1.image, caption, config.refine, config.seed, callback, at)
        models.release("refine")
        seconds["refine"] = time.perf_counter() - start

    peak, kind = peak_memory(models.device)
    return PipelineResult(result.float().cpu(), stage1.image.float().cpu(), caption, source, seconds, peak, kind,
                          models.plan, refine_report, stage1.cache, stage1.record, models.acceleration.enabled(),
                          getattr(models, "memory_plan", None))
