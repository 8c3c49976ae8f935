"""Image files <-> tensors, and the resampling the models were trained with.

Core convention: images are float tensors (B, 3, H, W), RGB, values in [0, 1].
"""

from __future__ import annotations

import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_path
from .errors import InputImageError

# rasters only GDAL reads (through rasterio, with their georeferencing): JPEG 2000 (how Sentinel-2 ships), GDAL's
# virtual rasters, ERDAS Imagine
GDAL_ONLY_SUFFIXES = (".jp2", ".j2k", ".vrt", ".img")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", *GDAL_ONLY_SUFFIXES)


# Largest input read whole, in pixels (width x height): 100 megapixels, e.g. 10000 x 10000. Pillow's
# own decompression-bomb guard is replaced by this explicit check, made from the header before any
# pixel is decoded. A larger scene must be a GeoTIFF processed in windows (rsvl_core.scenes.geo).
MAX_INPUT_PIXELS = 100_000_000
EXIF_ORIENTATION = 0x0112
TIFF_HINT = ('multi-band, 16-bit RGB and float TIFFs are read by the GeoTIFF reader: pip install "rsvl[geo]", '
             'then choose bands with --bands and scaling with --stretch')


def read_image(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read an image file as (1, 3, H, W) float in [0, 1].

    Returns the tensor and notes on any conversion made (documented, never silent):
    grayscale is replicated to RGB, alpha is dropped, palette images are expanded, 16-bit and
    32-bit integer grayscale is scaled by the full range of its type, 16-bit RGB (which Pillow
    decodes at 8 bits) is noted, float grayscale must already lie in [0, 1], and a multi-frame
    file (GIF, multi-page TIFF) gives its first frame. Everything else raises `InputImageError`
    naming the file: missing, a folder, empty, not an image, truncated or corrupt, no pixels,
    or more than `MAX_INPUT_PIXELS` pixels.
    """
    path = Path(path)
    if path.is_dir():
        raise InputImageError(f"{path}: is a folder, expected an image file")
    if not path.is_file():
        raise InputImageError(f"{path}: input image not found")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path}: file is empty (0 bytes), expected an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            with Image.open(path) as img:
                _check_size(path, *img.size)
                notes = _header_notes(img)
                img.load()
                upright = img
                if img.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):  # a camera's sideways JPEG
                    upright = ImageOps.exif_transpose(img)
                    notes.append("rotated upright by its EXIF orientation")
                array, more = _to_rgb_float(upright, path)
                notes += more
    except Image.DecompressionBombError as exc:  # Pillow's guard fires in open() above 2x its own limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise InputImageError(_too_large(path, size)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        message = f"{path}: not a readable image ({str(exc).splitlines()[0][:160]})"
        if path.suffix.lower() in (".tif", ".tiff"):
            message += f"; {TIFF_HINT}"
        raise InputImageError(message) from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputImageError(f"{path}: image has no pixels")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    return tensor, notes


def _check_size(path: Path, width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise InputImageError(f"{path}: image has no pixels ({width}x{height})")
    if width * height > MAX_INPUT_PIXELS:
        raise InputImageError(_too_large(path, f"{width}x{height} ({width * height:,} pixels)"))


def _too_large(path: Path, size: str) -> str:
    return (f"{path}: image is {size}, over the {MAX_INPUT_PIXELS:,}-pixel limit for reading an image whole "
            f"(rsvl_core.kit.image.MAX_INPUT_PIXELS); split it, or process a GeoTIFF in windows")


def _header_notes(img: Image.Image) -> list[str]:
    notes = []
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"first of {frames} frames used")
    if img.mode in ("RGB", "RGBA") and img.tile:
        args = img.tile[0][3]
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            notes.append("16-bit RGB decoded at 8 bits per channel (Pillow keeps the high byte: value // 256)")
    return notes


def integer_peak(largest: int, container: str) -> tuple[float, str]:
    """The full scale of integer grayscale: a 16-bit container whose largest value fits 12 bits holds 12-bit
    sensor data (common in remote sensing), scaled by 1/4095 instead of coming out near-black; else the type's."""
    if 255 < largest <= 4095:
        return 4095.0, f"{container} grayscale holding 12-bit data (largest value {largest})"
    return (65535.0 if largest <= 65535 else float(2**31 - 1)), f"{container} grayscale"


def _to_rgb_float(img: Image.Image, path: Path | None = None) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        raw = np.asarray(img)
        peak, what = integer_peak(int(raw.max(initial=0)), "32-bit integer" if mode == "I" else "16-bit")
        notes.append(f"{what} scaled by 1/{peak:.0f} and replicated to RGB")
        gray = np.clip(raw.astype(np.float32) / peak, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2), notes
    if mode == "F":
        gray = np.asarray(img, dtype=np.float32)
        finite = gray[np.isfinite(gray)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if finite.size != gray.size or low < 0.0 or high > 1.0:
            raise InputImageError(
                f"{path}: float image with values in [{low:g}, {high:g}]"
                f"{' and NaN/inf' if finite.size != gray.size else ''}, expected [0, 1]; {TIFF_HINT}")
        notes.append("float grayscale replicated to RGB")
        return np.repeat(gray[..., None], 3, axis=2), notes
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
    array = image.detach().float().clamp(0, 1).mul_(255).round_().to(torch.uint8)  # one float copy, not three
    return array.permute(1, 2, 0).cpu().numpy()


def write_image_atomic(image: torch.Tensor, path: str | Path) -> Path:
    """Save an image so that `path` either does not exist or is complete (temp file + rename)."""
    return write_array_atomic(to_uint8(image), path)


# How every 8-bit PNG we write is compressed: ComfyUI's Save Image level (4) with zlib's run-length strategy, which
# zlib's manual describes as almost as fast as Huffman-only coding but compressing PNG image data better. After PNG's
# row filters an aerial image is mostly runs of small residuals: on the shared aerial samples and a stage-1 output
# the files come out 0.1 % larger to 0.6 % smaller than with level 4's default strategy, at 0.35-0.4x its CPU time
# (a 1024² RGB output: 0.07 s instead of 0.19 s; Pillow's default, level 6: 0.41 s). Flat synthetic graphics
# compress less well than with LZ77's matches (a 1024² grid: 21 kB instead of 8 kB) but stay small.
PNG_SAVE_OPTIONS = {"compress_level": 4, "compress_type": zlib.Z_RLE}


def image_format(suffix: str) -> str:
    """Pillow's format name for a file suffix (PNG when it knows none). The common formats are looked up without
    importing all of Pillow's plugins (`Image.init`, about 0.1 s of CPU in a short run)."""
    Image.preinit()  # PNG, JPEG, BMP, GIF, PPM
    suffix = suffix.lower()
    return Image.EXTENSION.get(suffix) or Image.registered_extensions().get(suffix, "PNG")


def write_array_atomic(array: np.ndarray, path: str | Path) -> Path:
    """Save an (H, W, 3) uint8 array atomically; no float copy of the image is made (large scenes)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # the format comes from the final name, since the temp name ends in ".tmp"
        file_format = image_format(path.suffix)
        options = PNG_SAVE_OPTIONS if file_format == "PNG" else {}
        Image.fromarray(array, mode="RGB").save(tmp, format=file_format, **options)
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


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files directly inside `folder` (and in its subfolders with `recursive`), sorted by path; hidden files
    and folders skipped."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))
