"""The evaluation protocol's degradation: HR -> LR the way the paper's (and the seed's) LR inputs are made.

Kernel: PIL's bicubic filter (Keys' cubic convolution with a = -0.5, as MATLAB's `imresize`), widened by
the scale when downsampling (antialiasing: support 2 * scale input pixels each side), weights normalised
to sum to 1 for every output pixel (at the image border over the pixels that exist, as PIL does), computed
in float32 (PIL "F" mode, no 8-bit rounding in between), clipped to [0, 1] and then rounded to 8 bits like
a saved PNG (the seed made its LR inputs with PIL on 8-bit images). The HR image is first cropped at the
bottom and right to a multiple of the scale (reported, never silent). Optional extras for robustness
studies, applied in this order: Gaussian blur of the HR image, the downsampling, Gaussian noise, JPEG.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

BASELINES = {"bicubic": "bicubic", "lanczos": "lanczos"}  # method name -> PIL kernel (interpolation baselines)

RESAMPLE_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                    "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class DegradeOptions:
    """How an HR image becomes the LR input (see the module doc); the defaults are the paper's protocol."""

    blur_sigma: float = 0.0      # Gaussian blur of the HR image before downsampling, in HR pixels (0 = none)
    noise_sigma: float = 0.0     # Gaussian noise added to the LR image, in [0, 1] units (0 = none)
    jpeg_quality: int = 0        # JPEG-compress the LR image at this quality, 1..95 (0 = none)
    quantise: bool = True        # round the LR image to 8 bits (as a saved PNG is)

    def check(self) -> None:
        """Refuse settings outside their ranges, naming the flag."""
        if self.blur_sigma < 0:
            raise ValueError(f"--degrade-blur must be >= 0 (a Gaussian sigma in HR pixels), got {self.blur_sigma}")
        if self.noise_sigma < 0:
            raise ValueError(f"--degrade-noise must be >= 0 (a sigma in [0, 1] units), got {self.noise_sigma}")
        if not (self.jpeg_quality == 0 or 1 <= self.jpeg_quality <= 95):
            raise ValueError(f"--degrade-jpeg must be 0 (off) or a JPEG quality in 1..95, got {self.jpeg_quality}")

    def describe(self) -> str:
        """One line naming every step, for the tables and the README."""
        steps = []
        if self.blur_sigma:
            steps.append(f"Gaussian blur sigma {self.blur_sigma:g} HR px")
        steps.append("PIL bicubic (Keys a=-0.5, antialiased) downsampling in float32, clipped to [0, 1]")
        if self.noise_sigma:
            steps.append(f"Gaussian noise sigma {self.noise_sigma:g}")
        if self.quantise:
            steps.append("rounded to 8 bits")
        if self.jpeg_quality:
            steps.append(f"JPEG quality {self.jpeg_quality}")
        return " -> ".join(steps)


def crop_to_multiple(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """Crop (1, 3, H, W) at the bottom/right to multiples of `scale`; returns the crop and the removed
    (rows, columns), or None when nothing was removed. The top-left corner (and a GeoTIFF's origin) stays."""
    height, width = hr.shape[-2:]
    keep_h, keep_w = height - height % scale, width - width % scale
    if keep_h < 1 or keep_w < 1:
        raise ValueError(f"image is {width}x{height}, smaller than the scale {scale}: nothing left to evaluate")
    if (keep_h, keep_w) == (height, width):
        return hr, None
    return hr[..., :keep_h, :keep_w], (height - keep_h, width - keep_w)


def pil_resize(image: torch.Tensor, size: tuple[int, int], kernel: str = "bicubic") -> torch.Tensor:
    """Resize (1, C, H, W) to `size` = (height, width) with PIL's `kernel` in float32, per channel (PIL
    antialiases when downsampling); the result is clipped to [0, 1]."""
    height, width = size
    planes = image.detach().float().cpu().numpy()[0]
    out = np.stack([np.asarray(Image.fromarray(plane, mode="F").resize((width, height), RESAMPLE_FILTERS[kernel]))
                    for plane in planes])
    return torch.from_numpy(out)[None].clamp_(0.0, 1.0)


def bicubic_downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """(1, 3, H, W) with H, W multiples of `scale` -> (1, 3, H / scale, W / scale) with the protocol's kernel."""
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"{width}x{height} is not a multiple of the scale {scale}: crop_to_multiple first")
    return pil_resize(hr, (height // scale, width // scale), "bicubic")


def image_seed(seed: int, image_id: str) -> int:
    """A per-image seed for the random parts of the degradation, stable across runs and resumes."""
    return (seed * 1_000_003 + zlib.crc32(image_id.encode("utf-8", "surrogateescape"))) % 2**63


def degrade(hr: torch.Tensor, scale: int, options: DegradeOptions, seed: int = 0) -> torch.Tensor:
    """HR (1, 3, H, W) in [0, 1], H and W multiples of `scale` -> the LR input (1, 3, H / s, W / s) in [0, 1]."""
    if options.blur_sigma:
        hr = _gaussian_blur(hr, options.blur_sigma)
    lr = bicubic_downsample(hr, scale)
    if options.noise_sigma:
        generator = torch.Generator().manual_seed(seed)
        lr = (lr + options.noise_sigma * torch.randn(lr.shape, generator=generator)).clamp_(0.0, 1.0)
    if options.quantise or options.jpeg_quality:
        lr = lr.mul(255).round_().div_(255)
    if options.jpeg_quality:
        lr = _jpeg(lr, options.jpeg_quality)
    return lr


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian (radius ceil(3 sigma), edges replicated) on (1, C, H, W)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).float()
    channels = image.shape[1]
    padded = torch.nn.functional.pad(image.float(), (radius, radius, radius, radius), mode="replicate")
    rows = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return torch.nn.functional.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode (1, 3, H, W) as a JPEG of `quality` (4:2:0, Pillow's encoder) and decode it again."""
    array = image[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(decoded).permute(2, 0, 1)[None]


def upsample_baseline(lr: torch.Tensor, scale: int, kernel: str) -> torch.Tensor:
    """The `bicubic` / `lanczos` baselines: (1, 3, h, w) -> (1, 3, h * s, w * s) with PIL's kernel, float32."""
    height, width = lr.shape[-2:]
    return pil_resize(lr, (height * scale, width * scale), kernel)
