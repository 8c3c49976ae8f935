"""What the pipeline needs from each stage: three small protocols, and the result of stage 1.

The pipeline speaks to stage 1, the captioner and the refiner only through these. Each stage declares
its torch modules (`modules()`), so placement, offload and ComfyUI's memory manager move exactly those
parts; nothing is found by probing attributes. Implementations: `stage1.SR3Stage1`,
`stage1.SpandrelStage1`, `caption.Captioner`, `refine.Refiner`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .cache.policy import CacheReport
from .kit.progress import ProgressCallback


@dataclass
class Stage1Result:
    """Stage 1's image and what the run record says about how it was made."""

    image: torch.Tensor                      # (B, 3, H * scale, W * scale) float in [0, 1]
    record: dict[str, Any] = field(default_factory=dict)
    cache: CacheReport | None = None         # step-cache decisions when a cache ran


@runtime_checkable
class Stage1(Protocol):
    """Low-resolution image -> image at exactly input x scale, from the image alone (no text, no guidance)."""

    kind: str  # "sr3" or "spandrel"

    @property
    def device(self) -> torch.device: ...

    def modules(self) -> dict[str, torch.nn.Module]: ...

    def upscale(self, image: torch.Tensor, scale: int, options: Any, seed: int,
                callback: ProgressCallback | None = None, origin: tuple[int, int] | None = None) -> Stage1Result:
        """`origin`: this image's top-left (y, x) in a larger scene's input pixels; when given, random draws
        are keyed by scene position (`noise.NoiseField`), so overlapping windows agree."""


@runtime_checkable
class CaptionStage(Protocol):
    """Image -> one caption per image, computed where its declared modules are."""

    def modules(self) -> dict[str, torch.nn.Module]: ...

    def caption(self, image: torch.Tensor, options: Any, callback: ProgressCallback | None = None) -> list[str]: ...


@runtime_checkable
class RefineStage(Protocol):
    """Stage-1 image + caption -> refined image of the same size (see `refine.refine_image`)."""

    @property
    def device(self) -> torch.device: ...

    def modules(self) -> dict[str, torch.nn.Module]: ...
