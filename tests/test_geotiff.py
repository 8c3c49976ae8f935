"""GeoTIFF in/out (rsvl_core.scenes.geo): georeferencing kept and scaled, band/stretch explicit, atomic writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rsvl_testing import REPO

from rsvl_core.kit.errors import InputImageError, RsvlError
from rsvl_core.scenes.geo import (
    BandPlan,
    GeoTiffWindowWriter,
    Stretch,
    has_georeference,
    rasterio_available,
    read_raster,
    read_window,
    scene_stretch,
    write_geotiff_atomic,
)

OSBS = REPO.parent / "shared" / "data" / "OSBS_029.tif"
needs_rasterio = pytest.mark.skipif(not rasterio_available(),
                                    reason='rasterio is not installed (pip install "rsvl[geo]")')
needs_osbs = pytest.mark.skipif(not OSBS.is_file(), reason=f"{OSBS} (shared real GeoTIFF sample) not present")


def nearest(image: torch.Tensor, scale: int) -> torch.Tensor:
    """A stand-in for the model: exact, so written values can be checked."""
    return F.interpolate(image, scale_factor=scale, mode="nearest")


def write_raster(path: Path, data: np.ndarray, nodata=None, descriptions=None, **extra) -> Path:
    import rasterio
    from affine import Affine

    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=str(data.dtype),
                   crs="EPSG:32617", transform=Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4000000.0), nodata=nodata, **extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, text)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


@needs_rasterio
@needs_osbs
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_osbs_bounds_kept_pixel_size_divided(tmp_path, scale):
    import rasterio

    read = read_raster(OSBS)
    assert read.image.shape == (1, 3, 400, 400) and read.image.dtype == torch.float32
    assert read.info.res == pytest.approx((0.1, 0.1)) and read.info.crs.to_epsg() == 32617
    assert read.stretch.method == "none" and read.stretch.high == (255.0,) * 3  # uint8: /255, no stretch
    out_path = write_geotiff_atomic(nearest(read.image, scale), tmp_path / "osbs.tif", read.info.scaled(scale),
                                    valid=read.valid, stretch=read.stretch)
    with rasterio.open(OSBS) as src, rasterio.open(out_path) as out:
        assert (out.width, out.height, out.count, out.dtypes[0]) == (400 * scale, 400 * scale, 3, "uint8")
        assert out.crs == src.crs
        assert tuple(out.bounds) == pytest.approx(tuple(src.bounds), abs=1e-6)
        assert out.res == pytest.approx((0.1 / scale, 0.1 / scale))
        assert out.nodata == src.nodata == 255
        assert out.block_shapes[0] == (512, 512) and out.profile["tiled"]
        assert out.compression.value.lower() == "deflate"
        assert out.tags()["AREA_OR_POINT"] == "Area" and out.tags()["RSVL_SCALE"] == str(scale)
        assert json.loads(out.tags()["RSVL_STRETCH"])["method"] == "none"
        assert "STATISTICS_MEAN" not in out.tags(1)  # input statistics are not carried to the output
        source, written = src.read(), out.read()
    # nearest upscaling of uint8/255 comes back exactly, except pixels that were nodata, and a valid pixel's band
    # equal to nodata (255), moved to 254 so that no band's mask hides a valid pixel (#34)
    expected = np.repeat(np.repeat(source, scale, axis=1), scale, axis=2)
    valid = ~np.all(expected == 255, axis=0)
    expected[:, valid] = np.where(expected[:, valid] == 255, 254, expected[:, valid])
    assert np.array_equal(written, expected)
    assert leftovers(tmp_path) == []


@needs_rasterio
@needs_osbs
def test_osbs_nodata_restored_as_blocks_and_valid_pixels_never_read_as_nodata(tmp_path):
    import rasterio

    read = read_raster(OSBS)
    nodata_in = ~read.valid
    assert int(nodata_in.sum()) == 461  # the file's nodata is 255: 461 pixels are 255 in all three bands
    assert any("461 nodata pixel(s)" in n for n in read.notes)
    assert float(read.image[0][:, torch.from_numpy(nodata_in)].abs().max()) == 0.0  # filled with 0 for the model
    # a "model" that makes everything white: valid pixels must not become nodata
    white = torch.ones(1, 3, 800, 800)
    path = write_geotiff_atomic(white, tmp_path / "white.tif", read.info.scaled(2), valid=read.valid)
    with rasterio.open(path) as ds:
        data, mask = ds.read(), ds.dataset_mask()
    assert int((mask == 0).sum()) == 461 * 4
    assert np.array_equal(mask == 0, np.repeat(np.repeat(nodata_in, 2, axis=0), 2, axis=1))
    assert set(np.unique(data[:, mask > 0])) == {254}  # nudged by one level


@needs_rasterio
def test_more_than_three_bands_need_an_explicit_choice_and_16_bit_is_stretched(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(100, 4000, (5, 20, 30), dtype=np.uint16)
    path = write_raster(tmp_path / "ms.tif", data, descriptions=["blue", "green", "red", "nir", "swir"])
    with pytest.raises(InputImageError, match=r"ms.tif: raster has 5 bands; choose .*--bands"):
        read_raster(path)
    with pytest.raises(InputImageError, match="names band 6, but the raster has 5"):
        read_raster(path, BandPlan(bands=(6, 2, 1)))
    read = read_raster(path, BandPlan.parse("3,2,1"))
    assert read.image.shape == (1, 3, 20, 30)
    assert read.stretch.method == "percentile" and read.stretch.bands == (3, 2, 1)  # default for 16-bit
    for i, band in enumerate((3, 2, 1)):
        low, high = np.percentile(data[band - 1], (2, 98))
        assert read.stretch.low[i] == pytest.approx(low) and read.stretch.high[i] == pytest.approx(high)
        expected = np.clip((data[band - 1] - low) / (high - low), 0, 1)
        np.testing.assert_allclose(read.image[0, i].numpy(), expected, atol=1e-6)
    assert read.info.descriptions == ("red", "green", "blue")
    assert any("2-98 percentiles" in n for n in read.notes) and any("bands 3,2,1 of 5" in n for n in read.notes)
    # no stretch: the documented full-range scaling (/65535)
    flat = read_raster(path, BandPlan(bands=(3, 2, 1), stretch="none"))
    np.testing.assert_allclose(flat.image[0, 0].numpy(), data[2] / 65535, atol=1e-6)
    assert flat.stretch.to_dict() == {"method": "none", "bands": [3, 2, 1], "source_dtype": "uint16",
                                      "low": [0.0] * 3, "high": [65535.0] * 3}


@needs_rasterio
def test_source_dtype_output_inverts_the_stretch_and_keeps_descriptions(tmp_path):
    import rasterio

    rng = np.random.default_rng(1)
    data = rng.integers(0, 10000, (4, 16, 12), dtype=np.uint16)
    path = write_raster(tmp_path / "in.tif", data, nodata=0, descriptions=["b", "g", "r", "n"])
    read = read_raster(path, BandPlan(bands=(3, 2, 1), percentiles=(0, 100)))
    out = write_geotiff_atomic(nearest(read.image, 2), tmp_path / "out.tif", read.info.scaled(2),
                               valid=read.valid, stretch=read.stretch, dtype="source")
    with rasterio.open(out) as ds:
        assert ds.dtypes == ("uint16",) * 3 and ds.descriptions == ("r", "g", "b") and ds.nodata == 0
        back = ds.read()
        assert Stretch.from_dict(json.loads(ds.tags()["RSVL_STRETCH"])) == read.stretch
    expected = np.repeat(np.repeat(data[[2, 1, 0]], 2, axis=1), 2, axis=2).astype(np.int64)
    valid = np.repeat(np.repeat(read.valid, 2, axis=0), 2, axis=1) if read.valid is not None else True
    # min..max stretch inverted: within float32 rounding of the original values
    assert np.abs(back.astype(np.int64) - expected)[:, valid].max() <= 1


@needs_rasterio
def test_single_band_is_replicated_in_and_written_back_as_one_band(tmp_path):
    import rasterio

    gray = np.arange(8 * 10, dtype=np.uint8).reshape(1, 8, 10)
    path = write_raster(tmp_path / "pan.tif", gray, descriptions=["pan"])
    read = read_raster(path)
    assert read.image.shape == (1, 3, 8, 10) and read.info.bands == (1,)
    assert torch.equal(read.image[0, 0], read.image[0, 2]) and "band 1 replicated to RGB" in read.notes
    out = write_geotiff_atomic(nearest(read.image, 4), tmp_path / "pan_x4.tif", read.info.scaled(4))
    with rasterio.open(out) as ds:
        assert (ds.count, ds.width, ds.height, ds.descriptions) == (1, 40, 32, ("pan",))
        assert np.array_equal(ds.read(1), np.repeat(np.repeat(gray[0], 4, axis=0), 4, axis=1))


@needs_rasterio
def test_float_raster_with_nan_nodata(tmp_path):
    data = np.random.default_rng(2).normal(0.3, 0.1, (3, 10, 10)).astype(np.float32)
    data[:, :2, :3] = np.nan
    read = read_raster(write_raster(tmp_path / "f.tif", data, nodata=float("nan")))
    assert read.stretch.method == "percentile" and int((~read.valid).sum()) == 6
    assert torch.isfinite(read.image).all() and float(read.image[0, :, :2, :3].abs().max()) == 0.0
    assert all(np.isfinite(read.stretch.low)) and all(np.isfinite(read.stretch.high))


@needs_rasterio
def test_windows_use_the_scene_stretch_and_match_a_whole_write(tmp_path):
    import rasterio

    rng = np.random.default_rng(3)
    data = rng.integers(0, 3000, (3, 40, 50), dtype=np.uint16)
    path = write_raster(tmp_path / "scene.tif", data)
    whole = read_raster(path)
    stretch, info = scene_stretch(path)
    assert stretch == whole.stretch  # small scene: the decimated read is the full read
    coarse, _ = scene_stretch(path, max_pixels=100)  # a decimated read gives close, not equal, values
    assert coarse.method == "percentile" and abs(coarse.high[0] - stretch.high[0]) < 600
    write_geotiff_atomic(nearest(whole.image, 2), tmp_path / "whole.tif", info.scaled(2), stretch=stretch)
    windows = [(0, 0, 50, 16), (0, 16, 50, 24)]  # col_off, row_off, width, height
    with GeoTiffWindowWriter(tmp_path / "windowed.tif", info.scaled(2), stretch) as writer:
        for col, row, width, height in windows:
            image, valid = read_window(path, (col, row, width, height), stretch)
            assert valid is None and image.shape == (1, 3, height, width)
            writer.write(nearest(image, 2), (col * 2, row * 2, width * 2, height * 2), valid)
        assert not (tmp_path / "windowed.tif").exists()  # only a temp file until the block ends
    # exact: the stretch, the nearest "model" and the 8-bit rounding act per pixel (no sums over pixels), so the
    # window split cannot change a value
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(tmp_path / "windowed.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform
    assert leftovers(tmp_path) == []


@needs_rasterio
def test_a_failed_write_leaves_nothing(tmp_path):
    data = np.zeros((3, 8, 8), dtype=np.uint8)
    read = read_raster(write_raster(tmp_path / "z.tif", data))
    with pytest.raises(RuntimeError, match="model crashed"):
        with GeoTiffWindowWriter(tmp_path / "out.tif", read.info.scaled(2)) as writer:
            writer.write(torch.zeros(1, 3, 8, 16), (0, 0, 16, 8))
            raise RuntimeError("model crashed")
    with pytest.raises(ValueError, match="pass info.scaled"):
        write_geotiff_atomic(torch.zeros(1, 3, 8, 8), tmp_path / "out.tif", read.info.scaled(2))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\) does not fit the 16x16 image"):
        write_geotiff_atomic(torch.zeros(1, 3, 16, 16), tmp_path / "out.tif", read.info.scaled(2),
                             valid=np.ones((3, 3), bool))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.tif"]


@needs_rasterio
def test_bad_rasters_are_named(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + b"\x07" * 64)
    for name, match in (("empty.tif", "empty"), ("junk.tif", "not a readable raster"), ("none.tif", "not found")):
        with pytest.raises(InputImageError, match=match) as info:
            read_raster(tmp_path / name)
        assert name in str(info.value)
    big = write_raster(tmp_path / "big.tif", np.zeros((3, 20, 30), np.uint8))
    with pytest.raises(InputImageError, match=r"30x20 \(600 pixels\), over the 599-pixel limit"):
        read_raster(big, max_pixels=599)


def test_band_plan_checks():
    for kwargs, match in ((dict(bands="4,3"), "name 1 band"), (dict(bands="0,1,2"), "numbered from 1"),
                          (dict(bands="r,g,b"), "1-based band numbers"), (dict(stretch="gamma"), "choose one of"),
                          (dict(percentiles="98,2"), "low < high")):
        with pytest.raises(RsvlError, match=match):
            BandPlan.parse(**kwargs)
    assert BandPlan.parse("3, 2, 1", "percentile", "1,99") == BandPlan((3, 2, 1), "percentile", (1.0, 99.0))
    assert BandPlan().resolve(3, "uint8") == ((1, 2, 3), "none")
    assert BandPlan().resolve(1, "int16") == ((1,), "percentile")
    with pytest.raises(InputImageError, match="raster has 2 bands"):
        BandPlan().resolve(2, "uint8", "two.tif")


def test_without_rasterio_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio -> ImportError
    assert not rasterio_available()
    with pytest.raises(RsvlError, match=r'pip install "rsvl\[geo\]"'):
        read_raster(tmp_path / "scene.tif")


@needs_osbs
def test_georeference_is_detected_without_rasterio(monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)
    assert has_georeference(OSBS)
    assert not has_georeference(OSBS.with_suffix(".png"))


def _write(path, data, **extra):
    rasterio = pytest.importorskip("rasterio", reason='rasterio is not installed (pip install "rsvl[geo]")')
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": str(data.dtype), "crs": "EPSG:32617", "transform": from_origin(400000, 3280000, 1, 1), **extra}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_declared_12_bit_data_with_stretch_none_uses_the_declared_range(tmp_path):
    from rsvl_core.scenes.geo import BandPlan, read_raster

    data = np.tile(np.linspace(0, 4095, 16, dtype=np.uint16), (3, 8, 1))
    path = _write(tmp_path / "nbits.tif", data, nbits=12)
    read = read_raster(path, BandPlan.parse(stretch="none"))
    assert read.stretch.high == (4095.0,) * 3
    assert read.image.max().item() == pytest.approx(1.0) and read.image.min().item() == 0.0
    assert any("declares 12-bit data" in n for n in read.notes)


def test_12_bit_data_without_a_declaration_warns_with_stretch_none(tmp_path):
    from rsvl_core.scenes.geo import BandPlan, read_raster

    data = np.tile(np.linspace(0, 4000, 16, dtype=np.uint16), (3, 8, 1))
    read = read_raster(_write(tmp_path / "dark.tif", data), BandPlan.parse(stretch="none"))
    assert read.stretch.high == (65535.0,) * 3
    warning = next(n for n in read.notes if n.startswith("warning: the largest value is 4000"))
    assert "12-bit data?" in warning and "--stretch percentile" in warning


def test_a_constant_band_keeps_its_level_and_an_all_nodata_scene_warns(tmp_path):
    from rsvl_core.scenes.geo import read_raster

    constant = np.full((3, 8, 8), 30000, dtype=np.uint16)
    read = read_raster(_write(tmp_path / "flat.tif", constant))  # percentile by default for uint16
    assert read.image.min().item() == pytest.approx(30000 / 65535, abs=1e-6)  # not 0 (black)
    empty = np.full((3, 8, 8), 7, dtype=np.uint16)
    read = read_raster(_write(tmp_path / "empty.tif", empty, nodata=7))
    assert "warning: every pixel is nodata: the output is nodata too" in read.notes
