"""Reference and consistency metrics of one SR image, each under the exact name it has in the tables.

Conventions (those of the SR literature, checked against scikit-image in tests/test_eval_metrics.py):
- images are (1, 3, H, W) float in [0, 1], compared in float64 with a data range of 1;
- `border` pixels (the scale) are cropped from every side of the HR-grid images before PSNR/SSIM;
- Y is ITU-R BT.601 luma as MATLAB's `rgb2ycbcr` computes it: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255;
- PSNR = 10 log10(1 / MSE) (inf for identical images); SSIM is Wang et al. (2004): 11x11 Gaussian window
  (sigma 1.5), K1 = 0.01, K2 = 0.03, population covariances, averaged over the valid window positions
  (and over the channels for `ssim_rgb`) — scikit-image's `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)`.
- `lr_consistency_l1`: the SR image brought back to the LR grid with the protocol's own bicubic kernel, mean
  absolute difference to the LR input (0 = SR explains the observation exactly); `spectral_angle_deg`: the
  mean angle, in degrees, between the RGB vectors of that downsampled SR image and the LR input (colour
  shifts, whatever the brightness).
"""

from __future__ import annotations

import math

import torch

from .degrade import bicubic_downsample

REFERENCE_METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
CONSISTENCY_METRICS = ("lr_consistency_l1", "spectral_angle_deg")
BT601_Y = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr, for RGB in [0, 1] -> Y in [16, 235] / 255
SSIM_SIGMA, SSIM_RADIUS, SSIM_K1, SSIM_K2 = 1.5, 5, 0.01, 0.03


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma in [16/255, 235/255], float64."""
    r, g, b = image.double().unbind(1)
    y = (16.0 + BT601_Y[0] * r + BT601_Y[1] * g + BT601_Y[2] * b) / 255.0
    return y[:, None]


def crop_border(image: torch.Tensor, border: int) -> torch.Tensor:
    """Remove `border` pixels from each side of (..., H, W)."""
    if border <= 0:
        return image
    if image.shape[-2] <= 2 * border or image.shape[-1] <= 2 * border:
        raise ValueError(f"a {image.shape[-1]}x{image.shape[-2]} image has nothing left after a {border}-pixel "
                         "border crop")
    return image[..., border:-border, border:-border]


def psnr(test: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB for a data range of 1 (float64); inf when the images are identical."""
    mse = torch.mean((test.double() - reference.double()) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window() -> torch.Tensor:
    taps = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    window = torch.exp(-0.5 * (taps / SSIM_SIGMA) ** 2)
    return window / window.sum()


def _filter_valid(image: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian over (N, 1, H, W), only where the whole window fits (no padding)."""
    window = _gaussian_window().to(image.device)
    rows = torch.nn.functional.conv2d(image, window.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(rows, window.view(1, 1, -1, 1))


def ssim(test: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean SSIM of (B, C, H, W) images over channels and valid window positions (see the module doc)."""
    size = 2 * SSIM_RADIUS + 1
    if min(test.shape[-2:]) < size:
        raise ValueError(f"SSIM needs at least {size}x{size} pixels after the border crop, got "
                         f"{test.shape[-1]}x{test.shape[-2]}")
    x = test.double().reshape(-1, 1, *test.shape[-2:])
    y = reference.double().reshape(-1, 1, *reference.shape[-2:])
    mean_x, mean_y = _filter_valid(x), _filter_valid(y)
    var_x = _filter_valid(x * x) - mean_x**2
    var_y = _filter_valid(y * y) - mean_y**2
    cov = _filter_valid(x * y) - mean_x * mean_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()


def reference_metrics(sr: torch.Tensor, hr: torch.Tensor, border: int) -> dict[str, float]:
    """psnr_y, ssim_y, psnr_rgb, ssim_rgb of SR against HR, both (1, 3, H, W), `border` pixels cropped."""
    if sr.shape != hr.shape:
        raise ValueError(f"SR image is {tuple(sr.shape)} but HR is {tuple(hr.shape)}")
    sr_c, hr_c = crop_border(sr, border), crop_border(hr, border)
    sr_y, hr_y = rgb_to_y(sr_c), rgb_to_y(hr_c)
    return {"psnr_y": psnr(sr_y, hr_y), "ssim_y": ssim(sr_y, hr_y),
            "psnr_rgb": psnr(sr_c, hr_c), "ssim_rgb": ssim(sr_c, hr_c)}


def spectral_angle_deg(test: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean angle in degrees between the per-pixel RGB vectors of two (1, 3, H, W) images (0 where both are
    black; 90 where only one is)."""
    a, b = test.double()[0], reference.double()[0]
    dot = (a * b).sum(0)
    norms = a.norm(dim=0) * b.norm(dim=0)
    cosine = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot))
    angle = torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))
    both_black = (a.norm(dim=0) == 0) & (b.norm(dim=0) == 0)
    return torch.where(both_black, torch.zeros_like(angle), angle).mean().item()


def consistency_metrics(sr: torch.Tensor, lr: torch.Tensor, scale: int) -> dict[str, float]:
    """lr_consistency_l1 and spectral_angle_deg: SR (1, 3, H, W) brought to the LR grid vs LR (1, 3, h, w)."""
    sr_on_lr = bicubic_downsample(sr, scale)
    if sr_on_lr.shape != lr.shape:
        raise ValueError(f"SR image {tuple(sr.shape)} does not match LR {tuple(lr.shape)} at scale {scale}")
    l1 = torch.mean(torch.abs(sr_on_lr.double() - lr.double())).item()
    return {"lr_consistency_l1": l1, "spectral_angle_deg": spectral_angle_deg(sr_on_lr, lr)}
