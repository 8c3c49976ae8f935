"""DynamicStepScheduler: the step counts, samplers and step-cache policies of both stages in one object.

It is what the ComfyUI node of that name outputs and what `rsvl upscale --schedule` builds; the
stages read their settings from it (`refine_options`, `stage1_options`). Presets:

- `off`:  no cache (the seed's refinement without its cache).
- `seed`: the seed's cache exactly: adaptive threshold (0.3 at the start), signal = the whole UNet
  encoder, the previous denoised output reused as is.
- `fast`: ours: signal = conv_in + the first ResBlock only, fixed threshold, the previous guided
  epsilon re-applied at the current step, never within the first 3 or last 2 steps, at most 3
  reuses in a row. Measured in `benchmarks/step_cache.py` (tiny random SDXL-shaped model, 50 steps:
  2.1x faster than no cache with 0.3 % image drift, where the seed's cache as the seed runs it is
  1.6x faster with 8.9 % drift). Not yet measured on the real weights, so no preset turns it on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .first_block import CachePolicy, CacheReport

PRESETS: dict[str, CachePolicy] = {
    "off": CachePolicy(),
    "seed": CachePolicy.seed(threshold=0.3),
    "fast": CachePolicy(mode="fixed", threshold=0.2, signal_depth=1, reuse="eps", skip_first=3, skip_last=2,
                        max_consecutive=3),
}


@dataclass(frozen=True)
class DynamicStepScheduler:
    """Steps and caching for both stages.

    Args:
        refine_steps: the refiner's sampling steps (the seed: 50).
        refine_cache: the refiner's step-cache policy.
        stage1_sampler / stage1_steps: SR3's sampler ("faithful", "ddim", "dpmpp") and its steps
            (None = the sampler's default: 500 faithful, 50 for the solvers).
        stage1_cache: the SR3 step cache (off until measured on the real model).
    """

    refine_steps: int = 50
    refine_cache: CachePolicy = field(default_factory=CachePolicy)
    stage1_sampler: str = "faithful"
    stage1_steps: int | None = None
    stage1_cache: CachePolicy = field(default_factory=CachePolicy)

    @classmethod
    def preset(cls, name: str, **overrides) -> DynamicStepScheduler:
        """`off`, `seed` or `fast` for the refiner's cache; other fields from `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"unknown cache preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(refine_cache=PRESETS[name], **overrides)

    def check(self) -> None:
        if not 1 <= self.refine_steps <= 1000:
            raise ValueError(f"refine_steps must be in 1..1000, got {self.refine_steps}")
        self.refine_cache.check()
        self.stage1_options().check()

    def refine_options(self, base=None):
        """`base` RefineOptions (default: the paper preset) with this scheduler's steps and cache."""
        from ..refine.refiner import RefineOptions

        base = base or RefineOptions()
        return replace(base, sampler=replace(base.sampler, steps=self.refine_steps), cache=self.refine_cache)

    def stage1_options(self, base=None):
        """`base` SR3SamplerOptions (default: the seed's) with this scheduler's sampler, steps and cache."""
        from ..stage1.sampler import SR3SamplerOptions

        base = base or SR3SamplerOptions()
        return replace(base, sampler=self.stage1_sampler, steps=self.stage1_steps, cache=self.stage1_cache)

    @staticmethod
    def describe(report: CacheReport | None) -> str:
        """One line: which steps were computed and which reused."""
        if report is None or not report.decisions:
            return "no steps run"
        return report.summary()
