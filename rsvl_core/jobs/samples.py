"""Where to trust the pixels: N samples of one scene -> a combined image, a per-pixel spread, a guard.

A diffusion stage run with seeds seed .. seed + N - 1 gives N plausible outputs of the same scene. Where
they agree, the detail comes from the input; where they disagree, the model invented it. Everything here is
a pure function of those samples (no models, no files), so the CLI's jobs, `rsvl eval` and the ComfyUI node
share it:

    combine_samples   first | median | mean of the samples
    sample_spread     per-pixel standard deviation across samples, in 8-bit output levels (one band)
    summarise_spread  mean, 95th percentile, fraction above a threshold
    guard_weights / apply_guard
                      where the spread exceeds T, fall back to the stage-1 (fidelity) image; the mask is
                      feathered outward so no seam shows, and pixels above T are replaced exactly
    heat_map          the spread colour-mapped, with a legend strip (a PNG for plain images, an IMAGE in ComfyUI)

Units: the output is written as 8-bit levels (PNG, and GeoTIFF's default uint8), so the spread and the guard
threshold are in levels of 0..255: a spread of 10 means the samples differ by about 10 levels there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

COMBINES = ("first", "median", "mean")
ONE_PASS_KINDS = ("spandrel",)  # stage-1 kinds that are deterministic: the same input gives the same output
LEVELS = 255.0          # output units: 8-bit levels
DEFAULT_FEATHER = 8     # output pixels over which the guard's fallback fades out around replaced pixels
LEGEND_HEIGHT = 28      # pixels of the heat map's legend strip (gradient bar + labels)

# Our sequential colour ramp (dark purple -> red -> orange -> pale yellow): dark = the samples agree,
# bright = they disagree; monotonic in lightness so it reads in greyscale too.
RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                 [250, 193, 39], [252, 255, 164]], dtype=np.float64)


@dataclass(frozen=True)
class UncertaintyOptions:
    """How many samples a run takes and what it makes of them (valid by construction).

    Args:
        samples: stochastic runs per image (seeds seed .. seed + samples - 1); 1 = today's single run.
        combine: the output: "first" (sample 0, the single-run output), "median" or "mean" of the samples.
        guard: spread threshold in 8-bit levels above which the stage-1 image replaces the output; 0 = off.
        feather: output pixels over which the guard's fallback fades out around replaced pixels.
        band: for GeoTIFF outputs, the spread as an extra band of the output instead of a separate layer.
    """

    samples: int = 1
    combine: str = "first"
    guard: float = 0.0
    feather: int = DEFAULT_FEATHER
    band: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or not 1 <= self.samples <= 64:
            raise ValueError(f"samples must be an integer in 1..64, got {self.samples!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {self.combine!r}")
        if not 0 <= self.guard <= LEVELS:
            raise ValueError(f"guard threshold must be in 0..255 (8-bit levels; 0 = off), got {self.guard}")
        if not 0 <= self.feather <= 256:
            raise ValueError(f"guard feather must be in 0..256 output pixels, got {self.feather}")
        if self.samples == 1 and (self.combine != "first" or self.guard > 0 or self.band):
            raise ValueError("--combine, --guard and --uncertainty-band need --samples N with N >= 2 "
                             f"(got samples={self.samples})")

    @property
    def enabled(self) -> bool:
        """Whether the run takes several samples (and so writes an uncertainty layer)."""
        return self.samples >= 2


def deterministic_stage1(stage1_model: object) -> bool:
    """Whether a loaded stage-1 model gives every seed the same image (a one-pass upscale model, not SR3)."""
    return getattr(stage1_model, "kind", None) in ONE_PASS_KINDS


def zero_spread_text(samples: int) -> str:
    """What a run of N samples of a deterministic method is (said and recorded instead of a spread)."""
    return (f"deterministic: the stage-1 upscale model runs alone, so all {samples} samples would be the same "
            f"image and the spread is zero by construction; {samples - 1} run(s) skipped")


@dataclass(frozen=True)
class SpreadSummary:
    """One number set per image: how much the samples disagree."""

    mean: float                 # mean spread, levels
    p95: float                  # 95th-percentile spread, levels
    fraction_above: float       # share of pixels whose spread exceeds the threshold (0 when no threshold)
    threshold: float            # the threshold used (levels; 0 = none)

    def to_dict(self) -> dict[str, float]:
        return {"mean_std": round(self.mean, 4), "p95_std": round(self.p95, 4),
                "fraction_above_threshold": round(self.fraction_above, 6), "threshold": self.threshold}

    def text(self) -> str:
        """One line for a node's STRING output or a log."""
        line = f"spread (std across samples, 8-bit levels): mean {self.mean:.2f}, p95 {self.p95:.2f}"
        if self.threshold > 0:
            line += f"; {100 * self.fraction_above:.2f}% of pixels above {self.threshold:g}"
        return line


def _check_samples(samples: torch.Tensor) -> None:
    if samples.ndim != 4 or samples.shape[0] < 1:
        raise ValueError(f"samples must be (N, C, H, W) with N >= 1, got shape {tuple(samples.shape)}")


def combine_samples(samples: torch.Tensor, how: str = "first") -> torch.Tensor:
    """The output from N samples (N, C, H, W) in [0, 1]: sample 0, the per-pixel median or the mean -> (1, C, H, W).

    The median is the interpolated one (for even N, the mean of the two middle values), so the median of
    identical samples is exactly that sample.
    """
    _check_samples(samples)
    if how not in COMBINES:
        raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {how!r}")
    samples = samples.float()
    if how == "first" or samples.shape[0] == 1:
        return samples[:1].clone()
    if how == "mean":
        return samples.mean(dim=0, keepdim=True)
    return torch.quantile(samples, 0.5, dim=0, keepdim=True)


def sample_spread(samples: torch.Tensor) -> torch.Tensor:
    """Per-pixel standard deviation across N samples (N, C, H, W) in [0, 1] -> (1, 1, H, W) in 8-bit levels.

    The sample standard deviation (Bessel-corrected, N - 1) of each channel, averaged over channels: one band
    that reads as "the samples differ by about this many output levels here". Zero for N = 1.
    """
    _check_samples(samples)
    samples = samples.float()
    if samples.shape[0] == 1:
        return samples.new_zeros(1, 1, *samples.shape[-2:])
    return samples.std(dim=0, correction=1).mean(dim=0, keepdim=True)[None] * LEVELS


def summarise_spread(spread: torch.Tensor, threshold: float = 0.0, valid: torch.Tensor | None = None) -> SpreadSummary:
    """Mean and 95th percentile of a spread map (levels), and the share of pixels above `threshold` (0 = none).

    `valid`: an optional boolean mask of the same (H, W) size; pixels outside it (nodata) are left out.
    """
    values = spread.detach().float().reshape(-1).cpu()
    if valid is not None:
        values = values[valid.reshape(-1).cpu().bool()]
    if values.numel() == 0:
        return SpreadSummary(0.0, 0.0, 0.0, threshold)
    array = values.numpy()
    above = float((array > threshold).mean()) if threshold > 0 else 0.0
    return SpreadSummary(float(array.mean()), float(np.percentile(array, 95)), above, threshold)


def guard_weights(spread: torch.Tensor, threshold: float, feather: int = DEFAULT_FEATHER) -> torch.Tensor:
    """How much of the fallback each pixel takes: 1 where spread > threshold, fading linearly to 0 over
    `feather` pixels (chessboard distance) around them, 0 elsewhere. spread (1, 1, H, W) -> (1, 1, H, W)."""
    hard = (spread > threshold).float()
    weights = hard
    reach = hard
    for step in range(1, feather + 1):
        reach = F.max_pool2d(reach, kernel_size=3, stride=1, padding=1)   # one pixel further out
        weights = torch.maximum(weights, reach * (1 - step / (feather + 1)))
    return weights


def apply_guard(image: torch.Tensor, fallback: torch.Tensor, spread: torch.Tensor, threshold: float,
                feather: int = DEFAULT_FEATHER) -> tuple[torch.Tensor, float]:
    """Replace `image` (1, C, H, W) by `fallback` (the stage-1 image, same shape) where the spread exceeds
    `threshold` (levels), feathered outward; returns (guarded image, fraction of pixels replaced fully).

    Pixels above the threshold take the fallback exactly; pixels more than `feather` pixels away from any of
    them keep `image` exactly; in between the two are mixed linearly, so no seam shows.
    """
    if image.shape != fallback.shape:
        raise ValueError(f"guard fallback must match the image: {tuple(fallback.shape)} vs {tuple(image.shape)}")
    if tuple(spread.shape[-2:]) != tuple(image.shape[-2:]):
        raise ValueError(f"spread map {tuple(spread.shape)} does not cover the image {tuple(image.shape)}")
    if threshold <= 0:
        return image, 0.0
    weights = guard_weights(spread.to(image.device).float(), threshold, feather)
    guarded = torch.lerp(image.float(), fallback.to(image.device).float(), weights)
    guarded = torch.where(weights >= 1, fallback.to(image.device).float(), guarded)  # exact where replaced
    return guarded, float((weights >= 1).float().mean())


@dataclass
class SampleSet:
    """What N samples of one image (or window) give: the output, its spread, and the guard's share."""

    image: torch.Tensor         # (1, C, H, W) in [0, 1]: combined, then guarded
    spread: torch.Tensor        # (1, 1, H, W) levels
    fraction_replaced: float


def reduce_samples(samples: torch.Tensor, fallback: torch.Tensor, options: UncertaintyOptions) -> SampleSet:
    """N samples (N, C, H, W) -> combined output (guarded against `fallback` when the guard is on) + spread."""
    combined = combine_samples(samples, options.combine)
    spread = sample_spread(samples)
    guarded, fraction = apply_guard(combined, fallback, spread, options.guard, options.feather)
    return SampleSet(guarded.clamp(0, 1), spread, fraction)


def colour_map(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) spread in levels -> (H, W, 3) uint8 on our ramp, 0 .. vmax (values above vmax saturate)."""
    t = np.clip(np.nan_to_num(values.astype(np.float64)) / max(vmax, 1e-6), 0, 1) * (len(RAMP) - 1)
    low = np.floor(t).astype(int).clip(0, len(RAMP) - 2)
    frac = (t - low)[..., None]
    return np.round(RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).astype(np.uint8)


def heat_map_scale(spread: torch.Tensor | np.ndarray, threshold: float = 0.0) -> float:
    """The heat map's top value: the 99th percentile of the spread (at least 1 level, and above the guard
    threshold so the threshold mark stays on the legend)."""
    values = spread.detach().float().cpu().numpy() if isinstance(spread, torch.Tensor) else np.asarray(spread)
    top = float(np.percentile(values, 99)) if values.size else 1.0
    return max(1.0, top, threshold * 1.25)


def heat_map(spread: torch.Tensor | np.ndarray, threshold: float = 0.0, vmax: float | None = None,
             legend: bool = True) -> np.ndarray:
    """The spread (H, W) or (1, 1, H, W), levels -> (H [+ legend], W, 3) uint8 heat map, with a legend strip
    below: the colour ramp from 0 to `vmax` levels, labelled, and the guard threshold marked when set."""
    values = spread.detach().float().cpu().numpy() if isinstance(spread, torch.Tensor) else np.asarray(spread)
    values = values.reshape(values.shape[-2:])
    vmax = heat_map_scale(values, threshold) if vmax is None else vmax
    picture = colour_map(values, vmax)
    if not legend:
        return picture
    width = picture.shape[1]
    strip = np.full((LEGEND_HEIGHT, width, 3), 255, dtype=np.uint8)
    bar = colour_map(np.linspace(0, vmax, width)[None, :].repeat(10, axis=0), vmax)
    strip[2:12] = bar
    canvas = Image.fromarray(strip)
    draw = ImageDraw.Draw(canvas)
    if threshold > 0:
        x = min(width - 1, round(threshold / vmax * (width - 1)))
        draw.line([(x, 0), (x, 13)], fill=(0, 160, 255), width=1)
    draw.text((1, 14), "0", fill=(0, 0, 0))
    label = f"{vmax:.1f} levels std" + (f" | guard {threshold:g}" if threshold > 0 else "")
    if draw.textlength(label) > width - 14:  # a narrow image: the short form
        label = f"{vmax:.0f}" + (f" | T {threshold:g}" if threshold > 0 else "")
    text_width = draw.textlength(label)
    draw.text((max(10, width - 1 - text_width), 14), label, fill=(0, 0, 0))
    return np.concatenate([picture, np.asarray(canvas)], axis=0)
