"""A memory plan from a GPU budget (`--max-vram 12G`): the fastest way to run whose predicted peak fits.

The plan walks a ladder of ways to run, fastest first, and takes the first whose predicted peak
(`memory.py`, at full size for the run's settings and its largest input) stays within `BUDGET_SHARE` of the
budget (the rest is left for the CUDA context, allocator rounding and workspaces the estimate does not see):

1. every model resident; 2. sequential placement (one stage's weights at a time); 3. the captioner's language
model in fp8; 4. the refiner's UNet + control net in fp8 too; 5. the captioner in int4; 6. smaller refiner
tiles (latent 96, VAE encode 512 px, VAE decode 64 latent px); 7. UNet / control-net block swap with 16, 8,
4, 2, then 1 block on the device (`block_swap.py`).

Nothing fits -> `MemoryBudgetError`, one line naming the budget and the smallest plan's predicted peak.
The plan is shown on the CLI's start line and kept in the run record (`record()`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..kit.devices import torch_dtype
from ..kit.errors import RsvlError
from ..pipeline.acceleration import Acceleration
from ..pipeline.options import RunConfig, parse_budget
from ..scenes.sources import header_size
from .block_swap import BlockSwapPlacement
from .estimate import Estimator, GiB, MemoryEstimate, MemorySetting, Storage
from .placement import LocalPlacement, Placement

BUDGET_SHARE = 0.9  # of the budget a plan may fill (the estimate leaves out context, rounding, workspaces)
SWAP_LADDER = (16, 8, 4, 2, 1)
PAPER_INPUT = (28, 28)  # the paper's input (28 -> 224 by SR3): the size planned for when no input is readable


class MemoryBudgetError(RsvlError):
    """No plan's predicted peak fits the budget."""


@dataclass(frozen=True)
class Rung:
    """One way to run: placement, weight storage, smaller refiner tiles or not, block swap."""

    placement: str
    storage: Storage
    small_tiles: bool = False
    swap_blocks: int = 0

    def describe(self) -> str:
        parts = [self.placement, f"captioner {self.storage.caption if self.storage.caption != 'none' else 'as loaded'}",
                 f"refiner {self.storage.refine if self.storage.refine != 'none' else 'as loaded'}"]
        if self.small_tiles:
            parts.append("small refiner tiles")
        if self.swap_blocks:
            parts.append(f"block swap ({self.swap_blocks} blocks)")
        return ", ".join(parts)


def ladder() -> list[Rung]:
    """The ways to run, fastest first (see the module doc)."""
    fp8_both, int4 = Storage("fp8", "fp8"), Storage("int4", "fp8")
    rungs = [Rung("resident", Storage()), Rung("sequential", Storage()), Rung("sequential", Storage("fp8")),
             Rung("sequential", fp8_both), Rung("sequential", int4), Rung("sequential", int4, True)]
    return rungs + [Rung("sequential", int4, True, k) for k in SWAP_LADDER]


@dataclass(frozen=True)
class MemoryPlan:
    """The chosen way to run and its prediction; `apply` / `placement_for` / `acceleration` carry it out."""

    budget: int
    budget_text: str
    rung: Rung
    estimate: MemoryEstimate

    @property
    def predicted_peak(self) -> int:
        return self.estimate.peak

    def describe(self) -> str:
        """The CLI's start line."""
        stages = ", ".join(f"{name} {s.peak / GiB:.1f}" for name, s in self.estimate.stages.items())
        size = self.estimate.setting.input_size
        return (f"memory plan for {self.budget_text} ({size[1]}x{size[0]} input): {self.rung.describe()}; "
                f"predicted peak {self.predicted_peak / GiB:.1f} GiB ({stages})")

    def record(self) -> dict:
        """For the run record."""
        return {"max_vram": self.budget_text, "plan": self.rung.describe(), **self.estimate.record()}

    def apply(self, config: RunConfig) -> RunConfig:
        """A run's options with the plan's tiles (only smaller than the user's, never larger)."""
        if config.refine is None or not self.rung.small_tiles:
            return config
        return replace(config, refine=small_refine_tiles(config))

    def acceleration(self, base: Acceleration | None = None) -> Acceleration:
        """`base` with fp8 refiner weights when the plan stores them so."""
        base = base or Acceleration()
        return replace(base, fp8=base.fp8 or self.rung.storage.refine == "fp8")

    def placement_for(self, device: torch.device) -> Placement:
        if self.rung.swap_blocks:
            return BlockSwapPlacement(device, self.rung.placement, self.rung.swap_blocks)
        return LocalPlacement(device, self.rung.placement)

    @property
    def caption_storage(self) -> str:
        return self.rung.storage.caption


def small_refine_tiles(config: RunConfig):
    """The refiner's options with tiles at most latent 96 / VAE encode 512 px / VAE decode 64 latent px."""
    refine = config.refine
    tile = min(refine.latent_tile_size or 96, 96)
    return replace(refine, latent_tile_size=tile, latent_tile_overlap=min(refine.latent_tile_overlap, tile // 2),
                   vae_encode_tile=min(refine.vae_encode_tile or 512, 512),
                   vae_decode_tile=min(refine.vae_decode_tile or 64, 64))


def setting_for(config: RunConfig, rung: Rung, input_size: tuple[int, int]) -> MemorySetting:
    """What the estimator needs for one rung of one run (the captioner counts only when it runs)."""
    dtype = torch_dtype(config.dtype)
    refine = config.refine
    if refine is not None and rung.small_tiles:
        refine = small_refine_tiles(config)
    captioned = config.refine is not None and config.caption_text is None
    return MemorySetting(input_size=input_size, scale=config.scale, dtype=dtype, stage1=config.stage1,
                         caption=config.caption if captioned else None, refine=refine, storage=rung.storage,
                         placement=rung.placement, swap_blocks=rung.swap_blocks)


def plan_memory(config: RunConfig, input_size: tuple[int, int] = PAPER_INPUT, budget: str | None = None,
                estimator: Estimator | None = None, caption_only: bool = False) -> MemoryPlan:
    """The first rung whose predicted peak fits `budget` (default: `config.max_vram`); MemoryBudgetError if none.
    `caption_only`: the captioner alone, on `input_size` (`rsvl caption`)."""
    text = budget or config.max_vram
    if not text:
        raise ValueError("max_vram: a budget is needed to plan, e.g. 12G")
    limit = parse_budget(text)
    estimator = estimator or Estimator()
    estimate = None
    for rung in ladder():
        setting = setting_for(config, rung, input_size)
        if caption_only:
            setting = replace(setting, only=("caption",), scale=1, caption=config.caption)
        estimate = estimator.estimate(setting)
        if estimate.peak <= limit * BUDGET_SHARE:
            return MemoryPlan(limit, text, rung, estimate)
    worst = max(estimate.stages.values(), key=lambda s: s.peak)
    hint = {"caption": "; --caption TEXT skips the captioner", "refine": "; --stage1-only skips the refiner"}
    hint = " (--dtype bf16 halves the weights)" if config.dtype == "fp32" else hint.get(worst.stage, "")
    raise MemoryBudgetError(
        f"--max-vram {text}: nothing fits; the smallest plan ({rung.describe()}) predicts "
        f"{estimate.peak / GiB:.1f} GiB ({worst.stage} {worst.peak / GiB:.1f} GiB), more than "
        f"{BUDGET_SHARE:.0%} of {limit / GiB:.1f} GiB{hint}")


def largest_input_size(paths: Iterable[Path], window: int = 0) -> tuple[int, int]:
    """(height, width) of the largest input whose header PIL (or GDAL, for GeoTIFFs and other rasters) reads
    (windows cap it); the paper's size if none."""
    best = None
    for path in paths:
        size = header_size(Path(path))
        if size is None:
            continue
        height, width = size
        if window:
            height, width = min(height, window), min(width, window)
        if best is None or height * width > best[0] * best[1]:
            best = (height, width)
    return best or PAPER_INPUT


def plan_for_run(config: RunConfig, inputs: Iterable[Path], window: int = 0) -> MemoryPlan | None:
    """The plan of a run with `--max-vram` (None without one), for its largest input."""
    if not config.max_vram:
        return None
    return plan_memory(config, largest_input_size(inputs, window))


def plan_for_configs(configs: Sequence[RunConfig], input_size: tuple[int, int]) -> MemoryPlan | None:
    """One plan that every configuration fits (`rsvl eval`'s methods share their models): the slowest rung any
    of them needs (None without `--max-vram`)."""
    configs = [c for c in configs if c.max_vram]
    if not configs:
        return None
    rungs = ladder()
    plans = [plan_memory(c, input_size) for c in configs]
    return max(plans, key=lambda p: (rungs.index(p.rung), p.predicted_peak))


def plan_for_captions(config: RunConfig, inputs: Iterable[Path], overview: int) -> MemoryPlan | None:
    """The plan of `rsvl caption --max-vram` (None without one): the captioner alone, on the largest input's
    overview (at most `overview` pixels a side, as the job reads it)."""
    if not config.max_vram:
        return None
    height, width = largest_input_size(inputs)
    shrink = min(1.0, overview / max(height, width))
    return plan_memory(config, (max(1, round(height * shrink)), max(1, round(width * shrink))), caption_only=True)
