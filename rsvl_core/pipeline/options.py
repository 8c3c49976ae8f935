"""Run configuration: the per-run settings that CLI flags and node inputs share (`SETTINGS`), and their one builder.

`SETTINGS` holds each shared setting's target, default, range and help; the step settings and presets live here
too. Job-level options (inputs and outputs, device, placement, windows, the captioner's attention and
quantization, eval's methods, Ray) are each face's own flags, not in this table.

The command line's flags and the ComfyUI nodes' inputs are generated from `SETTINGS`; both hand plain values to
`RunConfig.from_values` (or, for one node's part of a run, `stage1_options_from` / `caption_options_from` /
`refine_options_from` / `schedule_from`). The option objects validate themselves when made, so stages trust
what they get. Defaults come from the stages' own option classes (the seed's values), so there is one source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..cache.policy import PRESETS as CACHE_PRESETS
from ..cache.policy import CachePolicy, CacheReport
from ..caption.config import ATTENTIONS, QUANTIZATIONS, SEED_PROMPT, CaptionOptions  # noqa: F401  (choices the faces offer, light to import)
from ..jobs.samples import COMBINES, DEFAULT_FEATHER, UncertaintyOptions
from ..kit.devices import DTYPES
from ..refine.options import COLOR_FIXES, PRESETS, SEED_NEGATIVE_PROMPT, SEED_POSITIVE_PROMPT, RefineOptions
from ..scenes.windows import CAPTION_POLICIES
from ..stage1.sampler import SAMPLERS, Stage1Options
from ..stage1.upscaler import SCALES

# What a preset sets beyond the refiner (given values still win): cpu-quick's fast SR3 solver and short caption.
PRESET_RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu-quick": {"stage1_sampler": "dpmpp", "stage1_steps": 20, "caption_max_tokens": 64}}
STAGE1_CACHES = ("off", "fast")  # stage 1 takes only our guarded policy (the seed has no stage-1 cache)
SEED_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Setting:
    """One user-facing setting: where its value goes, default, range (or choices), help and its CLI flags.

    `target` names the field the value lands in: `run.<field>` (RunConfig), `stage1.<field>` (SR3 sampler and
    tiling), `caption.<field>`, `refine.<field>` / `refine.sampler.<field>`, or `schedule.<field>` (the step
    settings both stages share). The CLI flags and the node inputs are generated from this table, and
    `RunConfig.from_values` is the one place that turns its plain values into typed options.
    """

    default: Any
    help: str
    target: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple | None = None
    flags: tuple[str, ...] = ()   # extra CLI spellings beside --<name-with-dashes>
    preset_default: bool = False  # the CLI's default is None: the refiner preset's value

    @property
    def section(self) -> str:
        return self.target.split(".", 1)[0]

    @property
    def kind(self) -> type:
        """The value's Python type (int, float or str), from the default."""
        return type(self.default)


_SR3, _REFINE, _CAPTION = Stage1Options(), RefineOptions(), CaptionOptions()
SETTINGS: dict[str, Setting] = {
    "scale": Setting(8, "upscale factor (the released SR3 model is 8x)", "run.scale", choices=SCALES,
                     flags=("--upscale",)),
    "seed": Setting(0, "seeds every random draw: the same seed gives the same result on the same device",
                    "run.seed", min=0, max=SEED_MAX, step=1),
    "dtype": Setting("fp32", "model precision (bf16/fp16 on a GPU)", "run.dtype", choices=tuple(DTYPES)),
    "stage1_sampler": Setting(_SR3.sampler, "SR3 sampler: faithful = the seed's 500-step ancestral DDPM; "
                              "ddim / dpmpp are fast solvers", "schedule.stage1_sampler", choices=SAMPLERS,
                              flags=("--sampler",)),
    "stage1_steps": Setting(0, "SR3 steps; 0 = the sampler's default (500 faithful, 50 ddim/dpmpp)",
                            "schedule.stage1_steps", min=0, max=2000, step=1, flags=("--steps",)),
    "tile_size": Setting(_SR3.tile_size, "stage-1 (SR3) tile edge in output pixels (224 = SR3's training "
                         "size); 0 = whole image, else at least 32; one-pass upscale models use 512 input px tiles",
                         "stage1.tile_size", min=0, max=4096, step=8),
    "tile_overlap": Setting(_SR3.tile_overlap, "output pixels shared by neighbouring stage-1 tiles: at most half "
                            "of tile_size (16 for a 32 tile)", "stage1.tile_overlap", min=0, max=2048, step=8),
    "tile_batch": Setting(_SR3.tile_batch, "stage-1 tiles per model call", "stage1.tile_batch", min=1, max=64,
                          step=1),
    "stage1_cache": Setting("off", "SR3 step cache: off, or fast (reuses the previous noise prediction)",
                            "schedule.stage1_cache", choices=STAGE1_CACHES),
    "caption_max_tokens": Setting(_CAPTION.max_new_tokens, "most tokens generated per caption (seed: 256)",
                                  "caption.max_new_tokens", min=1, max=4096, step=1),
    "caption_temperature": Setting(_CAPTION.temperature, "caption sampling temperature (seed: 0.2); "
                                   "0 = greedy decoding", "caption.temperature", min=0.0, max=2.0, step=0.01),
    "caption_prompt": Setting(SEED_PROMPT, "the captioner's instruction; <image> marks where the image goes "
                              "(default: the seed's analyst prompt)", "caption.prompt"),
    "preset": Setting("paper", "settings preset (paper: the seed's infer.py settings; cpu-quick: a CPU run in "
                      "minutes: dpmpp 20 SR3 steps, 8 refiner steps at the stage-1 size, 64 caption tokens)",
                      "refine.preset",
                      choices=tuple(sorted(PRESETS))),
    "refine_steps": Setting(_REFINE.sampler.steps, "refiner sampling steps (seed: 50)", "schedule.refine_steps",
                            min=1, max=1000, step=1, preset_default=True),
    "cfg_scale": Setting(_REFINE.sampler.cfg_scale, "CFG scale at the end of sampling (seed: 7.5)",
                         "refine.sampler.cfg_scale", min=0.0, max=30.0, step=0.1, preset_default=True),
    "cfg_scale_start": Setting(_REFINE.sampler.cfg_scale_start, "CFG scale at the start, linear in sigma "
                               "(seed: 4.0)", "refine.sampler.cfg_scale_start", min=0.0, max=30.0, step=0.1,
                               preset_default=True),
    "control_scale": Setting(_REFINE.sampler.control_scale, "strength of the stage-1 control (0 = plain SDXL)",
                             "refine.sampler.control_scale", min=0.0, max=2.0, step=0.05, preset_default=True),
    "restoration_scale": Setting(_REFINE.sampler.restoration_scale, "pull toward the stage-1 latent; <= 0 is "
                                 "off (the seed ships it off)", "refine.sampler.restoration_scale", min=-1.0,
                                 max=10.0, step=0.1, preset_default=True),
    "s_churn": Setting(_REFINE.sampler.s_churn, "EDM churn (seed: 5)", "refine.sampler.s_churn", min=0.0,
                       max=100.0, step=0.5, preset_default=True),
    "color_fix": Setting(_REFINE.color_fix, "colour correction against the stage-1 image", "refine.color_fix",
                         choices=COLOR_FIXES, preset_default=True),
    "min_size": Setting(_REFINE.min_size, "refiner working size: the short side is brought up to at least this "
                        "(seed: 1024), the result resized back to the input size", "refine.min_size", min=0,
                        max=8192, step=64, flags=("--refine-min-size",), preset_default=True),
    "latent_tile_size": Setting(_REFINE.latent_tile_size, "refiner latent tile edge (128 = 1024 px) denoised "
                                "and blended every step; 0 = one pass", "refine.latent_tile_size", min=0, max=1024,
                                step=8, preset_default=True),
    "positive_prompt": Setting(SEED_POSITIVE_PROMPT, "appended to the caption (default: the seed's)",
                               "refine.positive_prompt", preset_default=True),
    "negative_prompt": Setting(SEED_NEGATIVE_PROMPT, "the negative prompt (default: the seed's)",
                               "refine.negative_prompt", preset_default=True),
    "cache": Setting("off", "refiner step cache: seed = the seed's (adaptive threshold 0.3), fast = ours "
                     "(first-block signal, guarded reuse)", "schedule.cache", choices=tuple(CACHE_PRESETS)),
    "max_vram": Setting("", "GPU memory budget, e.g. 12G or 8G: picks placement, tiles, weight storage and UNet "
                        "block offload so the predicted peak fits (refuses when nothing does); empty = no plan",
                        "run.max_vram"),
    "cache_threshold": Setting(0.0, "the cache's relative-difference threshold; 0 = the preset's own "
                               "(seed 0.3, fast 0.2)", "schedule.cache_threshold", min=0.0, max=2.0, step=0.01),
    "samples": Setting(1, "stochastic runs per image (seeds seed..seed+N-1; the caption is made once): N >= 2 "
                       "writes an uncertainty layer (per-pixel std across samples, 8-bit levels) beside the output",
                       "uncertainty.samples", min=1, max=64, step=1),
    "combine": Setting("first", "the output from N samples: first (the single-run output), median or mean",
                       "uncertainty.combine", choices=COMBINES),
    "guard": Setting(0.0, "hallucination guard: where the samples' std exceeds this many 8-bit levels, fall back "
                     "to the stage-1 image (feathered); 0 = off", "uncertainty.guard", min=0.0, max=255.0, step=0.5),
    "guard_feather": Setting(DEFAULT_FEATHER, "output pixels over which the guard's fallback fades out",
                             "uncertainty.feather", min=0, max=256, step=1),
    "uncertainty_band": Setting(False, "GeoTIFF outputs: the uncertainty as an extra band of the output instead "
                                "of a separate layer", "uncertainty.band"),
}
# How inputs are read and large scenes windowed: job options (`jobs.SceneOptions`, built by `jobs.scene_options_from`),
# not a RunConfig's, but declared once here as well: `rsvl upscale`'s scene flags and the scene nodes' inputs are
# generated from these rows. "" and "auto" leave the choice to the reader (the type's range, all windows' rules).
SCENE_SETTINGS: dict[str, Setting] = {
    "bands": Setting("", "GeoTIFF bands to use as R,G,B, 1-based (e.g. 3,2,1; empty: 1,2,3, or 1 for one band)",
                     "scene.bands"),
    "stretch": Setting("auto", "GeoTIFF value scaling: percentile (auto's choice for non-8-bit data) or none (divide "
                       "by the type's maximum; auto's choice for 8-bit); recorded in the run record", "scene.stretch",
                       choices=("auto", "percentile", "none")),
    "percentiles": Setting("", "low,high percentiles of the stretch (empty: 2,98)", "scene.percentiles"),
    "window_size": Setting(0, "process large scenes in windows of this many input pixels (0 = whole image)",
                           "scene.windows.size", min=0, max=16384, step=8),
    "window_overlap": Setting(16, "input pixels shared by neighbouring windows (less than half the window size)",
                              "scene.windows.overlap", min=0, max=8191, step=1),
    "caption_per": Setting("scene", "windowed scenes: scene = caption one downsampled overview and guide every "
                           "window with it (one captioner run per scene); window = caption each window",
                           "scene.windows.caption", choices=CAPTION_POLICIES),
    "cog": Setting(False, "write GeoTIFF outputs as Cloud-Optimised GeoTIFFs (internal tiles, overviews, deflate; "
                   "needs rio-cogeo, in the [geo] extra)", "job.cog"),
}
SECTIONS = ("run", "stage1", "caption", "refine", "schedule", "uncertainty")
BUDGET_UNITS = {"g": 2**30, "gb": 2**30, "gib": 2**30, "m": 2**20, "mb": 2**20, "mib": 2**20}


def parse_budget(text: str) -> int:
    """A memory budget like "12G", "8GB", "7.5GiB" or "11000M" in bytes (G = GiB, as cards are sold)."""
    spec = text.strip().lower()
    number = spec.rstrip("gimb")
    unit = spec[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in BUDGET_UNITS or value <= 0:
        raise ValueError(f"max_vram: expected a size like 12G or 8G, got {text!r}")
    return int(value * BUDGET_UNITS[unit])


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
        return settings

    def __post_init__(self) -> None:
        self.check()  # valid by construction

    def check(self) -> None:
        if not 1 <= self.refine_steps <= 1000:
            raise ValueError(f"refine_steps must be in 1..1000, got {self.refine_steps}")
        self.apply_to_stage1(Stage1Options())  # SR3's options refuse a bad sampler, step count or cache

    def apply_to_refine(self, base: RefineOptions | None = None) -> RefineOptions:
        """`base` (default: the paper preset) with these steps and this cache."""
        base = base or RefineOptions()
        return replace(base, sampler=replace(base.sampler, steps=self.refine_steps), cache=self.refine_cache)

    def apply_to_stage1(self, base: Stage1Options | None = None) -> Stage1Options:
        """`base` (default: the seed's) with this sampler, these steps and this cache."""
        base = base or Stage1Options()
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
    """One run of the pipeline, valid by construction (a bad setting never reaches a model).

    Build it from plain values with `RunConfig.from_values(...)` (what every face does). The stage option
    objects inside validate themselves when they are made, so nothing downstream checks them again.

    Attributes:
        scale: 2, 4 or 8.
        seed: seeds stage 1, the caption and the refiner (windows of a scene add their index).
        stage1: SR3's sampler and tiling (tiling also applies to spandrel stage-1 models).
        caption: the captioner's settings; `caption_text` replaces the captioner with given text.
        refine: the refiner's settings; None = stage 1 only (no caption, no refiner).
        preset, dtype: recorded in the run record (what produced these options).
        uncertainty: samples per image, how they are combined, the guard (`uncertainty.py`).
    """

    scale: int = default("scale")
    seed: int = 0
    stage1: Stage1Options = field(default_factory=Stage1Options)
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    caption_text: str | None = None
    refine: RefineOptions | None = field(default_factory=RefineOptions)
    preset: str | None = "paper"
    dtype: str = "fp32"
    uncertainty: UncertaintyOptions = field(default_factory=UncertaintyOptions)
    max_vram: str = ""  # a GPU memory budget ("12G"): the run follows `memory_plan.plan_memory`'s plan

    def __post_init__(self) -> None:
        if self.max_vram:
            parse_budget(self.max_vram)
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {self.scale}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be an integer in 0..{SEED_MAX}, got {self.seed!r}")
        if self.seed + self.uncertainty.samples - 1 > SEED_MAX:
            raise ValueError(f"seed {self.seed} + {self.uncertainty.samples} samples passes {SEED_MAX}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.refine is None and self.caption_text is not None:
            raise ValueError("caption text has no effect when stage 1 runs alone (the caption only guides the "
                             "refiner)")

    @property
    def stage1_only(self) -> bool:
        return self.refine is None

    @property
    def sample_seeds(self) -> list[int]:
        """The seed of each sample: seed, seed + 1, ... (one sample: just the seed)."""
        return [self.seed + k for k in range(self.uncertainty.samples)]

    @classmethod
    def from_values(cls, *, stage1_only: bool = False, caption_text: str | None = None, **values: Any) -> RunConfig:
        """The run's options from plain values named as in `SETTINGS` (None or absent = the default)."""
        given = given_values(values)
        given = {**PRESET_RUN_DEFAULTS.get(given.get("preset", ""), {}), **given}
        schedule = schedule_from(given)
        preset = given.get("preset", default("preset"))
        return cls(scale=int(given.get("scale", default("scale"))), seed=given.get("seed", default("seed")),
                   stage1=stage1_options_from(given, schedule), caption=caption_options_from(given),
                   caption_text=caption_text, refine=None if stage1_only else refine_options_from(given, schedule),
                   preset=preset, dtype=given.get("dtype", default("dtype")),
                   uncertainty=UncertaintyOptions(**fields_of("uncertainty", given)),
                   max_vram=given.get("max_vram", default("max_vram")))


def given_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that were given (None = not given), refusing any name `SETTINGS` does not know."""
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    return {name: value for name, value in values.items() if value is not None}


def fields_of(section: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """{field: value} of the given settings whose target is directly in `section` (e.g. "refine.sampler")."""
    out = {}
    for name, value in given.items():
        owner, _, leaf = SETTINGS[name].target.rpartition(".")
        if owner == section:
            out[leaf] = value
    return out


def schedule_from(values: Mapping[str, Any]) -> StepSettings:
    """Steps and step caches of both stages (the DynamicStepScheduler's output) from plain values."""
    given = given_values(values)
    steps = fields_of("schedule", given)
    preset = refine_preset(given.get("preset", default("preset")))
    return StepSettings.from_choices(cache=steps.get("cache", "off"),
                                     refine_steps=steps.get("refine_steps", preset.sampler.steps),
                                     cache_threshold=steps.get("cache_threshold", 0.0),
                                     stage1_sampler=steps.get("stage1_sampler", _SR3.sampler),
                                     stage1_steps=steps.get("stage1_steps", 0),
                                     stage1_cache=steps.get("stage1_cache", "off"))


def stage1_options_from(values: Mapping[str, Any], schedule: StepSettings | None = None) -> Stage1Options:
    """SR3's sampler and tiling; a schedule (given or built from the same values) sets sampler, steps, cache."""
    given = given_values(values)
    schedule = schedule if schedule is not None else schedule_from(given)
    return schedule.apply_to_stage1(replace(Stage1Options(), **fields_of("stage1", given)))


def caption_options_from(values: Mapping[str, Any]) -> CaptionOptions:
    """The captioner's options; temperature 0 means greedy decoding."""
    given = given_values(values)
    fields = fields_of("caption", given)
    temperature = fields.pop("temperature", _CAPTION.temperature)
    sampled = temperature > 0
    return CaptionOptions(**fields, temperature=temperature if sampled else _CAPTION.temperature, do_sample=sampled,
                          seed=given.get("seed", default("seed")))


def refine_options_from(values: Mapping[str, Any], schedule: StepSettings | None = None) -> RefineOptions:
    """A refiner preset with the given values applied; a schedule (given or built) sets steps and cache."""
    given = given_values(values)
    base = refine_preset(given.get("preset", default("preset")))
    top = fields_of("refine", given)
    top.pop("preset", None)
    if "latent_tile_size" in top and "latent_tile_overlap" not in top:
        top["latent_tile_overlap"] = min(base.latent_tile_overlap, top["latent_tile_size"] // 2)
    options = replace(base, sampler=replace(base.sampler, **fields_of("refine.sampler", given)), **top)
    schedule = schedule if schedule is not None else schedule_from(given)
    return schedule.apply_to_refine(options)


def refine_preset(name: str) -> RefineOptions:
    """A named refiner preset (ValueError naming the choices)."""
    if name not in PRESETS:
        raise ValueError(f"unknown refiner preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
