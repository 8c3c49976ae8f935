"""The whole pipeline on one GPU: stage 1 (SR3) -> caption (VLM) -> refine (SDXL + SUPIR).

`PipelineModels` loads each stage's model on first use and places it by a plan:

- `resident`:   every model stays on the device once loaded (fastest when memory allows);
- `sequential`: a model is on the device only while its stage runs, then goes back to the CPU
                (the seed needs two GPUs; this fits one);
- `auto`:       resident when the models fit in the device's free memory with headroom, else
                sequential (always resident on the CPU).

`run_pipeline` runs the stages on one image and reports per-stage times and the peak memory.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cache.first_block import CacheReport
from .progress import ProgressCallback

PLACEMENTS = ("auto", "resident", "sequential")
HEADROOM = 1.25  # activations and the VAE need room beside the weights


def module_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers of `modules` (what placing them on a device costs)."""
    total = 0
    for module in modules:
        total += sum(t.numel() * t.element_size() for t in module.parameters())
        total += sum(t.numel() * t.element_size() for t in module.buffers())
    return total


@dataclass
class StageSpec:
    """How to load one stage's model: `loader(device)` returns it on that device."""

    name: str
    loader: Callable[[torch.device], object]
    files: list[Path] = field(default_factory=list)


class PipelineModels:
    """The stages' models, loaded lazily and placed on one device by a plan."""

    def __init__(self, device: torch.device, placement: str = "auto", sr3: StageSpec | None = None,
                 captioner: StageSpec | None = None, refiner: StageSpec | None = None) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        self.device, self.requested = torch.device(device), placement
        self.specs = {"stage1": sr3, "caption": captioner, "refine": refiner}
        self.loaded: dict[str, object] = {}
        # on a CPU every plan is "resident"; on CUDA "auto" is settled as models load
        self.plan = "resident" if self.device.type != "cuda" else placement

    def files(self) -> dict[str, list[Path]]:
        return {name: spec.files for name, spec in self.specs.items() if spec is not None}

    def get(self, stage: str):
        """The stage's model, loaded if needed and on the device."""
        spec = self.specs.get(stage)
        if spec is None:
            raise ValueError(f"no model configured for stage {stage!r}")
        if stage not in self.loaded:
            self.loaded[stage] = spec.loader(self.device)
            if self.requested == "auto" and self.device.type == "cuda":
                self._decide(stage)
        model = self.loaded[stage]
        self._to(model, self.device)
        return model

    def preload(self) -> None:
        """Load every configured stage now (a wrong file fails before any image is processed)."""
        for stage, spec in self.specs.items():
            if spec is not None and stage not in self.loaded:
                self.get(stage)
                self.release(stage)

    def release(self, stage: str) -> None:
        """After a stage: in the sequential plan, its model goes back to the CPU."""
        if self.plan == "sequential" and stage in self.loaded:
            self._to(self.loaded[stage], torch.device("cpu"))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _decide(self, current: str) -> None:
        """auto: stay resident while every loaded model fits with headroom; otherwise go sequential."""
        free, _ = torch.cuda.mem_get_info(self.device)
        on_device = sum(self._bytes(m) for m in self.loaded.values())  # all loaded models are on the device now
        if self.plan == "auto" or self.plan == "resident":
            self.plan = "resident" if on_device * HEADROOM < free + on_device else "sequential"
        if self.plan == "sequential":
            for name, model in self.loaded.items():
                if name != current:
                    self._to(model, torch.device("cpu"))
            torch.cuda.empty_cache()

    @staticmethod
    def _bytes(model) -> int:
        modules = _modules_of(model)
        return module_bytes(*modules) if modules else 0

    @staticmethod
    def _to(model, device: torch.device) -> None:
        if hasattr(model, "offload") and hasattr(model, "caption"):  # the captioner moves itself back on use
            if device.type == "cpu" and not getattr(model, "quantized", False):
                model.offload()
            return
        for module in _modules_of(model):
            module.to(device)


def _modules_of(model) -> list[torch.nn.Module]:
    if isinstance(model, torch.nn.Module):
        return [model]
    names = ("unet", "control", "vae", "text")  # Refiner
    if all(hasattr(model, n) for n in names):
        return [getattr(model, n) for n in names]
    if hasattr(model, "unet"):  # SR3Model
        return [model.unet]
    inner = getattr(model, "model", None)  # Captioner
    return [inner] if isinstance(inner, torch.nn.Module) else []


@dataclass(frozen=True)
class PipelineOptions:
    """One run: scale, each stage's settings, and what to skip."""

    scale: int = 8
    stage1: object = None            # SR3SamplerOptions (None: the seed's)
    caption: object = None           # CaptionOptions (None: the seed's)
    caption_text: str | None = None  # use this text instead of running the captioner
    refine: object = None            # RefineOptions; None with refine_enabled=False: stage 1 only
    refine_enabled: bool = True
    seed: int = 0


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
    refine_report: object = None
    stage1_cache: CacheReport | None = None


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process RSS"


def run_pipeline(image: torch.Tensor, options: PipelineOptions, models: PipelineModels,
                 callback: ProgressCallback | None = None) -> PipelineResult:
    """stage 1 -> caption -> refine on one image (1, 3, H, W) in [0, 1]; output exactly (H * scale, W * scale)."""
    from .caption import CaptionOptions, one_line
    from .refine.refiner import RefineOptions, refine_image
    from .stage1 import SR3SamplerOptions, upscale_stage1

    stage1_options = options.stage1 or SR3SamplerOptions()
    stage1_options.check()
    refine_options = (options.refine or RefineOptions()) if options.refine_enabled else None
    if refine_options is not None:
        refine_options.check()
    caption_options = options.caption or CaptionOptions(seed=options.seed)
    seconds: dict[str, float] = {}
    _peak_reset(models.device)

    # 1. stage 1
    start = time.perf_counter()
    stage1_cache = CacheReport()
    sr3 = models.get("stage1")
    stage1 = upscale_stage1(sr3, image, options.scale, stage1_options, options.seed, callback, stage1_cache)
    models.release("stage1")
    seconds["stage1"] = time.perf_counter() - start

    # 2. caption (only when the refiner will use it)
    caption, source = None, None
    if refine_options is not None:
        start = time.perf_counter()
        if options.caption_text is not None:
            caption, source = options.caption_text, "given"
        else:
            captioner = models.get("caption")
            caption = one_line(captioner.caption(stage1, caption_options, callback)[0])
            source = "captioner"
            models.release("caption")
        seconds["caption"] = time.perf_counter() - start

    # 3. refine
    result, refine_report = stage1, None
    if refine_options is not None:
        start = time.perf_counter()
        refiner = models.get("refine")
        result, refine_report = refine_image(refiner, stage1, caption, refine_options, options.seed, callback)
        models.release("refine")
        seconds["refine"] = time.perf_counter() - start

    peak, kind = _peak(models.device)
    return PipelineResult(result.float().cpu(), stage1.float().cpu(), caption, source, seconds, peak, kind,
                          models.plan, refine_report, stage1_cache if stage1_cache.decisions else None)
