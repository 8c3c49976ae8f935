"""GeoTIFF in and out (optional: `pip install "rsvl[geo]"`, which brings rasterio with GDAL inside).

Reading turns a raster into the core convention, (1, 3, H, W) float RGB in [0, 1], by a *documented*
band and value plan, never a silent guess:

- **Bands** (`BandPlan.bands`, 1-based, like `--bands 3,2,1`): default 1,2,3 for a 3-band raster
  and 1 for a single-band one (then replicated to RGB). A raster with more than three bands (or 2)
  needs an explicit choice; reading it without one is an error naming the band count.
  `bands` must name 1 or 3 bands.
- **Values** (`BandPlan.stretch`): `none` divides by the full range of the type (uint8 → /255,
  uint16 → /65535, int16 → /32767, int32 → /2147483647, negatives clip to 0; float data is taken as
  already in [0, 1] and clipped). `percentile` maps each band's `percentiles` (default 2 and 98 %
  of its valid pixels) to 0 and 1 and clips. The default (`stretch=None`) is `none` for uint8 and
  `percentile` for every other type, since 16-bit and float imagery rarely fills its range. The
  low/high values used are returned (`Stretch`) so a caller can record them (sidecar, GeoTIFF tags)
  and, for a scene read in windows, compute them once for the whole scene and pass them to every
  window (`scene_stretch`, `read_window`).
- **Validity** (the `valid` mask): every mask GDAL knows, as one. A pixel is invalid when *all* the
  selected bands equal the raster's nodata value (the per-dataset rule of GDAL masks), when any selected
  band is NaN or ±Inf, or when the file's mask says so: an internal mask, an external `.msk`, or an alpha
  band (also when `--bands` leaves the alpha band out). Invalid pixels are 0 in `read_raster`'s image;
  `fill_invalid` fills them from their valid neighbours for the model (so no dark rim forms along a
  nodata collar). The writers set the scaled-up mask (each input pixel → a scale × scale block) back to
  nodata, and move any valid value that equals nodata in a band by one level, so no valid pixel is read
  back as nodata in any band's mask. A source whose validity nodata cannot carry (a mask, alpha, NaN
  without a declared nodata) gets an internal mask band in the output too.
- **Georeferencing**: a geotransform and CRS, or ground control points (GCPs), or rational polynomial
  coefficients (RPCs): all three are kept. GCPs are scaled to the output grid (pixel/line × scale); RPCs
  get their line/sample offset and scale adjusted for the scale (pixel centres: offset × scale +
  (scale − 1) / 2, scale × scale). Nothing is warped.

Writing keeps the CRS, scales the geotransform by 1/scale (same bounds, pixel size / scale), keeps
nodata, band descriptions and the dataset's tags (band statistics are dropped: they describe the
input), and writes a tiled (512 × 512), deflate-compressed GeoTIFF to a temporary file that is renamed
on success (`write_geotiff_atomic`, or `GeoTiffWindowWriter` for a scene written window by window).
A write GDAL reports as failed (it may report a full disk only in its log, and close "successfully")
raises `OSError` (ENOSPC when the file system is full), and nothing is renamed into place.
Output values: `uint8` (x·255, the default), or `source`: the stretch inverted into the input's
data type (low + x·(high − low)). A single-band input is written back as one band (the mean of RGB).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..kit.atomic import atomic_path, owner_tag
from ..kit.errors import InputImageError, RsvlError

STRETCHES = ("none", "percentile")
OUTPUT_DTYPES = ("uint8", "source")
BLOCK_SIZE = 512
COG_BLOCK = 512  # COG internal tile side (rio-cogeo's default)
# pixels read (per band) to compute a whole scene's percentiles: a decimated read of a large scene
STATS_MAX_PIXELS = 1024 * 1024
GEOTIFF_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory
RPC_TAG = 50844  # RPCCoefficientTag: RPC georeferencing inside a TIFF
RPC_SIDECARS = (".RPB", ".rpb", "_RPC.TXT", "_rpc.txt")  # RPCs beside a raster (GDAL reads them)
INSTALL_HINT = 'GeoTIFF support needs rasterio: pip install "rsvl[geo]"'


def rasterio_available() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def _rasterio():
    try:
        import rasterio
    except ImportError:
        raise RsvlError(INSTALL_HINT) from None
    return rasterio


def has_georeference(path: str | Path) -> bool:
    """True when `path` is a TIFF carrying GeoTIFF georeferencing tags (checked with Pillow: no rasterio needed), or
    a raster only GDAL reads (JPEG 2000, VRT, ...) with a CRS or a geotransform."""
    from ..kit.image import GDAL_ONLY_SUFFIXES

    path = Path(path)
    if path.suffix.lower() in GDAL_ONLY_SUFFIXES or _rpc_sidecar(path):
        return rasterio_available() and _gdal_georeferenced(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    import logging

    from PIL import Image

    tiff_log = logging.getLogger("PIL.TiffImagePlugin")  # logs (and so prints) "More samples per pixel than can
    quiet, tiff_log.disabled = tiff_log.disabled, True    # be decoded" for 5+ bands, before our own clear error
    try:
        with Image.open(path) as img:
            tags = getattr(img, "tag_v2", {})
            return any(tag in tags for tag in (*GEOTIFF_TAGS, RPC_TAG))
    except Exception:  # unreadable by Pillow (e.g. 16-bit RGB, 8 bands): ask GDAL if we have it
        return rasterio_available() and _gdal_georeferenced(path)
    finally:
        tiff_log.disabled = quiet


def _rpc_sidecar(path: Path) -> bool:
    """Whether RPCs lie beside `path` (`name.RPB`, `name_RPC.TXT`): Pillow does not see them, GDAL does."""
    return any(path.with_name(path.stem + end).is_file() for end in RPC_SIDECARS)


def _gdal_georeferenced(path: Path) -> bool:
    """Whether GDAL sees a CRS, a non-identity geotransform, GCPs or RPCs (False for a file it cannot open: reading
    reports it)."""
    rasterio = _rasterio()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return (ds.crs is not None or not ds.transform.is_identity or bool(ds.gcps[0])
                        or ds.rpcs is not None)
    except Exception:
        return False


@dataclass(frozen=True)
class BandPlan:
    """Which bands become R, G, B and how their values map to [0, 1] (see the module notes)."""

    bands: tuple[int, ...] | None = None
    stretch: str | None = None  # None: "none" for uint8, "percentile" for any other type
    percentiles: tuple[float, float] = (2.0, 98.0)

    @classmethod
    def parse(cls, bands: str | None = None, stretch: str | None = None,
              percentiles: str | Sequence[float] | None = None) -> BandPlan:
        """From command-line text: `bands="3,2,1"`, `stretch="percentile"`, `percentiles="2,98"`."""
        parsed = None
        if bands:
            try:
                parsed = tuple(int(b) for b in bands.replace(" ", "").split(","))
            except ValueError:
                raise RsvlError(f"--bands {bands!r}: expected 1-based band numbers like 3,2,1") from None
        if isinstance(percentiles, str):
            try:
                percentiles = tuple(float(p) for p in percentiles.split(","))
            except ValueError:
                raise RsvlError(f"--percentiles {percentiles!r}: expected two numbers like 2,98") from None
        plan = cls(parsed, stretch, tuple(percentiles) if percentiles is not None else (2.0, 98.0))
        plan.check()
        return plan

    def check(self) -> None:
        if self.bands is not None:
            if len(self.bands) not in (1, 3):
                raise RsvlError(f"--bands {_fmt(self.bands)}: name 1 band (replicated to RGB) or 3 (R,G,B)")
            if any(b < 1 for b in self.bands):
                raise RsvlError(f"--bands {_fmt(self.bands)}: bands are numbered from 1")
        if self.stretch is not None and self.stretch not in STRETCHES:
            raise RsvlError(f"--stretch {self.stretch!r}: choose one of {', '.join(STRETCHES)}")
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise RsvlError(f"--percentiles {_fmt(self.percentiles)}: need low,high with 0 <= low < high <= 100")

    def resolve(self, count: int, dtype: str, path: str | Path = "") -> tuple[tuple[int, ...], str]:
        """The bands and stretch used for a raster with `count` bands of `dtype` (errors name the file)."""
        self.check()
        if self.bands is None:
            if count == 3:
                bands: tuple[int, ...] = (1, 2, 3)
            elif count == 1:
                bands = (1,)
            else:
                raise InputImageError(
                    f"{path}: raster has {count} bands; choose which become R,G,B with --bands "
                    f"(e.g. --bands 3,2,1, or one band such as --bands 1 for grayscale)")
        else:
            bands = self.bands
            bad = [b for b in bands if b > count]
            if bad:
                raise InputImageError(f"{path}: --bands {_fmt(bands)} names band {bad[0]}, "
                                      f"but the raster has {count} band(s)")
        stretch = self.stretch or ("none" if dtype == "uint8" else "percentile")
        return bands, stretch


@dataclass(frozen=True)
class Stretch:
    """How source values became [0, 1]: x = clip((value - low) / (high - low), 0, 1), per source band."""

    method: str  # "none" (full range of the type) or "percentile"
    bands: tuple[int, ...]
    source_dtype: str
    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None  # method "palette": index -> RGB (the band's colormap)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (for the sidecar and the output's RSVL_STRETCH tag)."""
        record: dict[str, Any] = {"method": self.method, "bands": list(self.bands), "source_dtype": self.source_dtype,
                                  "low": list(self.low), "high": list(self.high)}
        if self.percentiles is not None:
            record["percentiles"] = list(self.percentiles)
        if self.palette is not None:
            record["palette"] = [list(rgb) for rgb in self.palette]
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Stretch:
        pct, palette = record.get("percentiles"), record.get("palette")
        return cls(record["method"], tuple(record["bands"]), record["source_dtype"], tuple(record["low"]),
                   tuple(record["high"]), tuple(pct) if pct is not None else None,
                   tuple(tuple(rgb) for rgb in palette) if palette is not None else None)

    def note(self) -> str:
        if self.palette is not None:
            return f"band {self.bands[0]} is a palette of {len(self.palette)} colours: expanded to RGB"
        triples = zip(self.bands, self.low, self.high, strict=True)
        ranges = ", ".join(f"band {b}: {lo:g}..{hi:g}" for b, lo, hi in triples)
        if self.method == "percentile":
            p0, p1 = self.percentiles or (0, 100)
            return f"{self.source_dtype} bands stretched from their {p0:g}-{p1:g} percentiles to [0, 1] ({ranges})"
        return f"{self.source_dtype} bands scaled by their type's range to [0, 1] ({ranges})"


@dataclass(frozen=True)
class RasterInfo:
    """What is needed to write a raster back in the same place: grid, CRS, nodata, descriptions, tags."""

    crs: Any  # rasterio CRS or None
    transform: Any  # affine.Affine
    width: int
    height: int
    count: int  # bands in the source file
    dtype: str  # the source data type
    nodata: float | None
    descriptions: tuple[str | None, ...]  # of the bands used, in order
    bands: tuple[int, ...]  # source bands used (1-based)
    tags: dict[str, str] = field(default_factory=dict)  # dataset tags (band statistics left out)
    scale: int = 1  # 1 for the source grid; s for a grid scaled by `scaled(s)`
    gcps: tuple = ()  # ground control points (rasterio GroundControlPoint) when the raster is georeferenced by GCPs
    gcps_crs: Any = None  # their CRS
    rpcs: Any = None  # rational polynomial coefficients (rasterio RPC), when the raster carries them
    mask_source: str | None = None  # validity beyond nodata/NaN: "internal mask", ".msk file", "alpha band 4"
    masked: bool = False  # the output gets a mask band (validity that nodata alone cannot carry)

    @property
    def georeferencing(self) -> str:
        """How the grid is placed: "geotransform", "GCPs", "RPCs" (or several, joined by "+"), or "none"."""
        kinds = [name for name, present in (("geotransform", self.crs is not None or not self.transform.is_identity),
                                            ("GCPs", bool(self.gcps)), ("RPCs", self.rpcs is not None)) if present]
        return "+".join(kinds) or "none"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units, as rasterio's `array_bounds`."""
        t = self.transform
        xs = (t.c, t.c + t.a * self.width + t.b * self.height)
        ys = (t.f, t.f + t.d * self.width + t.e * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    def scaled(self, scale: int) -> RasterInfo:
        """The output grid for a `scale`× result: pixel size / scale, same bounds, width and height × scale."""
        from affine import Affine

        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        t = self.transform  # = t * Affine.scale(1 / scale): same origin, pixel size / scale
        transform = Affine(t.a / scale, t.b / scale, t.c, t.d / scale, t.e / scale, t.f)
        return replace(self, transform=transform, width=self.width * scale, height=self.height * scale,
                       scale=self.scale * scale, gcps=tuple(scale_gcp(g, scale) for g in self.gcps),
                       rpcs=scale_rpcs(self.rpcs, scale) if self.rpcs is not None else None)


def scale_gcp(gcp, scale: int):
    """A ground control point on the `scale`× grid: pixel/line (corner convention) × scale, same ground point."""
    from rasterio.control import GroundControlPoint

    return GroundControlPoint(row=gcp.row * scale, col=gcp.col * scale, x=gcp.x, y=gcp.y, z=gcp.z, id=gcp.id,
                              info=gcp.info)


def scale_rpcs(rpcs, scale: int):
    """RPCs for the `scale`× grid. RPC line/sample are pixel-centre coordinates: a centre u of the input is corner
    u + 0.5, which is corner s·(u + 0.5) of the output, centre s·u + (s − 1)/2; so offset → s·offset + (s − 1)/2
    and scale → s·scale (the polynomials are unchanged)."""
    shift = (scale - 1) / 2
    return type(rpcs)(**{**rpcs.to_dict(), "line_off": rpcs.line_off * scale + shift,
                         "samp_off": rpcs.samp_off * scale + shift, "line_scale": rpcs.line_scale * scale,
                         "samp_scale": rpcs.samp_scale * scale})


@dataclass
class RasterRead:
    """`read_raster`'s result."""

    image: torch.Tensor  # (1, 3, H, W) float32 in [0, 1]; nodata pixels are 0
    valid: np.ndarray | None  # (H, W) bool, False at nodata pixels; None when the raster defines no nodata
    info: RasterInfo
    stretch: Stretch
    notes: list[str]


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def open_raster(path: str | Path):
    """Open a raster with rasterio, refusing a missing, empty or unreadable file in one line naming it."""
    rasterio = _rasterio()
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: input raster not found")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path}: file is empty (0 bytes), expected a GeoTIFF")
    try:
        with warnings.catch_warnings():  # a plain TIFF is fine: no CRS is not a problem worth a warning per run
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputImageError(f"{path}: not a readable raster ({str(exc).splitlines()[0][:160]})") from None


def _info(ds, bands: tuple[int, ...]) -> RasterInfo:
    descriptions = tuple(ds.descriptions[b - 1] for b in bands)
    gcps, gcps_crs = ds.gcps
    source = mask_source(ds, bands)
    dtype = ds.dtypes[bands[0] - 1]
    # a mask, or NaN/Inf in float data without a nodata value to write them as: the output needs a mask band
    masked = source is not None or (ds.nodata is None and np.dtype(dtype).kind == "f")
    return RasterInfo(crs=ds.crs, transform=ds.transform, width=ds.width, height=ds.height, count=ds.count,
                      dtype=dtype, nodata=ds.nodata, descriptions=descriptions, bands=bands,
                      tags=dict(ds.tags()), gcps=tuple(gcps), gcps_crs=gcps_crs if gcps else None, rpcs=ds.rpcs,
                      mask_source=source, masked=masked)


def mask_source(ds, bands: tuple[int, ...]) -> str | None:
    """Where the selected bands' validity comes from beyond nodata and NaN: "alpha band N" (also when --bands
    leaves it out), ".msk file" or "internal mask" (GDAL's per-dataset masks); None when there is none."""
    from rasterio.enums import ColorInterp, MaskFlags

    flags = set().union(*(ds.mask_flag_enums[b - 1] for b in bands))
    if MaskFlags.alpha in flags:
        alpha = [i for i, interp in enumerate(ds.colorinterp, start=1) if interp == ColorInterp.alpha]
        return f"alpha band {alpha[0]}" if alpha else "alpha band"
    if MaskFlags.per_dataset in flags:
        return ".msk file" if Path(f"{ds.name}.msk").is_file() else "internal mask"
    return None


def _validity(ds, data: np.ndarray, nodata: float | None, bands: tuple[int, ...], window=None,
              out_shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """The one validity mask of `data` (read from `ds` at `window`, decimated to `out_shape`): nodata, NaN/Inf and
    the file's mask or alpha band together; None when the raster can have no invalid pixel."""
    valid = _valid_mask(data, nodata)
    if mask_source(ds, bands) is None:
        return valid
    kwargs: dict[str, Any] = {}
    if window is not None:
        kwargs["window"] = _window(window)
    if out_shape is not None:
        kwargs["out_shape"] = tuple(out_shape)
    from rasterio.enums import MaskFlags

    kinds = {MaskFlags.alpha, MaskFlags.per_dataset}
    band = next(b for b in bands if kinds & set(ds.mask_flag_enums[b - 1]))
    mask = ds.read_masks(band, **kwargs) > 0  # a per-dataset mask or alpha: the same for every band
    return mask if valid is None else valid & mask


def _type_range(dtype: str, nbits: int | None = None) -> tuple[float, float]:
    """The value range `--stretch none` maps to [0, 1]: the declared bit depth (NBITS, e.g. 12-bit data stored
    as uint16: 0..4095) when the file declares one, else the type's full range."""
    if dtype == "bool":
        return 0.0, 1.0
    kind = np.dtype(dtype).kind
    if kind in "ui":
        top = float(np.iinfo(dtype).max)
        if nbits is not None and 0 < nbits < np.iinfo(dtype).bits:
            top = float(2 ** (nbits - (kind == "i")) - 1)
        return 0.0, top
    if kind == "f":
        return 0.0, 1.0
    raise ValueError(dtype)


def declared_bits(ds) -> int | None:
    """The bit depth a raster declares (GDAL's NBITS, e.g. 12 for 12-bit sensor data in uint16), if any."""
    try:
        value = ds.tags(ns="IMAGE_STRUCTURE").get("NBITS") or ds.tags(1, ns="IMAGE_STRUCTURE").get("NBITS")
        return int(value) if value else None
    except (ValueError, TypeError):
        return None


def palette_stretch(ds, bands: tuple[int, ...], plan: BandPlan) -> Stretch | None:
    """A single palette band (a classified map, a paletted scan) read as its colours, not as grey indices; None
    for any other raster, or when the user chose a value stretch (then the indices are the values)."""
    from rasterio.enums import ColorInterp

    if len(bands) != 1 or plan.stretch is not None or ds.colorinterp[bands[0] - 1] != ColorInterp.palette:
        return None
    try:
        colormap = ds.colormap(bands[0])
    except ValueError:  # declared palette, no table
        return None
    size = max(colormap) + 1
    palette = tuple(tuple(int(v) for v in colormap.get(i, (0, 0, 0, 0))[:3]) for i in range(size))
    return Stretch("palette", bands, ds.dtypes[bands[0] - 1], (0.0,), (float(size - 1),), palette=palette)


def _valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """(bands, H, W) -> (H, W) bool: False where every band is nodata, or any band is NaN or ±Inf."""
    invalid = None
    if nodata is not None and not np.isnan(nodata):
        invalid = np.all(data == nodata, axis=0)
    if data.dtype.kind == "f":
        bad = ~np.all(np.isfinite(data), axis=0)
        invalid = bad if invalid is None else invalid | bad
    return None if invalid is None else ~invalid


def _check_dtype(ds, bands: tuple[int, ...], path) -> str:
    dtypes = {ds.dtypes[b - 1] for b in bands}
    if len(dtypes) > 1:
        raise InputImageError(f"{path}: bands {_fmt(bands)} have different data types ({', '.join(sorted(dtypes))})")
    dtype = dtypes.pop()
    if np.dtype(dtype).kind not in "uif":
        raise InputImageError(f"{path}: unsupported raster data type {dtype} (expected integer or float bands)")
    return dtype


def compute_stretch(data: np.ndarray, valid: np.ndarray | None, bands: tuple[int, ...], dtype: str, method: str,
                    percentiles: tuple[float, float] = (2.0, 98.0), nbits: int | None = None) -> Stretch:
    """The low/high value of each band of `data` (bands, H, W) for `method` (valid pixels only). A band with no
    spread (constant, or no valid values) keeps the type's (or declared bit depth's) range instead: its value
    stays where it is rather than being stretched over a 1-unit range (which made a constant tile black)."""
    if method == "none":
        lo, hi = _type_range(dtype, nbits)
        return Stretch("none", bands, dtype, (lo,) * len(bands), (hi,) * len(bands))
    lows, highs = [], []
    for plane in data:
        values = plane[valid] if valid is not None else plane.ravel()
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        lo, hi = (float(v) for v in np.percentile(values, percentiles)) if values.size else (0.0, 0.0)
        if hi <= lo:
            lo, hi = _type_range(dtype, nbits)
        lows.append(lo)
        highs.append(hi)
    return Stretch("percentile", bands, dtype, tuple(lows), tuple(highs), tuple(percentiles))


def clipped_share(data: np.ndarray, valid: np.ndarray | None, stretch: Stretch) -> float:
    """The share of (valid, finite) values outside each band's low..high: what normalising clips."""
    outside = total = 0
    for i, plane in enumerate(data):
        values = plane[valid] if valid is not None else plane.ravel()
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        outside += int(((values < stretch.low[i]) | (values > stretch.high[i])).sum())
        total += values.size
    return outside / total if total else 0.0


def _normalise(data: np.ndarray, valid: np.ndarray | None, stretch: Stretch) -> torch.Tensor:
    if stretch.palette is not None:
        colours = np.asarray(stretch.palette, dtype=np.float32) / 255
        index = np.clip(data[0], 0, len(colours) - 1).astype(np.intp)
        out = np.ascontiguousarray(colours[index].transpose(2, 0, 1))
        if valid is not None:
            out[:, ~valid] = 0.0
        return torch.from_numpy(out)[None]
    out = np.empty(data.shape, dtype=np.float32)
    for i, plane in enumerate(data):
        lo, hi = stretch.low[i], stretch.high[i]
        out[i] = np.clip((plane.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    out = np.nan_to_num(out, nan=0.0)
    if valid is not None:
        out[:, ~valid] = 0.0
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return torch.from_numpy(out)[None]


def scene_stretch(path: str | Path, plan: BandPlan | None = None,
                  max_pixels: int = STATS_MAX_PIXELS) -> tuple[Stretch, RasterInfo]:
    """The whole scene's stretch, from a decimated read (GDAL uses overviews when the file has them).

    For a scene processed in windows: compute this once, then pass it to every `read_window`.
    """
    stretch, info, _ = scene_radiometry(path, plan, max_pixels)
    return stretch, info


def scene_radiometry(path: str | Path, plan: BandPlan | None = None,
                     max_pixels: int = STATS_MAX_PIXELS) -> tuple[Stretch, RasterInfo, list[str]]:
    """`scene_stretch`, and what a user must hear about the scene's values (as `read_raster` says for a scene read
    whole: an all-nodata scene, 12-bit data that `--stretch none` would leave almost black), from the same
    decimated read."""
    plan = plan or BandPlan()
    with open_raster(path) as ds:
        bands, method = plan.resolve(ds.count, ds.dtypes[0], path)
        dtype = _check_dtype(ds, bands, path)
        info = _info(ds, bands)
        if (palette := palette_stretch(ds, bands, plan)) is not None:
            return palette, info, [palette.note()]
        step = max(1.0, (ds.width * ds.height / max_pixels) ** 0.5)
        shape = (len(bands), max(1, round(ds.height / step)), max(1, round(ds.width / step)))
        data = ds.read(list(bands), out_shape=shape)
        nbits = declared_bits(ds)
        valid = _validity(ds, data, info.nodata, bands, out_shape=shape[1:])
    stretch = compute_stretch(data, valid, bands, dtype, method, plan.percentiles, nbits)
    return stretch, info, [stretch_note(stretch, nbits), *radiometry_warnings(data, valid, stretch, nbits)]


def read_raster(path: str | Path, plan: BandPlan | None = None, max_pixels: int | None = None,
                plain: bool = False) -> RasterRead:
    """Read a whole raster (GeoTIFF or anything GDAL opens) as (1, 3, H, W) in [0, 1] with its georeferencing.

    `plain`: the result goes to a plain image (no georeferencing), which has no nodata (said in the notes).

    Rasters over `max_pixels` (default `rsvl_core.kit.image.MAX_INPUT_PIXELS`) are refused with a clear
    error: read those in windows (`scene_stretch` + `read_window` + `GeoTiffWindowWriter`).
    """
    from ..kit.image import MAX_INPUT_PIXELS

    plan = plan or BandPlan()
    limit = MAX_INPUT_PIXELS if max_pixels is None else max_pixels
    with open_raster(path) as ds:
        if ds.width * ds.height > limit:
            raise InputImageError(f"{path}: raster is {ds.width}x{ds.height} ({ds.width * ds.height:,} pixels), "
                                  f"over the {limit:,}-pixel limit for reading a scene whole; process it in windows")
        bands, method = plan.resolve(ds.count, ds.dtypes[0], path)
        dtype = _check_dtype(ds, bands, path)
        info = _info(ds, bands)
        nbits = declared_bits(ds)
        try:
            data = ds.read(list(bands))
            valid = _validity(ds, data, info.nodata, bands)
        except Exception as exc:  # rasterio raises RasterioIOError / CPLE_* for truncated data
            raise InputImageError(f"{path}: raster data could not be read ({str(exc).splitlines()[0][:160]})") from None
        palette = palette_stretch(ds, bands, plan)
    # read whole, the mask band is needed only where a pixel is invalid and nodata cannot say so
    info = replace(info, masked=info.mask_source is not None
                   or (info.nodata is None and valid is not None and not valid.all()))
    if palette is not None:
        return RasterRead(_normalise(data, valid, palette), valid, info, palette,
                          [palette.note(), *_nodata_notes(valid, info, plain)])
    stretch = compute_stretch(data, valid, bands, dtype, method, plan.percentiles, nbits)
    notes = []
    if dtype != "uint8" or method != "none":
        notes.append(stretch_note(stretch, nbits))
    notes.extend(radiometry_warnings(data, valid, stretch, nbits))
    if method == "none" and (clipped := clipped_share(data, valid, stretch)) > 0:
        notes.append(f"warning: {clipped:.1%} of the values lie outside the {stretch.low[0]:g}..{stretch.high[0]:g} "
                     f"range of --stretch none and were clipped; --stretch percentile keeps them")
    if len(bands) == 1:
        notes.append(f"band {bands[0]} replicated to RGB")
    elif bands != (1, 2, 3) or info.count != 3:
        notes.append(f"bands {_fmt(bands)} of {info.count} used as R,G,B")
    notes.extend(_nodata_notes(valid, info, plain))
    return RasterRead(_normalise(data, valid, stretch), valid, info, stretch, notes)


def stretch_note(stretch: Stretch, nbits: int | None) -> str:
    """The stretch used, and the bit depth the file declares when it declares one."""
    return stretch.note() + (f" (the file declares {nbits}-bit data)" if nbits else "")


def _nodata_notes(valid: np.ndarray | None, info: RasterInfo, plain: bool = False) -> list[str]:
    """How many pixels are invalid and why (nodata value, NaN/Inf, the file's mask), and what the run does
    with them."""
    if valid is None or valid.all():
        return []
    why = [f"nodata {info.nodata:g}"] if info.nodata is not None and not np.isnan(info.nodata) else []
    if np.dtype(info.dtype).kind == "f":
        why.append("NaN/Inf")
    if info.mask_source is not None:
        why.append(f"the file's {info.mask_source}")
    if plain:
        after = "a plain image has no nodata: they come out as the model makes them"
    elif info.masked:
        after = ("masked in the output's mask band" if info.nodata is None
                 else "written back as nodata and in the output's mask band")
    else:
        after = "restored as nodata in the output"
    return [f"{int((~valid).sum())} nodata pixel(s) ({', '.join(why)}) filled from their valid neighbours for the "
            f"model, {after}"]


def radiometry_warnings(data: np.ndarray, valid: np.ndarray | None, stretch: Stretch,
                        nbits: int | None) -> list[str]:
    """What a user must hear about the values: an all-nodata scene, and `--stretch none` on data that uses a
    small part of its type's range (12-bit data in uint16 without NBITS comes out almost black)."""
    if valid is not None and not valid.any():
        return ["warning: every pixel is nodata: the output is nodata too"]
    if stretch.method != "none" or nbits or np.dtype(stretch.source_dtype).kind not in "ui":
        return []
    values = data[:, valid] if valid is not None else data
    top = float(values.max()) if values.size else 0.0
    if top and top < stretch.high[0] / 8:
        bits = max(1, int(np.ceil(np.log2(top + 1))))
        return [f"warning: the largest value is {top:g}, {top / stretch.high[0]:.1%} of the {stretch.source_dtype} "
                f"range, so --stretch none gives an almost black image; {bits}-bit data? use --stretch percentile, "
                f"or declare the bit depth (GDAL's NBITS={bits})"]
    return []


def _window(window):
    from rasterio.windows import Window

    if isinstance(window, Window):
        return window
    col_off, row_off, width, height = window
    return Window(col_off, row_off, width, height)


def read_window(path: str | Path, window, stretch: Stretch, nodata: float | None = None,
                out_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
    """One window of a scene, normalised with the scene's `stretch` (from `scene_stretch` or `read_raster`).

    `window`: a rasterio Window or (col_off, row_off, width, height) in source pixels. Returns
    ((1, 3, h, w) in [0, 1], valid mask or None: nodata, NaN/Inf and the file's mask or alpha, as `read_raster`).
    `nodata` defaults to the file's. `out_size` (h, w): read it decimated to that size (averaging; GDAL uses the
    file's overviews when it has them).
    """
    with open_raster(path) as ds:
        if out_size is None:
            data = ds.read(list(stretch.bands), window=_window(window))
        else:
            from rasterio.enums import Resampling

            data = ds.read(list(stretch.bands), window=_window(window), out_shape=(len(stretch.bands), *out_size),
                           resampling=Resampling.average)
        nodata = ds.nodata if nodata is None else nodata
        valid = _validity(ds, data, nodata, stretch.bands, window, out_size)
    return _normalise(data, valid, stretch), valid


def upscale_mask(valid: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour: each input pixel's validity becomes a scale × scale block."""
    return np.repeat(np.repeat(valid, scale, axis=0), scale, axis=1)


def fill_invalid(image: torch.Tensor, valid: np.ndarray | None) -> torch.Tensor:
    """(1, C, H, W) with its invalid pixels filled from their valid neighbours (pull-push: valid-weighted 2 × 2
    averages over ever coarser levels, pushed back down), so the model sees no edge along a nodata collar; valid
    pixels are returned unchanged, an all-invalid image as it is."""
    if valid is None or valid.all() or not valid.any():
        return image
    weight = torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32))[None, None]
    filled = _pull_push(image.float() * weight, weight)
    return torch.where(torch.from_numpy(np.ascontiguousarray(valid))[None, None], image, filled.to(image.dtype))


def _pull_push(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`values` (premultiplied by `weight`, the share of valid pixels under each cell) filled where weight < 1."""
    height, width = values.shape[-2:]
    if height == 1 and width == 1:
        return values / weight.clamp_min(1e-12)
    kernel = (2 if height > 1 else 1, 2 if width > 1 else 1)
    pool = torch.nn.functional.avg_pool2d
    coarse = _pull_push(pool(values, kernel, ceil_mode=True), pool(weight, kernel, ceil_mode=True))
    up = coarse.repeat_interleave(kernel[0], dim=-2).repeat_interleave(kernel[1], dim=-1)[..., :height, :width]
    return values + (1 - weight.clamp(0, 1)) * up


def _output_dtype(info: RasterInfo, dtype: str) -> str:
    if dtype not in OUTPUT_DTYPES:
        raise RsvlError(f"GeoTIFF output type {dtype!r}: choose one of {', '.join(OUTPUT_DTYPES)}")
    return "uint8" if dtype == "uint8" else info.dtype


def _output_nodata(nodata: float | None, dtype: str) -> float | None:
    """The input's nodata if the output type can hold it; else 0 (integer) or NaN (float)."""
    if nodata is None:
        return None
    kind = np.dtype(dtype).kind
    if kind == "f":
        return nodata
    info = np.iinfo(dtype)
    if not np.isnan(nodata) and info.min <= nodata <= info.max and float(nodata).is_integer():
        return nodata
    return 0.0


class GeoTiffWindowWriter:
    """Write a scaled GeoTIFF window by window; the file appears (renamed from a temp file) only on success.

    ```
    with GeoTiffWindowWriter(out_path, info.scaled(scale), stretch) as writer:
        for window in windows:           # source windows
            image, valid = read_window(src_path, window, stretch)
            result = upscale(image)      # (1, 3, h*scale, w*scale)
            writer.write(result, (window.col_off * scale, window.row_off * scale, ...), valid)
    ```
    On an exception inside the block the temp file is deleted and nothing is left at `path`.
    """

    def __init__(self, path: str | Path, info: RasterInfo, stretch: Stretch | None = None,
                 dtype: str = "uint8") -> None:
        self.path = Path(path)
        self.info = info
        self.stretch = stretch
        self.mode = dtype
        self.dtype = _output_dtype(info, dtype)
        if dtype == "source" and stretch is None:
            raise RsvlError("GeoTIFF output type 'source' needs the stretch used to read the input")
        if stretch is not None and stretch.palette is not None:  # colours out: an upscaled map is no longer indexed
            self.mode, self.dtype = "uint8", "uint8"
        self.nodata = _output_nodata(info.nodata, self.dtype)
        self.count = 1 if len(info.bands) == 1 and (stretch is None or stretch.palette is None) else 3
        self.masked = info.masked  # an internal mask band: the source's validity that nodata cannot carry
        self._stack: ExitStack | None = None
        self._ds = None

    def profile(self) -> dict[str, Any]:
        info = self.info
        profile = {
            "driver": "GTiff", "width": info.width, "height": info.height, "count": self.count, "dtype": self.dtype,
            "crs": info.crs, "transform": info.transform, "nodata": self.nodata,
            "tiled": True, "blockxsize": BLOCK_SIZE, "blockysize": BLOCK_SIZE, "compress": "deflate",
            "predictor": 3 if np.dtype(self.dtype).kind == "f" else 2, "interleave": "pixel", "BIGTIFF": "IF_SAFER",
        }
        if "geotransform" not in info.georeferencing and (info.gcps or info.rpcs is not None):
            del profile["crs"], profile["transform"]  # placed by its GCPs or RPCs, written after opening
        if self.count == 3 and self.dtype in ("uint8", "uint16"):
            profile["photometric"] = "RGB"
        return profile

    def __enter__(self) -> GeoTiffWindowWriter:
        rasterio = _rasterio()
        self._stack = ExitStack()
        try:
            tmp = self._stack.enter_context(atomic_path(self.path))
            self._stack.enter_context(gdal_write_guard(self.path))
            if self.masked:  # the mask band inside the file, not a .msk beside it
                self._stack.enter_context(rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True))
            self._ds = self._stack.enter_context(rasterio.open(tmp, "w", **self.profile()))
            self._write_metadata()
        except BaseException:
            self._stack.__exit__(None, None, None)  # close and delete the temp file (nothing renamed: cancelled)
            raise
        return self

    def _write_metadata(self) -> None:
        ds, info = self._ds, self.info
        descriptions = info.descriptions if self.count == len(info.descriptions) else (None,) * self.count
        for i, text in enumerate(descriptions, start=1):
            if text:
                ds.set_band_description(i, text)
        tags = {k: v for k, v in info.tags.items() if not k.startswith("STATISTICS_")}
        tags["RSVL_SCALE"] = str(info.scale)
        tags["RSVL_SOURCE_BANDS"] = _fmt(info.bands)
        if self.stretch is not None:
            tags["RSVL_STRETCH"] = json.dumps(self.stretch.to_dict())
        ds.update_tags(**tags)
        if info.gcps:
            ds.gcps = (list(info.gcps), info.gcps_crs)
        if info.rpcs is not None:
            ds.rpcs = info.rpcs

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack, self._ds = self._stack, None, None
        if stack is None:
            return False
        if exc_type is not None:
            return bool(stack.__exit__(exc_type, exc, tb))  # deletes the temp file, re-raises
        stack.close()  # closes the dataset, then renames the temp file into place
        return False

    def _to_array(self, image: torch.Tensor) -> np.ndarray:
        if image.ndim == 4:
            if image.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of {image.shape[0]}")
            image = image[0]
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (1, 3, H, W) image, got shape {tuple(image.shape)}")
        x = image.detach().float().clamp(0, 1).cpu().numpy().astype(np.float64)
        if self.count == 1:
            x = x.mean(axis=0, keepdims=True)
        if self.mode == "uint8":
            return np.round(x * 255).astype(np.uint8)
        stretch = self.stretch
        lows = np.asarray(stretch.low[: self.count], dtype=np.float64)[:, None, None]
        highs = np.asarray(stretch.high[: self.count], dtype=np.float64)[:, None, None]
        values = lows + x * (highs - lows)
        if np.dtype(self.dtype).kind in "ui":
            limits = np.iinfo(self.dtype)
            values = np.clip(np.round(values), limits.min, limits.max)
        return values.astype(self.dtype)

    def write(self, image: torch.Tensor, window, valid: np.ndarray | None = None) -> None:
        """Write (1, 3, h, w) in [0, 1] at `window` (output pixels: Window or (col_off, row_off, width, height)).

        `valid`: the mask at output resolution (h, w), or at source resolution (h/s, w/s), which is
        scaled up by nearest neighbour. Without one, no pixel is set to nodata.
        """
        if self._ds is None:
            raise RuntimeError("GeoTiffWindowWriter.write outside its `with` block")
        win = _window(window)
        data = self._to_array(image)
        height, width = data.shape[1:]
        if (int(win.height), int(win.width)) != (height, width):
            raise ValueError(f"image is {width}x{height} but the window is {int(win.width)}x{int(win.height)}")
        if valid is not None and valid.shape != (height, width):
            factor = max(1, height // max(1, valid.shape[0]))
            if valid.ndim != 2 or valid.shape[0] * factor != height or valid.shape[1] * factor != width:
                raise ValueError(f"valid mask of shape {valid.shape} does not fit the {width}x{height} image")
            valid = upscale_mask(valid, factor)
        if valid is None:
            valid = np.ones((height, width), dtype=bool)
        if self.nodata is not None:
            fill = np.asarray(self.nodata).astype(self.dtype)
            # a valid value equal to nodata would read back as nodata in that band's mask: move it one level
            collide = valid[None] & (data == fill)
            if collide.any() and not np.isnan(self.nodata):
                if np.dtype(self.dtype).kind == "f":
                    data[collide] = np.nextafter(fill, np.inf if fill < np.finfo(self.dtype).max else -np.inf)
                else:
                    step = -1 if fill == np.iinfo(self.dtype).max else 1
                    data[collide] = (data[collide].astype(np.float64) + step).astype(self.dtype)
            data[:, ~valid] = fill
        elif self.masked:
            data[:, ~valid] = 0
        with gdal_write_guard(self.path):  # a failed write here is the file's (a full disk: ENOSPC)
            self._ds.write(data, window=win)
            if self.masked:
                self._ds.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=win)


def write_geotiff_atomic(image: torch.Tensor, path: str | Path, info: RasterInfo, *,
                         valid: np.ndarray | None = None, stretch: Stretch | None = None,
                         dtype: str = "uint8") -> Path:
    """Write a whole (1, 3, H, W) [0, 1] image as a GeoTIFF on the grid `info` (already `scaled`).

    `valid` (from `read_raster`, at input or output resolution) restores nodata; `stretch` is recorded
    in the RSVL_STRETCH tag and, with `dtype="source"`, inverted into the input's data type.
    """
    if tuple(image.shape[-2:]) != (info.height, info.width):
        raise ValueError(f"image is {image.shape[-1]}x{image.shape[-2]} but the GeoTIFF grid is "
                         f"{info.width}x{info.height} (pass info.scaled(scale))")
    with GeoTiffWindowWriter(path, info, stretch, dtype) as writer:
        writer.write(image, (0, 0, info.width, info.height), valid)
    return Path(path)


@dataclass(frozen=True)
class OutputPlace:
    """How a written output is placed (geotransform, or GCPs/RPCs) and masked: what a layer written beside it, or a
    rewrite of it with one more band, must carry too."""

    gcps: tuple
    gcps_crs: Any
    rpcs: Any
    masked: bool  # the output has a mask band (per-dataset mask)

    @classmethod
    def of(cls, ds) -> OutputPlace:
        """The place of an open output dataset."""
        from rasterio.enums import MaskFlags

        gcps, crs = ds.gcps
        return cls(tuple(gcps), crs, ds.rpcs, MaskFlags.per_dataset in ds.mask_flag_enums[0])

    def profile(self, profile: dict[str, Any]) -> dict[str, Any]:
        """`profile` without the identity grid when GCPs or RPCs place the output (`apply` writes them)."""
        if self.gcps or (self.rpcs is not None and profile.get("crs") is None):
            return {k: v for k, v in profile.items() if k not in ("crs", "transform")}
        return profile

    def env(self):
        """The GDAL settings to write with: a mask band inside the file, not a .msk beside it."""
        return _rasterio().Env(GDAL_TIFF_INTERNAL_MASK=True)

    def apply(self, ds, valid: np.ndarray) -> None:
        """Give an open new dataset the same GCPs, RPCs and mask band (`valid`, (H, W) bool)."""
        if self.gcps:
            ds.gcps = (list(self.gcps), self.gcps_crs)
        if self.rpcs is not None:
            ds.rpcs = self.rpcs
        if self.masked:
            ds.write_mask(np.where(valid, 255, 0).astype(np.uint8))


# what makes a GDAL error a failed write (libtiff reports a full disk as failed strip/tile/directory writes and seeks)
GDAL_WRITE_ERROR = re.compile(r"write|seek|flush|i/o error|no space|disk", re.IGNORECASE)
FULL_BELOW = 16 * 1024 * 1024  # bytes free on the target's file system under which a failed write is a full disk


class _GdalErrors(logging.Handler):
    """Collects the write errors GDAL reports through rasterio's log (some are never raised: see `gdal_write_guard`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "error" in text.lower() and GDAL_WRITE_ERROR.search(text):
            found = re.search(r"msg='(.*)'", text)
            self.errors.append(found.group(1) if found else text)


@contextmanager
def gdal_write_guard(path: str | Path) -> Iterator[None]:
    """Around a GDAL write of `path` (opening, writing and closing the dataset): a failure GDAL raises, or only logs
    (libtiff's failed writes when a dataset closes: the file is then incomplete though closing "succeeded"),
    becomes an `OSError` naming `path`: ENOSPC when its file system is full (a job then stops, as for a PNG),
    EIO otherwise. Raised inside the caller's temp-file block, so nothing is renamed into place."""
    rasterio = _rasterio()
    from rasterio._err import CPLE_BaseError

    logger = logging.getLogger("rasterio._env")  # where rasterio reports every GDAL error, at INFO
    handler, level = _GdalErrors(), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        try:
            yield
        except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
            raise write_error(path, [*handler.errors, str(exc).splitlines()[0] if str(exc) else type(exc).__name__])\
                from None
        if handler.errors:
            raise write_error(path, handler.errors)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def write_error(path: str | Path, messages: Sequence[str]) -> OSError:
    """The `OSError` for a failed GDAL write of `path`: ENOSPC when its file system has (almost) no space left."""
    detail = f"GDAL: {messages[0][:160]}" if messages else "GDAL reported a failed write"
    try:
        full = shutil.disk_usage(Path(path).parent).free < FULL_BELOW
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({detail})", str(path))
    return OSError(errno.EIO, f"write failed ({detail})", str(path))


COG_HINT = "--cog needs rio-cogeo: pip install 'rsvl[geo]' (or pip install rio-cogeo)"


@contextmanager
def cloud_optimised(path: str | Path, enabled: bool = True) -> Iterator[Path]:
    """Yield the path a GeoTIFF writer should write to; on success that file becomes a Cloud-Optimised GeoTIFF
    at `path` (rio-cogeo: 512 px internal tiles, average-resampled overviews, deflate), renamed into place.

    Nothing is left behind on failure: the plain intermediate is an owner-tagged temp beside `path`. A GeoTIFF
    placed by GCPs or RPCs is made a COG by GDAL's COG driver (same layout), which keeps them (rio-cogeo drops
    GCPs and refuses RPCs without a CRS). A failed write names `path`, not the intermediate.
    """
    path = Path(path)
    if not enabled:
        yield path
        return
    try:
        from rio_cogeo.cogeo import cog_translate
        from rio_cogeo.profiles import cog_profiles
    except ImportError:
        raise RsvlError(COG_HINT) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, plain = tempfile.mkstemp(prefix=f".{path.stem}.{owner_tag()}.", suffix=".plain.tif.tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            yield Path(plain)
        except OSError as exc:
            if exc.filename != plain:
                raise
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        profile = cog_profiles.get("deflate")
        profile.update(blockxsize=COG_BLOCK, blockysize=COG_BLOCK, BIGTIFF="IF_SAFER")
        with atomic_path(path) as tmp, gdal_write_guard(path):
            if _placed_by_points(plain):
                from rasterio.shutil import copy

                copy(plain, str(tmp), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=COG_BLOCK,
                     OVERVIEW_RESAMPLING="AVERAGE", BIGTIFF="IF_SAFER")
            else:
                cog_translate(plain, str(tmp), profile, overview_resampling="average", in_memory=False, quiet=True)
    finally:
        Path(plain).unlink(missing_ok=True)


def _placed_by_points(path: str | Path) -> bool:
    """Whether a GeoTIFF is georeferenced by GCPs or RPCs."""
    with open_raster(path) as ds:
        return bool(ds.gcps[0]) or ds.rpcs is not None
