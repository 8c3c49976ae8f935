"""Stage 2's options (sampler settings, prompts, sizes, tiling) and the seed's preset: plain data, importable
without the networks, so the command line can build its flags before any model library loads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..cache.policy import CachePolicy
from .sampler import RestoreSamplerOptions

_SEED_DEFAULTS = Path(__file__).parent / "configs" / "seed_prompts.json"
COLOR_FIXES = ("wavelet", "adain", "none")


def _seed_prompts() -> tuple[str, str]:
    data = json.loads(_SEED_DEFAULTS.read_text(encoding="utf-8"))
    return data["positive"], data["negative"]


SEED_POSITIVE_PROMPT, SEED_NEGATIVE_PROMPT = _seed_prompts()


@dataclass(frozen=True)
class RefineOptions:
    """One refinement run: sampler settings, prompts, sizes, tiling."""

    sampler: RestoreSamplerOptions = field(default_factory=RestoreSamplerOptions)
    positive_prompt: str = SEED_POSITIVE_PROMPT   # appended to the caption: "<caption> <positive>"
    negative_prompt: str = SEED_NEGATIVE_PROMPT
    color_fix: str = "wavelet"                    # against the stage-1 image: wavelet | adain | none
    min_size: int = 1024                          # the short side is brought up to at least this (seed)
    size_unit: int = 64                           # working sizes are multiples of this (seed)
    latent_tile_size: int = 128                   # latent tile edge for sampling (128 = 1024 px); 0 = no tiling
    latent_tile_overlap: int = 32                 # latent pixels shared by neighbouring tiles
    tile_batch: int = 1                           # latent tiles per network call
    vae_encode_tile: int = 1024                   # pixels; 0 = one pass
    vae_decode_tile: int = 128                    # latent pixels; 0 = one pass
    cache: CachePolicy = field(default_factory=CachePolicy)  # step cache (off by default)
    original_size: tuple[int, int] = (1024, 1024)  # SDXL micro-conditioning, fixed as in the seed
    target_size: tuple[int, int] = (1024, 1024)

    def __post_init__(self) -> None:
        self.check()  # valid by construction: a bad option fails where it is made

    def check(self) -> None:
        """Raise ValueError naming the bad setting, before any heavy work."""
        if self.color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")
        if self.size_unit < 8 or self.size_unit % 8:
            raise ValueError(f"size_unit must be a positive multiple of 8, got {self.size_unit}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")
        if self.latent_tile_size < 0 or self.latent_tile_overlap < 0 or self.tile_batch < 1:
            raise ValueError("latent_tile_size and latent_tile_overlap must be >= 0 and tile_batch >= 1")
        if self.latent_tile_size and self.latent_tile_size % 8:
            raise ValueError(f"latent_tile_size must be a multiple of 8 (UNet strides), got {self.latent_tile_size}")
        if self.latent_tile_size and self.latent_tile_overlap * 2 > self.latent_tile_size:
            raise ValueError(
                f"latent_tile_overlap {self.latent_tile_overlap} is more than half of latent_tile_size "
                f"{self.latent_tile_size}"
            )


# The seed's defaults (infer.py): 50 steps, churn 5, s_noise 1.003, CFG 4 -> 7.5 linear, control 1, restoration off.
# cpu-quick: a first run on a CPU in minutes, not hours: 8 steps at the stage-1 size (no upsizing to 1024 px).
PRESETS: dict[str, RefineOptions] = {"paper": RefineOptions(),
                                     "cpu-quick": RefineOptions(sampler=RestoreSamplerOptions(steps=8), min_size=0)}
