"""Colour correction of the refined image against the stage-1 image (wavelet or AdaIN).

The SDXL refiner can drift in colour; the stage-1 (SR3) image is faithful in colour but soft. Both fixes keep the
refined image's detail and take the colour statistics from the stage-1 image:

- ``wavelet``: content's high frequencies + style's low frequency, from a 5-level à-trous (dilated) decomposition
  with a 3x3 binomial kernel. Numerically the same as SUPIR's ``wavelet_reconstruction``.
- ``adain``: adaptive instance normalisation: per-channel mean/std of the content replaced by the style's
  (SUPIR's ``adaptive_instance_normalization``; unbiased variance, eps added before the square root).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIX_METHODS = ("wavelet", "adain", "none")
WAVELET_RADII = (1, 2, 4, 8, 16)
ADAIN_EPS = 1e-5

# 3x3 binomial (Gaussian-like) kernel of the à-trous wavelet transform.
_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def wavelet_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur each channel with the binomial kernel dilated by `radius` (replicate padding keeps the size)."""
    channels = image.shape[1]
    kernel = _KERNEL.to(device=image.device, dtype=image.dtype).expand(channels, 1, 3, 3)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_decomposition(image: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `image` into (high, low) frequencies: high = sum of the per-level details, low = the last blur."""
    high = torch.zeros_like(image)
    low = image
    for level in range(levels):
        blurred = wavelet_blur(low, 2**level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Content's high frequencies plus style's low frequency (keeps detail, takes colour from `style`)."""
    _check_pair(content, style)
    content_high, _ = wavelet_decomposition(content, len(WAVELET_RADII))
    _, style_low = wavelet_decomposition(style, len(WAVELET_RADII))
    return content_high + style_low


def calc_mean_std(image: torch.Tensor, eps: float = ADAIN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std over H*W, shaped (B, C, 1, 1); unbiased variance, eps before sqrt."""
    b, c = image.shape[:2]
    flat = image.reshape(b, c, -1)
    mean = flat.mean(dim=2).reshape(b, c, 1, 1)
    std = (flat.var(dim=2) + eps).sqrt().reshape(b, c, 1, 1)
    return mean, std


def adain_color_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Normalise each content channel to zero mean / unit std, then give it the style's mean and std."""
    _check_pair(content, style)
    content_mean, content_std = calc_mean_std(content)
    style_mean, style_std = calc_mean_std(style)
    return (content - content_mean) / content_std * style_std + style_mean


def apply_color_fix(content: torch.Tensor, style: torch.Tensor, method: str) -> torch.Tensor:
    """Dispatch on `method` ("wavelet", "adain" or "none"); "none" returns `content` unchanged."""
    if method == "wavelet":
        return wavelet_color_fix(content, style)
    if method == "adain":
        return adain_color_fix(content, style)
    if method == "none":
        return content
    raise ValueError(f"color fix method must be one of {', '.join(COLOR_FIX_METHODS)}; got {method!r}")


def _check_pair(content: torch.Tensor, style: torch.Tensor) -> None:
    """Content and style must be B×C×H×W images of the same shape (the fix is pixel-aligned)."""
    if content.ndim != 4:
        raise ValueError(f"color fix: content must be a B×C×H×W tensor, got shape {tuple(content.shape)}")
    if content.shape != style.shape:
        raise ValueError(
            f"color fix: content {tuple(content.shape)} and style {tuple(style.shape)} must have the same shape "
            "(resize the stage-1 image to the refined image's size first)"
        )
