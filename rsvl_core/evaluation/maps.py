"""Per-pixel maps of a stochastic method: spread over seeds (uncertainty) and where it hallucinates.

- `<method>_std`: the standard deviation over the N samples (population, per pixel, averaged over RGB), in
  [0, 0.5] for images in [0, 1]; the PNG shows 2 x std as grey levels (white = 0.5, the largest possible).
- `<method>_hallucination`: the share of the N samples in which the pixel is classed as hallucination by
  the opensr-test rule (hallucination.py); the PNG shows it as grey levels (white = every sample). The
  border of `scale` pixels is not scored: 0 in the PNG, nodata (NaN) in the GeoTIFF.
Maps are on the HR grid (the cropped HR image). For a GeoTIFF input they are also written as float32
single-band GeoTIFFs on the HR image's grid (same CRS and transform), so they overlay the scene in a GIS.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..kit.atomic import atomic_path
from .hallucination import HALLUCINATION


def std_map(samples: list[torch.Tensor]) -> torch.Tensor:
    """Per-pixel standard deviation over N >= 2 samples (1, 3, H, W) -> (H, W), averaged over channels."""
    if len(samples) < 2:
        raise ValueError(f"a standard-deviation map needs at least 2 samples, got {len(samples)}")
    stack = torch.cat([s.float() for s in samples])  # (N, 3, H, W)
    return stack.std(dim=0, correction=0).mean(dim=0)


def hallucination_map(class_maps: list[torch.Tensor], height: int, width: int, border: int) -> torch.Tensor:
    """Share of samples whose pixel is classed hallucination, on the full (H, W) grid; NaN in the border."""
    inner = torch.stack([(c == HALLUCINATION).float() for c in class_maps]).mean(0)
    out = torch.full((height, width), float("nan"))
    out[border:height - border, border:width - border] = inner
    return out


def write_map_png(values: torch.Tensor, path: Path, gain: float = 1.0) -> Path:
    """(H, W) values -> an 8-bit grey PNG of clip(gain x value, 0, 1) (NaN -> 0), written atomically."""
    array = np.nan_to_num(values.numpy().astype(np.float64) * gain, nan=0.0)
    grey = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(grey, mode="L").save(tmp, format="PNG")
    return path


def write_map_geotiff(values: torch.Tensor, path: Path, grid, description: str) -> Path:
    """(H, W) float values -> a float32 single-band GeoTIFF on `grid` (a geo.RasterInfo of the HR image,
    cropped to H x W), nodata NaN, written atomically."""
    import rasterio

    height, width = values.shape
    grid = replace(grid, width=width, height=height)  # a bottom/right crop keeps the origin and pixel size
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "float32",
               "crs": grid.crs, "transform": grid.transform, "nodata": float("nan"), "compress": "deflate"}
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dataset:
        dataset.write(values.numpy().astype(np.float32), 1)
        dataset.set_band_description(1, description)
    return path
