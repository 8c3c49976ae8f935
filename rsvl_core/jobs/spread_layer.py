"""The uncertainty layer beside an output: windows' spreads blended into one map, written as a GeoTIFF on the
output's grid (same CRS, transform and nodata; a COG with --cog; or an extra band of the output), or as a
colour-mapped PNG with a legend for plain images; and its summary in the run record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..kit.atomic import atomic_path
from ..kit.image import write_array_atomic
from ..kit.tiling import Feather, Tile, TileBlender
from ..scenes.sources import SceneSource
from ..scenes.windows import WindowOptions, plan_windows
from .samples import UncertaintyOptions, heat_map, summarise_spread

LAYER_SUFFIX = "_uncertainty"
LAYER_NOTE = "per-pixel standard deviation across samples, in 8-bit output levels"


def layer_path(target: Path) -> Path:
    """Where an output's uncertainty layer goes: `<output stem>_uncertainty.tif` (GeoTIFF) or `.png` beside it."""
    return target.with_name(f"{target.stem}{LAYER_SUFFIX}{target.suffix}")


def layer_owner(path: Path) -> Path:
    """The output an uncertainty layer belongs to (`a_x8_uncertainty.png` -> `a_x8.png`); else `path` itself."""
    stem = path.stem
    return path.with_name(stem[:-len(LAYER_SUFFIX)] + path.suffix) if stem.endswith(LAYER_SUFFIX) else path


class SpreadCanvas:
    """Blends the windows' spread maps of one scene with the weights the windows' images are blended with
    (the same raised cosine over the overlap), so the layer is as seamless as the output. Whole canvas in
    memory: 4 bytes per output pixel."""

    def __init__(self, height: int, width: int, scale: int, windows: WindowOptions) -> None:
        self.tiles = plan_windows(height, width, windows, scale)
        self.scale = scale
        self.blender = TileBlender(height * scale, width * scale, Feather(windows.overlap * scale), device="cpu")

    def add(self, index: int, spread: torch.Tensor) -> None:
        """Window `index`'s spread (1, 1, h * scale, w * scale)."""
        tile, s = self.tiles[index], self.scale
        self.blender.add(Tile(tile.y0 * s, tile.y1 * s, tile.x0 * s, tile.x1 * s), spread.float().cpu())

    def result(self) -> torch.Tensor:
        return self.blender.result()


def merge_window_records(records: list[dict]) -> dict[str, Any] | None:
    """A windowed scene's uncertainty record from its windows' (time per sample summed, fraction replaced
    weighted by window pixels; the summary is added from the blended layer)."""
    parts = [r["uncertainty"] for r in records if r.get("uncertainty")]
    if not parts:
        return None
    merged = dict(parts[0])
    merged["seconds_per_sample"] = [round(sum(p["seconds_per_sample"][k] for p in parts), 3)
                                    for k in range(len(parts[0]["seconds_per_sample"]))]
    pixels = [r.get("output_pixels", 1) for r in records if r.get("uncertainty")]
    fraction = sum(p["guard"]["fraction_replaced"] * n for p, n in zip(parts, pixels, strict=True)) / sum(pixels)
    merged["guard"] = {**parts[0]["guard"], "fraction_replaced": round(fraction, 6)}
    return merged


def layer_notes(scene: SceneSource, options: UncertaintyOptions) -> list[str]:
    """What to say before a run about the layer: `--uncertainty-band` on a plain image writes the PNG layer instead."""
    if options.enabled and options.band and scene.geo is None:
        return ["--uncertainty-band adds a band to GeoTIFF outputs only: this plain image's uncertainty is written "
                f"as the colour-mapped PNG layer beside it (<output>{LAYER_SUFFIX}.png) instead"]
    return []


def write_layer(scene: SceneSource, spread: torch.Tensor, target: Path, options: UncertaintyOptions,
                cog: bool = False) -> dict[str, Any]:
    """`_write_layer`; when the layer cannot be written (a full disk), the output goes too: without its layer it is
    not complete, and a rerun redoes both."""
    try:
        return _write_layer(scene, spread, target, options, cog)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _write_layer(scene: SceneSource, spread: torch.Tensor, target: Path, options: UncertaintyOptions,
                 cog: bool = False) -> dict[str, Any]:
    """Write the spread (1, 1, H, W) levels of the output at `target` (written already); returns the record's
    summary part: mean and p95 std, fraction above the guard threshold, where the layer is."""
    if scene.geo is None:
        picture = heat_map(spread, options.guard)
        path = write_array_atomic(picture, layer_path(target))
        summary = summarise_spread(spread, options.guard)
        record = {**summary.to_dict(), "units": LAYER_NOTE, "layer": path.name,
                  "layer_kind": "colour-mapped PNG with a legend strip (not data)"}
        if options.band:
            record["note"] = "--uncertainty-band applies to GeoTIFF outputs; a plain image gets the PNG layer"
        return record
    values = spread[0, 0].float().cpu().numpy()
    if options.band:
        valid = _add_band(target, values, cog)
        where = {"layer": target.name, "layer_kind": f"band {valid[1]} of the output (whole levels, uint8)"}
        valid = valid[0]
    else:
        path, valid = _write_geotiff_layer(target, values, cog)
        where = {"layer": path.name, "layer_kind": "float32 GeoTIFF on the output's grid"}
    summary = summarise_spread(spread, options.guard, torch.from_numpy(valid))
    return {**summary.to_dict(), "units": LAYER_NOTE, **where}


def _write_geotiff_layer(target: Path, values: np.ndarray, cog: bool) -> tuple[Path, np.ndarray]:
    """A one-band float32 GeoTIFF with the output's CRS, transform and nodata; nodata where the output has it."""
    import rasterio  # a GeoTIFF output was just written with it

    from ..scenes.geo import OutputPlace, cloud_optimised, gdal_write_guard

    with rasterio.open(target) as out:
        profile = {"driver": "GTiff", "width": out.width, "height": out.height, "count": 1, "dtype": "float32",
                   "crs": out.crs, "transform": out.transform, "nodata": out.nodata, "tiled": True,
                   "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 3}
        valid = out.dataset_mask() > 0
        place = OutputPlace.of(out)  # GCPs, RPCs and mask band of the output: the layer's too
    data = values.astype(np.float32)
    if out.nodata is not None:
        fill = np.float32(out.nodata)
        collide = valid & (data == fill)   # a real spread equal to nodata would read back as nodata: nudge it
        data[collide] = np.nextafter(fill, np.float32(np.inf))
        data[~valid] = fill
    path = layer_path(target)
    with cloud_optimised(path, cog) as plain, atomic_path(plain) as tmp, gdal_write_guard(plain), place.env(), \
            rasterio.open(tmp, "w", **place.profile(profile)) as ds:
        ds.write(data[None])
        place.apply(ds, valid)
        ds.set_band_description(1, "uncertainty: std across samples (8-bit levels)")
        ds.update_tags(RSVL_LAYER="uncertainty", RSVL_UNITS="8-bit output levels")
    return path, valid


def _add_band(target: Path, values: np.ndarray, cog: bool) -> tuple[np.ndarray, int]:
    """Rewrite the output with the spread as one more band (rounded to whole levels in the output's type)."""
    import rasterio  # a GeoTIFF output was just written with it
    from rasterio.enums import ColorInterp

    from ..scenes.geo import OutputPlace, cloud_optimised, gdal_write_guard

    with rasterio.open(target) as out:
        data, profile, tags = out.read(), dict(out.profile), out.tags()
        descriptions, interps = list(out.descriptions), list(out.colorinterp)
        valid = out.dataset_mask() > 0
        place = OutputPlace.of(out)  # GCPs, RPCs and mask band of the output: kept
    limits = np.iinfo(data.dtype) if data.dtype.kind in "ui" else None
    band = np.round(values) if limits is not None else values
    if limits is not None:
        band = np.clip(band, limits.min, limits.max)
    band = band.astype(data.dtype)
    if profile.get("nodata") is not None:
        band[~valid] = np.asarray(profile["nodata"]).astype(data.dtype)
    # the extra band is data, not alpha: GDAL would take a 4th RGB band as alpha (the mask = the std band)
    profile.update(count=data.shape[0] + 1, driver="GTiff", alpha="unspecified")
    profile.pop("photometric", None)
    if data.shape[0] == 3 and data.dtype in (np.uint8, np.uint16):
        profile["photometric"] = "RGB"
    with cloud_optimised(target, cog) as plain, atomic_path(plain) as tmp, gdal_write_guard(plain), place.env(), \
            rasterio.open(tmp, "w", **place.profile(profile)) as ds:
        ds.write(np.concatenate([data, band[None]]))
        ds.colorinterp = [*interps, ColorInterp.undefined]
        place.apply(ds, valid)
        for i, text in enumerate([*descriptions, "uncertainty: std across samples (8-bit levels)"], start=1):
            if text:
                ds.set_band_description(i, text)
        ds.update_tags(**tags, RSVL_UNCERTAINTY_BAND=str(data.shape[0] + 1))
    return valid, data.shape[0] + 1
