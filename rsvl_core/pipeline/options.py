"""Run configuration in one place: every user-facing setting's default, range and help; step settings; presets.

The command line and the ComfyUI nodes read their defaults and ranges from `SETTINGS` (no repeated
literals), and build a `RunConfig` with `run_config(...)`, which validates everything once, when it is
made. Defaults come from the stages' own option classes (the seed's values), so there is one source.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..cache.policy import PRESETS as CACHE_PRESETS
from ..cache.policy import CachePolicy, CacheReport
from ..caption.config import SEED_PROMPT, CaptionOptions
from ..devices import DTYPES
from ..refine.refiner import COLOR_FIXES, PRESETS, SEED_NEGATIVE_PROMPT, SEED_POSITIVE_PROMPT, RefineOptions
from ..stage1.sampler import SAMPLERS, SR3SamplerOptions
from ..stage1.upscaler import SCALES

STAGE1_CACHES = ("off", "fast")  # stage 1 takes only our guarded policy (the seed has no stage-1 cache)
SEED_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Setting:
    """One user-facing setting: default, range (or choices) and a one-line help, shared by CLI and nodes."""

    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple | None = None


_SR3, _REFINE, _CAPTION = SR3SamplerOptions(), RefineOptions(), CaptionOptions()
SETTINGS: dict[str, Setting] = {
    "scale": Setting(8, "upscale factor (the released SR3 model is 8x)", choices=SCALES),
    "seed": Setting(0, "seeds every random draw: the same seed gives the same result on the same device",
                    min=0, max=SEED_MAX, step=1),
    "stage1_sampler": Setting(_SR3.sampler, "SR3 sampler: faithful = the seed's 500-step ancestral DDPM; "
                              "ddim / dpmpp are fast solvers", choices=SAMPLERS),
    "stage1_steps": Setting(0, "SR3 steps; 0 = the sampler's default (500 faithful, 50 ddim/dpmpp)",
                            min=0, max=2000, step=1),
    "tile_size": Setting(_SR3.tile_size, "stage-1 tile edge in output pixels (224 = SR3's training size); "
                         "0 = whole image, else at least 32", min=0, max=4096, step=8),
    "tile_overlap": Setting(_SR3.tile_overlap, "output pixels shared by neighbouring stage-1 tiles: at most half "
                            "of tile_size (16 for a 32 tile)", min=0, max=2048, step=8),
    "tile_batch": Setting(_SR3.tile_batch, "stage-1 tiles per model call", min=1, max=64, step=1),
    "stage1_cache": Setting("off", "SR3 step cache: off, or fast (reuses the previous noise prediction)",
                            choices=STAGE1_CACHES),
    "caption_max_tokens": Setting(_CAPTION.max_new_tokens, "most tokens generated per caption (seed: 256)",
                                  min=1, max=4096, step=1),
    "caption_temperature": Setting(_CAPTION.temperature, "caption sampling temperature (seed: 0.2); "
                                   "0 = greedy decoding", min=0.0, max=2.0, step=0.01),
    "caption_prompt": Setting(SEED_PROMPT, "the captioner's instruction (default: the seed's analyst prompt)"),
    "preset": Setting("paper", "refiner settings preset (paper: the seed's infer.py settings)",
                      choices=tuple(sorted(PRESETS))),
    "refine_steps": Setting(_REFINE.sampler.steps, "refiner sampling steps (seed: 50)", min=1, max=1000, step=1),
    "cfg_scale": Setting(_REFINE.sampler.cfg_scale, "CFG scale at the end of sampling (seed: 7.5)",
                         min=0.0, max=30.0, step=0.1),
    "cfg_scale_start": Setting(_REFINE.sampler.cfg_scale_start, "CFG scale at the start, linear in sigma "
                               "(seed: 4.0)", min=0.0, max=30.0, step=0.1),
    "control_scale": Setting(_REFINE.sampler.control_scale, "strength of the stage-1 control (0 = plain SDXL)",
                             min=0.0, max=2.0, step=0.05),
    "restoration_scale": Setting(_REFINE.sampler.restoration_scale, "pull toward the stage-1 latent; <= 0 is "
                                 "off (the seed ships it off)", min=-1.0, max=10.0, step=0.1),
    "s_churn": Setting(_REFINE.sampler.s_churn, "EDM churn (seed: 5)", min=0.0, max=100.0, step=0.5),
    "color_fix": Setting(_REFINE.color_fix, "colour correction against the stage-1 image", choices=COLOR_FIXES),
    "min_size": Setting(_REFINE.min_size, "refiner working size: the short side is brought up to at least this "
                        "(seed: 1024), the result resized back to the input size", min=0, max=8192, step=64),
    "latent_tile_size": Setting(_REFINE.latent_tile_size, "refiner latent tile edge (128 = 1024 px) denoised "
                                "and blended every step; 0 = one pass", min=0, max=1024, step=8),
    "positive_prompt": Setting(SEED_POSITIVE_PROMPT, "appended to the caption (default: the seed's)"),
    "negative_prompt": Setting(SEED_NEGATIVE_PROMPT, "the negative prompt (default: the seed's)"),
    "cache": Setting("off", "refiner step cache: seed = the seed's (adaptive threshold 0.3), fast = ours "
                     "(first-block signal, guarded reuse)", choices=tuple(CACHE_PRESETS)),
    "cache_threshold": Setting(0.0, "the cache's relative-difference threshold; 0 = the preset's own "
                               "(seed 0.3, fast 0.2)", min=0.0, max=2.0, step=0.01),
    "dtype": Setting("fp32", "model precision (bf16/fp16 on a GPU)", choices=tuple(DTYPES)),
}


def default(name: str) -> Any:
    return SETTINGS[name].default


@dataclass(frozen=True)
class StepSettings:
    """Steps and step caches of both stages, as one bundle (what the DynamicStepScheduler node outputs).

    Args:
        refine_steps: the refiner's sampling steps (the seed: 50).
        refine_cache: the refiner's step-cache policy.
        stage1_sampler / stage1_steps: SR3's sampler and its steps (None = the sampler's default).
        stage1_cache: the SR3 step cache (off until measured on the real model).
    """

    refine_steps: int = _REFINE.sampler.steps
    refine_cache: CachePolicy = field(default_factory=CachePolicy)
    stage1_sampler: str = _SR3.sampler
    stage1_steps: int | None = None
    stage1_cache: CachePolicy = field(default_factory=CachePolicy)

    @classmethod
    def preset(cls, name: str, **overrides) -> StepSettings:
        """`off`, `seed` or `fast` for the refiner's cache; other fields from `overrides`."""
        if name not in CACHE_PRESETS:
            raise ValueError(f"unknown cache preset {name!r}; choose from {', '.join(CACHE_PRESETS)}")
        return cls(refine_cache=CACHE_PRESETS[name], **overrides)

    @classmethod
    def from_choices(cls, cache: str = "off", refine_steps: int = _REFINE.sampler.steps, cache_threshold: float = 0.0,
                     stage1_sampler: str = _SR3.sampler, stage1_steps: int = 0,
                     stage1_cache: str = "off") -> StepSettings:
        """From user choices (preset names, 0 = default): what the CLI flags and the node's inputs give."""
        if stage1_cache not in STAGE1_CACHES:
            raise ValueError(f"stage1_cache must be one of {', '.join(STAGE1_CACHES)}, got {stage1_cache!r}")
        settings = cls.preset(cache, refine_steps=refine_steps, stage1_sampler=stage1_sampler,
                              stage1_steps=stage1_steps or None, stage1_cache=CACHE_PRESETS[stage1_cache])
        if cache_threshold > 0:
            settings = replace(settings, refine_cache=_with_threshold(settings.refine_cache, cache_threshold),
                               stage1_cache=_with_threshold(settings.stage1_cache, cache_threshold))
        settings.check()
        return settings

    def check(self) -> None:
        if not 1 <= self.refine_steps <= 1000:
            raise ValueError(f"refine_steps must be in 1..1000, got {self.refine_steps}")
        self.refine_cache.check()
        self.apply_to_stage1(SR3SamplerOptions()).check()

    def apply_to_refine(self, base: RefineOptions | None = None) -> RefineOptions:
        """`base` (default: the paper preset) with these steps and this cache."""
        base = base or RefineOptions()
        return replace(base, sampler=replace(base.sampler, steps=self.refine_steps), cache=self.refine_cache)

    def apply_to_stage1(self, base: SR3SamplerOptions | None = None) -> SR3SamplerOptions:
        """`base` (default: the seed's) with this sampler, these steps and this cache."""
        base = base or SR3SamplerOptions()
        return replace(base, sampler=self.stage1_sampler, steps=self.stage1_steps, cache=self.stage1_cache)

    @staticmethod
    def describe(report: CacheReport | None) -> str:
        """One line: which steps were computed and which reused."""
        if report is None or not report.decisions:
            return "no steps run"
        return report.summary()


def _with_threshold(policy: CachePolicy, threshold: float) -> CachePolicy:
    return replace(policy, threshold=threshold) if policy.mode != "off" else policy


@dataclass(frozen=True)
class RunConfig:
    """One run of the pipeline, validated when it is made (a bad setting never reaches a model).

    Attributes:
        scale: 2, 4 or 8.
        seed: seeds stage 1, the caption and the refiner (windows of a scene add their index).
        stage1: SR3's sampler and tiling (tiling also applies to spandrel stage-1 models).
        caption: the captioner's settings; `caption_text` replaces the captioner with given text.
        refine: the refiner's settings; None = stage 1 only (no caption, no refiner).
        preset, dtype: recorded in the run record (what produced these options).
    """

    scale: int = default("scale")
    seed: int = 0
    stage1: SR3SamplerOptions = field(default_factory=SR3SamplerOptions)
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    caption_text: str | None = None
    refine: RefineOptions | None = field(default_factory=RefineOptions)
    preset: str | None = "paper"
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {self.scale}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self.stage1.check()
        self.caption.check()
        if self.refine is not None:
            self.refine.check()

    @property
    def stage1_only(self) -> bool:
        return self.refine is None


def refine_options(preset: str = "paper", step_settings: StepSettings | None = None, **values: Any) -> RefineOptions:
    """A refiner preset with user values applied (None = the preset's); sampler and top-level fields by name."""
    sampler_fields = ("steps", "cfg_scale", "cfg_scale_start", "control_scale", "restoration_scale", "s_churn")
    if preset not in PRESETS:
        raise ValueError(f"unknown refiner preset {preset!r}; choose from {', '.join(PRESETS)}")
    base = PRESETS[preset]
    sampler = {k: v for k, v in values.items() if k in sampler_fields and v is not None}
    top = {k: v for k, v in values.items() if k not in sampler_fields and v is not None}
    if "latent_tile_size" in top and "latent_tile_overlap" not in top:
        top["latent_tile_overlap"] = min(base.latent_tile_overlap, top["latent_tile_size"] // 2)
    options = replace(base, sampler=replace(base.sampler, **sampler), **top)
    return step_settings.apply_to_refine(options) if step_settings is not None else options


def stage1_options(step_settings: StepSettings | None = None, **values: Any) -> SR3SamplerOptions:
    """SR3's options from user values (None = the default; steps 0 = the sampler's default)."""
    values = {k: v for k, v in values.items() if v is not None}
    if values.get("steps") == 0:
        values["steps"] = None
    options = replace(SR3SamplerOptions(), **values)
    return step_settings.apply_to_stage1(options) if step_settings is not None else options
