"""Where a scene comes from and where its result goes: plain images, or GeoTIFFs with their georeferencing.

`open_scene` picks the reader: a georeferenced raster (GeoTIFF, JPEG 2000, VRT, Imagine; geotransform, GCPs or
RPCs; any TIFF when bands/stretch are given) goes through rasterio (`scenes/geo.py`: bands, stretch, palette, validity
mask, georeferencing) and gives a GeoTIFF; a TIFF or GDAL-only raster without georeferencing is read by rasterio
too and gives a plain image; everything else goes through Pillow (`kit/image.py`). Invalid pixels (nodata, NaN/Inf,
the file's mask or alpha) reach the model filled from their valid neighbours (`geo.fill_invalid`), whole or window
by window. The matching writer keeps the georeferencing (pixel size / scale, same bounds; GCPs and RPCs scaled)
and the mask, and writes atomically, whole or row strip by row strip for windowed runs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..kit.errors import InputImageError
from ..kit.image import GDAL_ONLY_SUFFIXES, read_image, write_array_atomic, write_image_atomic
from ..kit.tiling import Tile
from .geo import RasterInfo, rasterio_available
from .windows import ArraySink

GEOTIFF_SUFFIXES = (".tif", ".tiff")
RASTER_SUFFIXES = GEOTIFF_SUFFIXES + GDAL_ONLY_SUFFIXES  # what rasterio reads for us
OVERVIEW_SIDE = 1024  # the scene overview a windowed run captions once (LLaVA-NeXT sees at most 672 px tiles)


@dataclass
class SceneSource:
    """One input scene: its size, a window reader, and what the run record should say about it."""

    path: Path
    height: int
    width: int
    notes: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)     # stretch, georeference (for the sidecar)
    image: torch.Tensor | None = None             # the whole scene, when it was read at once
    geo: object = None                            # (RasterInfo, Stretch, valid mask or None) for GeoTIFFs

    def read(self, tile: Tile) -> torch.Tensor:
        if self.image is not None:
            return self.image[..., tile.y0:tile.y1, tile.x0:tile.x1]
        from .geo import fill_invalid, read_window

        _, stretch, _ = self.geo
        window, valid = read_window(self.path, (tile.x0, tile.y0, tile.x1 - tile.x0, tile.y1 - tile.y0), stretch)
        return fill_invalid(window, valid)

    def overview(self, max_side: int = OVERVIEW_SIDE) -> torch.Tensor:
        """The whole scene shrunk (area average) to at most `max_side` pixels a side, without reading it whole."""
        factor = max(self.height, self.width) / max_side
        if factor <= 1:
            return self.whole()
        size = (max(1, round(self.height / factor)), max(1, round(self.width / factor)))
        if self.image is not None:
            return torch.nn.functional.interpolate(self.image, size=size, mode="area")
        from .geo import fill_invalid, read_window

        _, stretch, _ = self.geo
        overview, valid = read_window(self.path, (0, 0, self.width, self.height), stretch, out_size=size)
        return fill_invalid(overview, valid)

    def whole(self) -> torch.Tensor:
        if self.image is None:
            self.image = self.read(Tile(0, self.height, 0, self.width))
        return self.image


def is_geotiff_input(path: Path, bands: str | None, stretch: str | None) -> bool:
    from .geo import has_georeference

    return path.suffix.lower() in RASTER_SUFFIXES and (bands is not None or stretch is not None
                                                       or has_georeference(path))


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from a file's header, without decoding pixels: GDAL for the rasters it reads for us (GeoTIFF,
    JPEG 2000, ...), Pillow for the rest; None when neither can (reading the file reports why)."""
    try:
        if path.suffix.lower() in RASTER_SUFFIXES and rasterio_available():
            from .geo import open_raster

            with open_raster(path) as ds:
                return ds.height, ds.width
        from PIL import Image

        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # noqa: BLE001 - any unreadable header: the file's own read names the problem
        return None


def open_scene(path: Path, bands: str | None = None, stretch: str | None = None, percentiles: str | None = None,
               windowed: bool = False, geotiff: bool | None = None) -> SceneSource:
    """Open an input: a whole plain image, or a GeoTIFF (whole, or lazily by windows when `windowed`).

    `geotiff`: the caller's `is_geotiff_input` answer, if it already has one (saves reading the header again).
    """
    suffix = path.suffix.lower()
    if suffix in GDAL_ONLY_SUFFIXES and not rasterio_available():
        raise InputImageError(f'{path}: {suffix} rasters are read through GDAL: pip install "rsvl[geo]" (rasterio)')
    if geotiff is None:
        geotiff = is_geotiff_input(path, bands, stretch)
    if not geotiff:
        if bands is not None or stretch is not None:
            raise ValueError(f"{path}: --bands/--stretch apply to rasters GDAL reads "
                             f"({', '.join(RASTER_SUFFIXES)}) only")
        if suffix in RASTER_SUFFIXES and rasterio_available():
            return _plain_raster(path)
        image, notes = read_image(path)
        return SceneSource(path, image.shape[-2], image.shape[-1], notes, image=image)
    from .geo import BandPlan, fill_invalid, read_raster, scene_radiometry

    plan = BandPlan.parse(bands=bands, stretch=stretch, percentiles=percentiles)
    if windowed:
        stretch_used, info, notes = scene_radiometry(path, plan)
        source = SceneSource(path, info.height, info.width, notes, geo=(info, stretch_used, None))
    else:
        raster = read_raster(path, plan)
        info, stretch_used = raster.info, raster.stretch
        source = SceneSource(path, info.height, info.width, list(raster.notes),
                             image=fill_invalid(raster.image, raster.valid), geo=(info, stretch_used, raster.valid))
    source.record = {"stretch": stretch_used.to_dict(), "georeference": georeference_record(info)}
    return source


def georeference_record(info: RasterInfo) -> dict:
    """What the run record says about an input's place: CRS and grid, or its GCPs or RPCs, and its validity."""
    record = {"crs": str(info.crs), "bounds": list(info.bounds), "pixel_size": list(info.res),
              "bands": list(info.bands), "nodata": info.nodata, "kind": info.georeferencing}
    if info.gcps:
        record["gcps"] = {"count": len(info.gcps), "crs": str(info.gcps_crs)}
    if info.rpcs is not None:
        record["rpcs"] = "kept, line/sample offset and scale adjusted for the output grid"
    if info.mask_source is not None:
        record["mask"] = info.mask_source
    return record


def _plain_raster(path: Path) -> SceneSource:
    """A TIFF (or JPEG 2000, VRT, ...) without georeferencing, read through rasterio: 16-bit and float data are
    stretched as for GeoTIFFs (not cut to their high byte, nor clipped), bands and palettes as for GeoTIFFs; the
    output is a plain image."""
    from .geo import BandPlan, fill_invalid, read_raster

    raster = read_raster(path, BandPlan(), plain=True)
    return SceneSource(path, raster.info.height, raster.info.width, list(raster.notes), {"stretch":
                       raster.stretch.to_dict()}, image=fill_invalid(raster.image, raster.valid))


def write_whole(source: SceneSource, image: torch.Tensor, target: Path, scale: int, cog: bool = False,
                dtype: str = "uint8") -> None:
    """Write a whole result: PNG (or the target's image format), or a GeoTIFF with the scaled georeferencing
    (a Cloud-Optimised GeoTIFF with `cog`; `dtype` "source": the input's data type through its stretch)."""
    if source.geo is None:
        write_image_atomic(image, target)
        return
    from .geo import cloud_optimised, upscale_mask, write_geotiff_atomic

    info, stretch, valid = source.geo
    mask = upscale_mask(valid, scale) if valid is not None else None
    with cloud_optimised(target, cog) as path:
        write_geotiff_atomic(image, path, info.scaled(scale), valid=mask, stretch=stretch, dtype=dtype)


class _GeoRowSink:
    """Rows -> the GeoTIFF window writer, with nodata restored from the source rows' validity."""

    def __init__(self, writer, source: SceneSource, scale: int) -> None:
        self.writer, self.source, self.scale = writer, source, scale

    def write(self, row0: int, rows: np.ndarray) -> None:
        from .geo import read_window

        _, stretch, _ = self.source.geo
        s = self.scale
        _, valid = read_window(self.source.path, (0, row0 // s, self.source.width, rows.shape[0] // s), stretch)
        image = torch.from_numpy(rows).permute(2, 0, 1)[None].float() / 255
        self.writer.write(image, (0, row0, rows.shape[1], rows.shape[0]), valid)


@contextmanager
def row_sink(source: SceneSource, target: Path, scale: int, cog: bool = False):
    """A RowSink for a windowed run: GeoTIFF strips written as they finish (then made a COG with `cog`), or an
    array written at the end."""
    if source.geo is not None:
        from .geo import GeoTiffWindowWriter, cloud_optimised

        info, stretch, _ = source.geo
        with cloud_optimised(target, cog) as path, GeoTiffWindowWriter(path, info.scaled(scale), stretch) as writer:
            yield _GeoRowSink(writer, source, scale)
        return
    sink = ArraySink(source.height * scale, source.width * scale)  # uint8: 3 bytes per output pixel
    yield sink
    write_array_atomic(sink.array, target)
