"""Stage 1 with any single-image SR model spandrel knows (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, SPAN, ...).

A deterministic alternative to SR3: one forward pass per tile instead of hundreds of denoising steps. The
model runs at its native scale over overlapping tiles blended in output space; when the requested scale
differs from the native one the result is resampled with a stated filter, and the run record says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..kit.devices import torch_dtype
from ..kit.errors import CheckpointError
from ..kit.progress import ProgressCallback, report
from ..kit.tiling import Feather, TileFit, TileGrid
from ..weights.checkpoint import read_state_dict
from .backends import TileRunner, tile_runner
from .loader import SR3Model
from .registry import load_architecture
from .upscaler import check_image_batch

if TYPE_CHECKING:
    import spandrel

SPANDREL_EXPECTED = (
    "a single-image super-resolution checkpoint that spandrel recognises "
    "(ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, SPAN, ...)"
)
RESAMPLE_FILTER = "bicubic (antialiased), torch.nn.functional.interpolate"
MIN_TILE = 16  # input pixels: where halving the tile after running out of memory stops (or the model's minimum)

_PURPOSE_WORDS = {
    "Restoration": "an image-restoration model (output the same size as the input)",
    "FaceSR": "a face-restoration model (for aligned face crops)",
    "Inpainting": "an inpainting model (image + mask in)",
}


@dataclass
class SpandrelModel:
    """A loaded one-pass SR model (eval mode, no gradients), the file it came from and where its forward runs.

    `descriptor` is spandrel's image-model descriptor, or rsvl's own for the architectures it builds itself
    (`compact.CompactDescriptor`: the same attributes and call)."""

    descriptor: Any
    path: Path | None = None
    backend: str | None = None  # one of backends.BACKENDS; None: RSVL_STAGE1_BACKEND, else "auto"

    def runner(self) -> TileRunner:
        """The forward on one batch of tiles, on the backend chosen for this model (built once, cached)."""
        return tile_runner(self.descriptor, self.backend)

    @property
    def architecture(self) -> str:
        """Spandrel's display name of the architecture, e.g. "ESRGAN" or "RealESRGAN Compact"."""
        return self.descriptor.architecture.name

    @property
    def native_scale(self) -> int:
        """The factor the network itself upscales by (inferred by spandrel from the weights)."""
        return int(self.descriptor.scale)

    @property
    def supports_half(self) -> bool:
        return bool(self.descriptor.supports_half)

    @property
    def supports_bfloat16(self) -> bool:
        return bool(self.descriptor.supports_bfloat16)

    @property
    def device(self) -> torch.device:
        return next(self.descriptor.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.descriptor.model.parameters()).dtype

    def modules(self) -> dict[str, torch.nn.Module]:
        """The torch modules to place or offload (one: the network under "model")."""
        return {"model": self.descriptor.model}


def load_spandrel_stage1(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    state: dict[str, torch.Tensor] | None = None,
) -> SpandrelModel:
    """Load a single-image SR checkpoint through the stage-1 registry (`registry.load_architecture`).

    Args:
        path: `.safetensors` or `.pth`/`.pt`/`.ckpt` (read with `weights_only=True`; no pickled code runs).
        device: where the model is placed.
        dtype: float32, float16 or bfloat16; a half type the architecture does not support is refused.
        state: the file's tensors when the caller has read them already (`read_state_dict`).
    Raises:
        CheckpointError: unreadable file, unknown architecture, keys that do not fit, or not an RGB SR model.
        ValueError: a dtype the architecture does not support.
    """
    path = Path(path)
    state = read_state_dict(path, SPANDREL_EXPECTED) if state is None else state
    descriptor = load_architecture(state, path)
    if isinstance(descriptor, SR3Model):
        raise CheckpointError(path, "is an SR3 generator, not a spandrel model (load it with load_stage1)",
                              SPANDREL_EXPECTED)
    return spandrel_model(descriptor, path, device, dtype)


def spandrel_model(descriptor: Any, path: Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> SpandrelModel:
    """A loaded spandrel descriptor as stage 1: refused unless RGB -> larger RGB, in a dtype it supports, placed."""
    dtype = torch_dtype(dtype)
    _check_is_rgb_sr(descriptor, path)
    name = descriptor.architecture.name
    if dtype == torch.float16 and not descriptor.supports_half:
        instead = "float32 or bfloat16" if descriptor.supports_bfloat16 else "float32"
        raise ValueError(f"{name} does not support float16 (spandrel: supports_half=False); use {instead}")
    if dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        raise ValueError(f"{name} does not support bfloat16 (spandrel: supports_bfloat16=False); use float32")
    descriptor.to(device=torch.device(device), dtype=dtype)
    descriptor.eval()
    descriptor.model.requires_grad_(False)
    return SpandrelModel(descriptor=descriptor, path=path)


def _check_is_rgb_sr(descriptor: Any, path: Path) -> None:
    """Refuse anything that is not RGB image -> larger RGB image, saying what the file is instead (an image model's
    purpose is SR, FaceSR or Restoration; an image + mask model's is Inpainting)."""
    name = descriptor.architecture.name
    if descriptor.purpose != "SR":
        what = _PURPOSE_WORDS.get(descriptor.purpose, f"a {descriptor.purpose} model")
        raise CheckpointError(
            path, f"is a {name} checkpoint for {what}, scale {descriptor.scale}, not single-image super-resolution",
            SPANDREL_EXPECTED,
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise CheckpointError(
            path, f"is a {name} SR model with {descriptor.input_channels} input and {descriptor.output_channels} "
            "output channels; stage 1 needs RGB in and out (3 and 3)", SPANDREL_EXPECTED,
        )


@dataclass(frozen=True)
class SpandrelOptions:
    """How a spandrel model is run over an image."""

    tile_size: int = 256  # tile edge in input pixels; 0 runs the whole image at once
    tile_overlap: int = 16  # input pixels shared by neighbouring tiles (context + cross-fade); used once tiled
    tile_batch: int = 1  # tiles per forward pass

    def __post_init__(self) -> None:
        self.check()  # valid by construction

    def check(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.tile_size < 0:
            raise ValueError(f"tile_size must be >= 0 (0 = whole image), got {self.tile_size}")
        if self.tile_overlap < 0:
            raise ValueError(f"tile_overlap must be >= 0, got {self.tile_overlap}")
        if self.tile_size and self.tile_overlap >= self.tile_size:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be smaller than tile_size ({self.tile_size})")
        if self.tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {self.tile_batch}")


def upscale_spandrel(
    model: SpandrelModel,
    image: torch.Tensor,
    scale: int,
    options: SpandrelOptions | None = None,
    callback: ProgressCallback | None = None,
) -> tuple[torch.Tensor, dict]:
    """Super-resolve with a spandrel model: native-scale tiles, blended, then resampled to `scale` if needed.

    Args:
        model: from :func:`load_spandrel_stage1`.
        image: (B, 3, H, W) float in [0, 1], any size and aspect ratio (nothing is cropped).
        scale: output / input size, an integer >= 1.
        options: tiling (default: 256-pixel tiles, 16 pixels overlap).
        callback: progress as (tiles done, tiles, "stage1", None) after each batch of tiles.
    Returns:
        (B, 3, H * scale, W * scale) float32 in [0, 1] on the model's device, and the run-record entry:
        architecture, native_scale, applied_scale (native), resampled, resample_filter, tiles, tiling (the
        tile size used: halved from the one asked while the model ran out of memory, see `TileFit`), backend
        (which runtime ran the network, `backends.py`) and backend_fallback (why another did not, if asked for).
    """
    # 1. check inputs
    options = options or SpandrelOptions()
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    check_image_batch(image)
    native = model.native_scale
    height, width = image.shape[-2:]
    runner = model.runner()

    # 2. the network at its native scale, tile by tile; under no_grad rather than inference mode, so that the
    # caller gets an ordinary tensor that later in-place operations may modify (an inference tensor would refuse
    # them) without a copy of the whole output where the runtime gave one (ncnn, or tiles blended here)
    with torch.no_grad():
        lowres = image.to(device=model.device, dtype=model.dtype)
        native_out, tiles, fit = _run_native(model.descriptor, runner, lowres, native, options, callback)

        # 3. to the requested scale
        resampled = native != scale
        if resampled:
            out = F.interpolate(native_out, size=(height * scale, width * scale), mode="bicubic",
                                align_corners=False, antialias=True)
        else:  # spandrel's call makes inference tensors: a single tile from it is copied out of inference mode
            copy = native_out.is_inference() and not torch.is_inference_mode_enabled()
            out = native_out.clone() if copy else native_out
        del native_out
        out.clamp_(0.0, 1.0)
    info = {
        "architecture": model.architecture,
        "native_scale": native,
        "applied_scale": native,
        "resampled": resampled,
        "resample_filter": RESAMPLE_FILTER if resampled else None,
        "tiles": tiles,
        "tiling": fit.record(),
        **runner.record(),
    }
    return out, info


def _run_native(
    descriptor: Any,
    runner: TileRunner,
    lowres: torch.Tensor,
    native: int,
    options: SpandrelOptions,
    callback: ProgressCallback | None,
) -> tuple[torch.Tensor, int, TileFit]:
    """(B, 3, H * native, W * native) float32 from overlapping tiles, the number of tiles, and the tile used.

    The descriptor's call pads each tile to the architecture's size requirements (reflect, then
    replicate) and crops the output back; tiles are planned at a multiple of the size requirement so
    that only tiles touching the image border are ever padded, exactly as the whole image would be.
    Tiles blend with the guarded feather (`Feather.guarded`: the outer quarter of the overlap, which saw
    padding, does not count). Out of memory, the tile is halved and the image run again (`TileFit`).
    """
    height, width = lowres.shape[-2:]
    requirements = descriptor.size_requirements
    multiple = max(1, requirements.multiple_of) if requirements is not None else 1
    minimum = _tile_size_for(requirements, MIN_TILE)
    fit = TileFit(options.tile_size, options.tile_overlap, max(height, width), minimum, multiple,
                  stage="stage 1 (spandrel)")

    def tiled(tile_size: int, overlap: int) -> tuple[torch.Tensor, int]:
        grid = TileGrid.plan(height, width, _tile_size_for(requirements, tile_size), overlap, options.tile_batch,
                             scale=native, feather=Feather.guarded(overlap, native))
        out = grid.blend((runner.run(batch) for batch in grid.batches(lowres)),
                         on_tile=lambda done, total: report(callback, done, total, "stage1"))
        return out, len(grid.tiles)

    out, tiles = fit.run(tiled)
    return out, tiles, fit


def _tile_size_for(requirements: spandrel.SizeRequirements | None, tile_size: int) -> int:
    """`tile_size` raised to the architecture's minimum and rounded up to its multiple (0 stays 0)."""
    if tile_size == 0 or requirements is None:
        return tile_size
    multiple = max(1, requirements.multiple_of)
    size = max(tile_size, requirements.minimum)
    return -(-size // multiple) * multiple
