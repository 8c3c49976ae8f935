"""Stage-1 models behind one interface (`rsvl_core.stages.Stage1`): SR3, or any SR model spandrel knows.

`load_stage1` reads a weights file once and loads it with one registry load (`registry.load_architecture`:
SR3 and Real-ESRGAN Compact detected by rsvl, then spandrel's architectures; SDXL / SUPIR / LLaVA files refused
by the one family rule).
Add a stage-1 architecture in registry.py; a new kind of stage-1 model (not a spandrel descriptor, not SR3)
also needs a class here with `kind`, `device`, `modules()` and `upscale()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..cache.policy import CacheReport
from ..kit.progress import ProgressCallback
from ..stages import Stage1Result
from ..weights.checkpoint import read_state_dict
from .loader import SR3Model
from .sampler import Stage1Options
from .upscaler import upscale_stage1

if TYPE_CHECKING:
    from .spandrel_sr import SpandrelModel


class _LoadedModel:
    """Where a stage-1 wrapper's loaded model lives and which file it came from."""

    model: SR3Model | SpandrelModel

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def path(self) -> Path | None:
        return self.model.path


@dataclass
class SR3Stage1(_LoadedModel):
    """SR3 as stage 1: diffusion sampling conditioned on the bicubic upsample (the paper's stage 1)."""

    model: SR3Model
    kind: str = "sr3"
    static_loop: bool = False  # the faithful loop without host syncs (a CUDA graph on CUDA): see graphs.py

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.model.unet}

    def upscale(self, image: torch.Tensor, scale: int, options: Stage1Options | None, seed: int,
                callback: ProgressCallback | None = None, origin: tuple[int, int] | None = None) -> Stage1Result:
        options = options or Stage1Options()
        report, tiling = CacheReport(), {}
        out = upscale_stage1(self.model, image, scale, options, seed, callback, report, origin, self.static_loop,
                             tiling)
        record = {"model": "sr3", "sampler": options.sampler, "steps": options.total_steps, "tiling": tiling}
        return Stage1Result(out, record, report if report.decisions else None)


# A one-pass model runs as ComfyUI's "Upscale Image (using Model)" runs it: the whole image when its sides fit
# 512 input pixels, else 512-pixel tiles overlapping by 32; out of memory, the tile is halved (`TileFit`).
ONE_PASS_TILE = 512
ONE_PASS_OVERLAP = 32


@dataclass
class SpandrelStage1(_LoadedModel):
    """A feed-forward SR network (spandrel) as stage 1: one pass per tile, deterministic, no sampler.

    SR3's sampler, steps, seed and tile edge do not apply: the model sees tiles of up to `ONE_PASS_TILE` input
    pixels (halved only after running out of memory); `tile_size` 0 still means the whole image, and
    `tile_batch` is kept.
    """

    model: SpandrelModel
    kind: str = "spandrel"

    def modules(self) -> dict[str, torch.nn.Module]:
        return self.model.modules()

    def upscale(self, image: torch.Tensor, scale: int, options: Stage1Options | None, seed: int,
                callback: ProgressCallback | None = None, origin: tuple[int, int] | None = None) -> Stage1Result:
        from .spandrel_sr import upscale_spandrel

        out, info = upscale_spandrel(self.model, image, scale, self.tiling(options), callback)
        return Stage1Result(out, {"model": "spandrel", **info})

    def tiling(self, options: Stage1Options | None):
        """The one-pass tiling (`ONE_PASS_TILE` input pixels, overlap `ONE_PASS_OVERLAP`; 0 = whole image)."""
        from .spandrel_sr import SpandrelOptions

        tile = 0 if options is not None and options.tile_size == 0 else ONE_PASS_TILE
        batch = options.tile_batch if options is not None else 1
        return SpandrelOptions(tile_size=tile, tile_overlap=ONE_PASS_OVERLAP, tile_batch=batch)

    @classmethod
    def from_descriptor(cls, descriptor, name: str) -> SpandrelStage1:
        """A spandrel descriptor somebody else loaded (ComfyUI's "Load Upscale Model") as stage 1, where and in
        the precision it is; refused unless it is an RGB SR model. `name` stands for the file in messages."""
        from .spandrel_sr import spandrel_model

        parameter = next(descriptor.model.parameters())
        return cls(spandrel_model(descriptor, Path(name), device=parameter.device, dtype=parameter.dtype))


def load_stage1(path: str | Path, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> SR3Stage1 | SpandrelStage1:
    """Load any stage-1 checkpoint with one registry load: SR3, or any architecture spandrel knows."""
    from .registry import EXPECTED_STAGE1, load_architecture
    from .spandrel_sr import spandrel_model

    path = Path(path)
    model = load_architecture(read_state_dict(path, EXPECTED_STAGE1), path)
    if isinstance(model, SR3Model):
        return SR3Stage1(model.to(device=device, dtype=dtype))
    return SpandrelStage1(spandrel_model(model, path, device=device, dtype=dtype))
