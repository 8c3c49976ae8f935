"""Image files <-> tensors, and the resampling the models were trained with.

Core convention: images are float tensors (B, 3, H, W), RGB, values in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_path
from .errors import InputImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def read_image(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read an image file as (1, 3, H, W) float in [0, 1].

    Returns the tensor and notes on any conversion made (documented, never silent):
    grayscale is replicated to RGB, alpha is dropped, palette images are expanded, 16-bit and
    32-bit integer data are scaled by the full range of their type.
    """
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: input image not found")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path}: file is empty (0 bytes), expected an image")
    try:
        with Image.open(path) as img:
            img.load()
            array, notes = _to_rgb_float(img)
    except Image.DecompressionBombError as exc:
        raise InputImageError(f"{path}: image too large to open safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"{path}: not a readable image ({str(exc).splitlines()[0][:160]})") from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputImageError(f"{path}: image has no pixels")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    return tensor, notes


def _to_rgb_float(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = np.asarray(img, dtype=np.float32) / 65535.0
        notes.append("16-bit grayscale scaled by 1/65535 and replicated to RGB")
        return np.repeat(gray[..., None], 3, axis=2), notes
    if mode == "I":
        raw = np.asarray(img)
        peak = 65535.0 if raw.max(initial=0) <= 65535 else float(2**31 - 1)
        notes.append(f"32-bit integer grayscale scaled by 1/{peak:.0f} and replicated to RGB")
        gray = np.clip(raw.astype(np.float32) / peak, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2), notes
    if mode == "F":
        gray = np.asarray(img, dtype=np.float32)
        notes.append("float grayscale clipped to [0, 1] and replicated to RGB")
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2), notes
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append("alpha channel ignored")
    if mode in ("L", "LA", "1"):
        notes.append("grayscale replicated to RGB")
    elif mode in ("P", "PA"):
        notes.append("palette expanded to RGB")
    elif mode not in ("RGB", "RGBA"):
        notes.append(f"{mode} converted to RGB")
    rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.float32) / 255.0, notes


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8 (rounded)."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {image.shape[0]}")
        image = image[0]
    array = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


def write_image_atomic(image: torch.Tensor, path: str | Path) -> Path:
    """Save an image so that `path` either does not exist or is complete (temp file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # the format comes from the final name, since the temp name ends in ".tmp"
        file_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
        Image.fromarray(to_uint8(image), mode="RGB").save(tmp, format=file_format)
    return path


def bicubic_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (B, C, H, W) in [0, 1] to `size` = (height, width) with PIL's bicubic kernel.

    SR3 was trained on PIL-bicubic-upsampled inputs (a = -0.5; torch's bicubic uses -0.75), so
    the condition image is made the same way: in float to avoid 8-bit rounding, clipped to
    [0, 1] after each pass as the seed's 8-bit path is.
    """
    height, width = size
    batch = image.detach().float().cpu().numpy()
    out = np.empty((*batch.shape[:2], height, width), dtype=np.float32)
    for b in range(batch.shape[0]):
        for c in range(batch.shape[1]):
            # PIL resamples horizontally then vertically and its 8-bit path clips after each pass
            plane = Image.fromarray(batch[b, c], mode="F")
            plane = plane.resize((width, plane.height), Image.Resampling.BICUBIC)
            plane = Image.fromarray(np.clip(np.asarray(plane), 0.0, 1.0), mode="F")
            out[b, c] = np.asarray(plane.resize((width, height), Image.Resampling.BICUBIC))
    return torch.from_numpy(out).clamp_(0.0, 1.0).to(image.device)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
