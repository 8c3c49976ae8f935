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
from ..jobs.samples import deterministic_stage1, reduce_samples, zero_spread_text
from ..kit.progress import ProgressCallback
from ..refine.refiner import RefineReport
from .models import PipelineModels
from .options import RunConfig
from .stage_runs import run_caption, run_refine, run_stage1


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
    spread: torch.Tensor | None = None         # N >= 2 samples: (1, 1, H, W) std across samples, 8-bit levels
    uncertainty: dict[str, Any] | None = None  # N >= 2 samples: seeds, combine, guard, time per sample
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
    keyed by scene position, see `kit/noise.py`), and `scene_caption` the scene's caption (used instead of
    captioning this window). `config` was validated when it was made; nothing here checks it again.

    With `config.uncertainty.samples` N >= 2 the stochastic stages run N times (seeds seed .. seed + N - 1), the
    caption once (from the first sample's stage-1 image), and the result is the combined, optionally guarded,
    output with its per-pixel spread (`uncertainty.py`). N = 1 is the single run, unchanged.
    """
    seconds: dict[str, float] = {}
    _peak_reset(models.device)
    seeds = config.sample_seeds  # one per sample: seed, seed + 1, ... (windows key their noise by it too)

    # 1. stage 1: from the image alone (once per sample: image k of the batch gets seed + k)
    start = time.perf_counter()
    samples = image.expand(len(seeds), -1, -1, -1)
    stage1_run = run_stage1(models.source("stage1"), samples, config.scale, config.stage1, seeds[0], callback, origin)
    sample_seconds = list(stage1_run.seconds)
    seconds["stage1"] = time.perf_counter() - start
    stage1 = stage1_run.stage1
    first_stage1 = stage1.image[:1]
    one_pass = deterministic_stage1(models.load("stage1"))  # its samples are one run's image (see run_stage1)

    # 2. caption (only when the refiner will use it): once, from the first sample's stage-1 image
    caption, source = None, None
    if config.refine is not None:
        start = time.perf_counter()
        caption, source = caption_for(first_stage1, config, models, scene_caption, callback)
        seconds["caption"] = time.perf_counter() - start

    # 3. refine, guided by the caption (once per sample)
    outputs, refine_report = list(stage1.image.split(1)), None
    if config.refine is not None:
        start = time.perf_counter()
        at = None if origin is None else (origin[0] * config.scale, origin[1] * config.scale)
        refined = run_refine(models.source("refine"), stage1.image, [caption] * len(seeds), config.refine, seeds[0],
                             callback, at)
        outputs, refine_report = list(refined.images.split(1)), refined.reports[0]
        sample_seconds = [a + b for a, b in zip(sample_seconds, refined.seconds, strict=True)]
        seconds["refine"] = time.perf_counter() - start

    # 4. N samples -> the combined (and guarded) output and its spread
    result, spread, uncertainty = outputs[0], None, None
    if len(seeds) > 1:
        start = time.perf_counter()
        reduced = reduce_samples(torch.cat([o.float().cpu() for o in outputs]), first_stage1.float().cpu(),
                                 config.uncertainty)
        result, spread = reduced.image, reduced.spread
        seconds["uncertainty"] = time.perf_counter() - start
        uncertainty = samples_record(config, seeds, source, sample_seconds, reduced.fraction_replaced, one_pass)

    peak, kind = peak_memory(models.device)
    return PipelineResult(result.float().cpu(), first_stage1.float().cpu(), caption, source, seconds, peak, kind,
                          models.plan, refine_report, stage1.cache, stage1.record, models.acceleration.enabled(),
                          spread, uncertainty, getattr(models, "memory_plan", None))


def caption_for(image: torch.Tensor, config: RunConfig, models: PipelineModels, scene_caption: str | None,
                callback: ProgressCallback | None) -> tuple[str, str]:
    """The refiner's caption and where it came from: given, the scene's overview, or the captioner's."""
    if config.caption_text is not None:
        return config.caption_text, "given"
    if scene_caption is not None:
        return scene_caption, "scene overview"
    captions = run_caption(models.source("caption"), image, config.caption, callback).captions
    return collapse_whitespace(captions[0]), "captioner"


def samples_record(config: RunConfig, seeds: list[int], source: str | None, sample_seconds: list[float],
                   fraction_replaced: float, one_pass: bool) -> dict:
    """The run record's "uncertainty" entry for N >= 2 samples."""
    uncertainty = {"samples": len(seeds), "seeds": seeds, "combine": config.uncertainty.combine,
                   "caption_from": "the first sample's stage-1 image" if source == "captioner" else source,
                   "seconds_per_sample": [round(t, 3) for t in sample_seconds],
                   "guard": {"threshold": config.uncertainty.guard, "feather": config.uncertainty.feather,
                             "fallback": "the first sample's stage-1 image",
                             "fraction_replaced": round(fraction_replaced, 6)}}
    if one_pass:
        uncertainty["stage1_runs"] = 1  # the other samples reuse its image
        if config.refine is None:
            uncertainty["deterministic"] = zero_spread_text(len(seeds))
    return uncertainty
