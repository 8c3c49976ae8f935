"""Rasters as GIS reads them (#34): masks, GCP/RPC georeferencing, nodata that stays nodata, an uncertainty band
that is not alpha, NaN without a traceback, no dark rim along a nodata collar, and a full disk that stops a
GeoTIFF/COG/layer run as it stops a PNG run. Every scene is built here with rasterio."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rsvl_testing import tiny_sr3_config

from rsvl_core.cli import main
from rsvl_core.stage1 import SR3UNet, save_sr3

rasterio = pytest.importorskip("rasterio", reason='rasterio is not installed (pip install "rsvl[geo]")')
from affine import Affine  # noqa: E402  (comes with rasterio)
from rasterio.control import GroundControlPoint  # noqa: E402
from rasterio.enums import ColorInterp, MaskFlags  # noqa: E402
from rasterio.rpc import RPC  # noqa: E402

FAST = ["--sampler", "ddim", "--steps", "2", "-q", "--stage1-only", "--scale", "2", "--tile-size", "128"]
UTM = Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4000000.0)


@pytest.fixture
def models_dir(tmp_path):
    folder = tmp_path / "models"
    save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32, attention_levels=())),
             folder / "sr3" / "I9_E9_gen.pth")
    return folder


def write_scene(path: Path, data: np.ndarray, *, nodata=None, georef: str = "transform", mask: np.ndarray | None = None,
                mask_file: bool = False, alpha: bool = False) -> Path:
    """A raster with `data` (bands, H, W): placed by a geotransform, GCPs or RPCs; with an internal or external
    (.msk) mask, or its last band as alpha."""
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=str(data.dtype), nodata=nodata)
    if georef == "transform":
        profile.update(crs="EPSG:32617", transform=UTM)
    if alpha:
        profile.update(photometric="RGB", alpha="YES")
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=not mask_file), rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if georef == "gcps":
            ds.gcps = (scene_gcps(width, height), rasterio.crs.CRS.from_epsg(4326))
        elif georef == "rpcs":
            ds.rpcs = scene_rpcs(width, height)
        if mask is not None:
            ds.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return path


def scene_gcps(width: int, height: int) -> list:
    """Four corners and the centre, on a slightly rotated ground grid (lon/lat)."""
    points = [(0, 0), (0, width), (height, 0), (height, width), (height / 2, width / 2)]
    return [GroundControlPoint(row=r, col=c, x=10.0 + c * 1e-4 + r * 1e-5, y=50.0 - r * 1e-4 + c * 1e-5, z=0.0)
            for r, c in points]


def scene_rpcs(width: int, height: int) -> RPC:
    """A near-affine RPC model: sample ~ longitude, line ~ -latitude (plus a small cross term)."""
    line_num, samp_num = [0.0] * 20, [0.0] * 20
    line_num[2], line_num[1] = -1.0, 0.05   # coefficient order: 1, L(on), P(lat), H, ...
    samp_num[1], samp_num[2] = 1.0, 0.03
    return RPC(height_off=0.0, height_scale=100.0, lat_off=50.0, lat_scale=0.01, long_off=10.0, long_scale=0.01,
               line_off=height / 2, line_scale=height / 2, samp_off=width / 2, samp_scale=width / 2,
               line_num_coeff=line_num, line_den_coeff=[1.0] + [0.0] * 19, samp_num_coeff=samp_num,
               samp_den_coeff=[1.0] + [0.0] * 19)


def upscaled(mask: np.ndarray, scale: int = 2) -> np.ndarray:
    return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)


def textured(shape: tuple[int, int, int], level: tuple[float, ...], spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.asarray(level, dtype=np.float64)[:, None, None]
    return base + rng.normal(0, spread, shape)


def run(args: list[str]) -> int:
    return main(["upscale", *[str(a) for a in args]])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# 1. --uncertainty-band: a band described as uncertainty, never alpha; on a plain image the PNG layer, said so


@pytest.mark.parametrize("cog", [False, True])
def test_uncertainty_band_is_data_not_alpha(models_dir, tmp_path, capsys, cog):
    if cog:
        pytest.importorskip("rio_cogeo", reason="rio-cogeo is not installed")
    data = np.clip(textured((3, 24, 28), (120, 140, 100), 30), 0, 255).astype(np.uint8)
    source = write_scene(tmp_path / "in" / "tiled.tif", data)  # no nodata, no mask: every output pixel is valid
    out = tmp_path / "out"
    assert run([source, "-o", out, "--models-dir", models_dir, *FAST, "--samples", "2", "--uncertainty-band",
                *(["--cog"] if cog else [])]) == 0
    with rasterio.open(out / "tiled_x2.tif") as ds:
        assert ds.count == 4
        assert ds.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined)
        assert "uncertainty" in ds.descriptions[3]
        assert all(flags == [MaskFlags.all_valid] for flags in ds.mask_flag_enums)
        assert int((ds.dataset_mask() == 0).sum()) == 0  # before: transparent wherever the samples agreed
        assert ds.tags()["RSVL_UNCERTAINTY_BAND"] == "4"


def test_uncertainty_band_on_a_plain_image_says_it_writes_the_png_layer(models_dir, tmp_path, capsys):
    from PIL import Image

    source = tmp_path / "in" / "photo.png"
    source.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "out"
    assert run([source, "-o", out, "--models-dir", models_dir, *FAST, "--samples", "2", "--uncertainty-band"]) == 0
    err = capsys.readouterr().err
    assert ("photo.png: --uncertainty-band adds a band to GeoTIFF outputs only: this plain image's uncertainty is "
            "written as the colour-mapped PNG layer beside it") in err
    assert (out / "photo_x2_uncertainty.png").is_file()


# 2. NaN/Inf in float data without a nodata value: invalid pixels, masked in the output, no traceback


@pytest.mark.parametrize("window", [0, 16])
def test_nan_and_inf_without_nodata_are_masked_not_a_traceback(models_dir, tmp_path, capsys, window):
    data = (textured((3, 32, 40), (150, 155, 140), 5) / 255).astype(np.float32)
    data[:, :6, :5] = np.nan
    data[1, 20, 30] = np.inf  # one band: the pixel cannot be computed
    data[0, 25, 2] = -np.inf
    source = write_scene(tmp_path / "in" / "float.tif", data)
    out = tmp_path / "out"
    windows = ["--window-size", window, "--window-overlap", "4"] if window else []
    assert run([source, "-o", out, "--models-dir", models_dir, *FAST, *windows]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" not in err
    if not window:
        assert "float.tif: 32 nodata pixel(s) (NaN/Inf) filled from their valid neighbours for the model" in err
    valid = np.isfinite(data).all(axis=0)
    with rasterio.open(out / "float_x2.tif") as ds:
        assert ds.nodata is None and ds.mask_flag_enums[0] == [MaskFlags.per_dataset]
        assert np.array_equal(ds.dataset_mask() > 0, upscaled(valid))
        assert int((ds.read()[:, ~upscaled(valid)] != 0).sum()) == 0


# 4. stretched valid data never takes the nodata value: no valid pixel is hidden by a band's mask


@pytest.mark.parametrize("kind", ["uint16 nodata 0, 13 bands", "int16 nodata -9999"])
def test_stretched_valid_pixels_never_become_nodata(models_dir, tmp_path, kind):
    if kind.startswith("uint16"):
        data = np.clip(textured((13, 40, 48), [900 + 50 * b for b in range(13)], 300), 1, 4000).astype(np.uint16)
        nodata, bands = 0, ["--bands", "4,3,2"]
    else:
        data = np.clip(textured((3, 40, 48), (300, 500, 700), 250), -2000, 3000).astype(np.int16)
        nodata, bands = -9999, []
    data[:, :, :6] = nodata  # a collar
    data[:, 30:, 40:] = nodata
    source = write_scene(tmp_path / "in" / "scene.tif", data, nodata=nodata)
    out = tmp_path / "out"
    assert run([source, "-o", out, "--models-dir", models_dir, *FAST, *bands]) == 0
    valid = upscaled(~np.all(data == nodata, axis=0))
    with rasterio.open(out / "scene_x2.tif") as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 0
        out_data = ds.read()
        hidden = [int(((ds.read_masks(b) == 0) & valid).sum()) for b in (1, 2, 3)]
        assert np.array_equal(ds.dataset_mask() > 0, valid)
    assert hidden == [0, 0, 0]  # before: 1,209 / 773 / 384 valid pixels per band were masked (issue #34)
    assert int((out_data[:, valid] == 0).sum()) == 0 and int((out_data[:, ~valid] != 0).sum()) == 0


# 5. GCP-only and RPC-only georeferencing: kept, scaled to the output grid


@pytest.mark.parametrize("cog", [False, True])
def test_gcps_are_kept_and_scaled_to_the_output_grid(models_dir, tmp_path, cog):
    if cog:
        pytest.importorskip("rio_cogeo", reason="rio-cogeo is not installed")
    data = np.clip(textured((3, 20, 24), (120, 130, 110), 20), 0, 255).astype(np.uint8)
    source = write_scene(tmp_path / "in" / "gcp.tif", data, georef="gcps")
    out = tmp_path / "out"
    assert run([source, "-o", out, "--models-dir", models_dir, *FAST, *(["--cog"] if cog else [])]) == 0
    with rasterio.open(source) as src, rasterio.open(out / "gcp_x2.tif") as dst:
        (src_gcps, src_crs), (dst_gcps, dst_crs) = src.gcps, dst.gcps
        assert dst_crs == src_crs and len(dst_gcps) == len(src_gcps) == 5
        for a, b in zip(src_gcps, dst_gcps, strict=True):
            assert (b.row, b.col, b.x, b.y) == pytest.approx((a.row * 2, a.col * 2, a.x, a.y))
        assert dst.crs is None and dst.transform.is_identity  # no geotransform beside the GCPs
        assert (dst.width, dst.height) == (48, 40)
        # the same ground point at output pixel (2r, 2c) as at input pixel (r, c)
        src_xy = rasterio.transform.GCPTransformer(src_gcps).xy(7.0, 9.0, offset="ul")
        dst_xy = rasterio.transform.GCPTransformer(dst_gcps).xy(14.0, 18.0, offset="ul")
        assert dst_xy == pytest.approx(src_xy, abs=1e-9)
    record = json.loads((out / "gcp_x2.json").read_text())
    assert record["input"]["georeference"]["kind"] == "GCPs"
    assert record["input"]["georeference"]["gcps"]["count"] == 5


@pytest.mark.parametrize("cog", [False, True])
def test_rpcs_are_kept_and_adjusted_for_the_scale(models_dir, tmp_path, cog):
    if cog:
        pytest.importorskip("rio_cogeo", reason="rio-cogeo is not installed")
    data = np.clip(textured((3, 20, 24), (120, 130, 110), 20), 0, 255).astype(np.uint8)
    source = write_scene(tmp_path / "in" / "rpc.tif", data, georef="rpcs")
    out = tmp_path / "out"
    assert run([source, "-o", out, "--models-dir", models_dir, *FAST, *(["--cog"] if cog else [])]) == 0
    assert not (out / "rpc_x2.png").exists()  # before: a plain PNG
    with rasterio.open(source) as src, rasterio.open(out / "rpc_x2.tif") as dst:
        assert dst.rpcs is not None and (dst.width, dst.height) == (48, 40)
        assert dst.rpcs.line_off == pytest.approx(src.rpcs.line_off * 2 + 0.5)
        assert dst.rpcs.samp_scale == pytest.approx(src.rpcs.samp_scale * 2)
        lon, lat = 10.003, 49.996
        with rasterio.transform.RPCTransformer(src.rpcs) as a, rasterio.transform.RPCTransformer(dst.rpcs) as b:
            row_in, col_in = a.rowcol(lon, lat, op=lambda v: v)
            row_out, col_out = b.rowcol(lon, lat, op=lambda v: v)
        assert (row_out, col_out) == pytest.approx((row_in * 2, col_in * 2), abs=1e-6)  # pixel corners × scale
    assert json.loads((out / "rpc_x2.json").read_text())["input"]["georeference"]["kind"] == "RPCs"


# 6. masks: an external .msk, an internal mask, an alpha band left out by --bands


@pytest.mark.parametrize("kind", [".msk file", "internal mask", "alpha band 4", "internal mask, windows"])
def test_masks_are_read_carried_and_written_back(models_dir, tmp_path, capsys, kind):
    data = np.clip(textured((3, 32, 36), (120, 140, 100), 25), 1, 255).astype(np.uint8)
    valid = np.ones((32, 36), bool)
    valid[:, :7] = False   # a collar
    valid[20:26, 15:22] = False  # a cloud
    args: list = []
    if kind == "alpha band 4":
        rgba = np.concatenate([data, np.where(valid, 255, 0).astype(np.uint8)[None]])
        source = write_scene(tmp_path / "in" / "scene.tif", rgba, alpha=True)
        args = ["--bands", "1,2,3"]
    else:
        source = write_scene(tmp_path / "in" / "scene.tif", data, mask=valid, mask_file=kind == ".msk file")
        assert Path(f"{source}.msk").is_file() == (kind == ".msk file")
    if kind.endswith("windows"):
        args = ["--window-size", "16", "--window-overlap", "4"]
    out = tmp_path / "out"
    assert run([source, "-o", out, "--models-dir", models_dir, *FAST, *args]) == 0
    err = capsys.readouterr().err
    if not kind.endswith("windows"):
        assert f"scene.tif: {int((~valid).sum())} nodata pixel(s) (the file's {kind}) filled from their valid " \
               f"neighbours for the model, masked in the output's mask band" in err
    with rasterio.open(out / "scene_x2.tif") as ds:
        assert ds.count == 3 and ds.mask_flag_enums[0] == [MaskFlags.per_dataset]
        assert np.array_equal(ds.dataset_mask() > 0, upscaled(valid))  # before: the masked area was valid data
    if not kind.endswith("windows"):
        mask = json.loads((out / "scene_x2.json").read_text())["input"]["georeference"]["mask"]
        assert mask == kind


def test_a_scene_without_masks_gets_no_mask_band(models_dir, tmp_path):
    data = np.clip(textured((3, 16, 18), (120, 140, 100), 25), 0, 255).astype(np.uint8)
    source = write_scene(tmp_path / "in" / "clear.tif", data)
    assert run([source, "-o", tmp_path / "out", "--models-dir", models_dir, *FAST]) == 0
    with rasterio.open(tmp_path / "out" / "clear_x2.tif") as ds:
        assert all(flags == [MaskFlags.all_valid] for flags in ds.mask_flag_enums) and ds.nodata is None


# 7. nodata collars: invalid pixels reach the model filled from their valid neighbours, so no dark rim forms


def rim_and_interior(image: torch.Tensor, collar: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB (0-255) of the valid column next to a left collar, and of the interior, in a ×2 bicubic
    upsampling: the condition image stage 1 sees."""
    from rsvl_core.kit.image import bicubic_resize

    up = bicubic_resize(image, (image.shape[-2] * 2, image.shape[-1] * 2))[0].numpy() * 255
    return up[:, :, 2 * collar].mean(axis=1), up[:, :, 2 * collar + 8:].mean(axis=(1, 2))


@pytest.mark.parametrize("windowed", [False, True])
def test_a_nodata_collar_is_filled_from_valid_neighbours_and_leaves_no_rim(tmp_path, windowed):
    from rsvl_core.kit.tiling import Tile
    from rsvl_core.scenes.geo import read_raster
    from rsvl_core.scenes.sources import open_scene

    data = np.clip(textured((3, 24, 40), (156, 162, 134), 2), 1, 255).astype(np.uint8)
    data[:, :, :8] = 0
    source = write_scene(tmp_path / "collar.tif", data, nodata=0)
    scene = open_scene(source, windowed=windowed)
    image = scene.read(Tile(0, 24, 0, 40)) if windowed else scene.whole()
    filled = (image[0, :, :, :8] * 255).numpy()  # the collar carries its neighbours' colour, not 0
    assert np.abs(filled.mean(axis=(1, 2)) - [156, 162, 134]).max() < 3 and float(filled.min()) > 125
    rim, interior = rim_and_interior(image, 8)
    assert np.abs(rim - interior).max() < 2.0
    zero_rim, _ = rim_and_interior(read_raster(source).image, 8)  # what the model saw before: filled with 0
    assert (interior - zero_rim).min() > 10


def test_a_collar_run_keeps_every_valid_pixel_valid(models_dir, tmp_path):
    data = np.clip(textured((3, 24, 32), (156, 162, 134), 3), 1, 255).astype(np.uint8)
    data[:, :, :6] = 0
    data[:, 18:, :] = 0
    source = write_scene(tmp_path / "in" / "collar.tif", data, nodata=0)
    assert run([source, "-o", tmp_path / "out", "--models-dir", models_dir, *FAST]) == 0
    valid = upscaled(~np.all(data == 0, axis=0))
    with rasterio.open(tmp_path / "out" / "collar_x2.tif") as ds:
        out = ds.read()
        assert np.array_equal(ds.dataset_mask() > 0, valid)
    assert int(np.any(out[:, valid] == 0, axis=0).sum()) == 0  # before: 62 valid pixels got a 0 band


# 9. a full disk while writing a GeoTIFF, a COG or a layer: exit 2, "stopped with N output(s) complete", nothing
#    partial, and a rerun finishes the rest


def three_scenes(folder: Path, size: tuple[int, int] = (12, 14)) -> Path:
    for index, name in enumerate("abc"):
        data = np.clip(textured((3, *size), (120, 140, 100), 30, seed=index), 0, 255).astype(np.uint8)
        write_scene(folder / f"{name}.tif", data)
    return folder


def complete(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*_x2.tif") if p.with_suffix(".json").is_file())


@pytest.mark.parametrize("at", ["geotiff", "cog", "layer", "windows"])
def test_full_disk_while_writing_a_geotiff_stops_the_run(models_dir, tmp_path, capsys, monkeypatch, at):
    if at == "cog":
        pytest.importorskip("rio_cogeo", reason="rio-cogeo is not installed")
    import rasterio.io

    inputs = three_scenes(tmp_path / "in", (20, 20) if at == "windows" else (12, 14))
    out = tmp_path / "out"
    extra = {"geotiff": [], "cog": ["--cog"], "layer": ["--samples", "2"],
             "windows": ["--window-size", "16", "--window-overlap", "4"]}[at]
    args = [inputs, "-o", out, "--models-dir", models_dir, *FAST, *extra]
    real_write, real_usage, real_cog = rasterio.io.DatasetWriter.write, shutil.disk_usage, None
    failing = ".b_x2_uncertainty." if at == "layer" else ".b_x2."

    def write(self, *a, **k):  # GDAL's answer to a full disk: a failed write (some bytes are in the temp file)
        if Path(self.name).name.startswith(failing):
            raise rasterio.errors.RasterioIOError("Write failed. See previous exception for details.")
        return real_write(self, *a, **k)

    def disk_usage(path):  # and the file system has no space left
        usage = real_usage(path)
        return usage._replace(free=0) if Path(path).resolve() == out.resolve() else usage

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", write)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    if at == "cog":  # the plain intermediate is written; the COG itself fails
        import rio_cogeo.cogeo

        real_cog = rio_cogeo.cogeo.cog_translate

        def cog_translate(src, dst, *a, **k):
            if Path(dst).name.startswith(".b_x2."):
                Path(dst).write_bytes(b"II*\x00partial")
                raise rasterio.errors.RasterioIOError("Write failed. See previous exception for details.")
            return real_cog(src, dst, *a, **k)

        failing = "never"
        monkeypatch.setattr(rio_cogeo.cogeo, "cog_translate", cog_translate)
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "b_x2" in err and "No space left on device" in err and "stopped with 1 output(s) complete" in err
    assert "Traceback" not in err and "Write failed" not in err.split("GDAL:")[0]
    assert complete(out) == ["a_x2.tif"] and leftovers(out) == []
    assert sorted(p.name for p in out.glob("b_x2*")) == []  # no image, layer or record of b
    monkeypatch.undo()
    assert run(args) == 0
    assert complete(out) == ["a_x2.tif", "b_x2.tif", "c_x2.tif"] and leftovers(out) == []


def test_a_write_error_that_is_not_a_full_disk_fails_one_input(models_dir, tmp_path, capsys, monkeypatch):
    import rasterio.io

    inputs = three_scenes(tmp_path / "in")
    out = tmp_path / "out"
    real_write = rasterio.io.DatasetWriter.write

    def write(self, *a, **k):
        if Path(self.name).name.startswith(".b_x2."):
            raise rasterio.errors.RasterioIOError("Write failed. See previous exception for details.")
        return real_write(self, *a, **k)

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", write)
    assert run([inputs, "-o", out, "--models-dir", models_dir, *FAST]) == 1  # plenty of space: one input fails
    err = capsys.readouterr().err
    assert "b_x2.tif: write failed (GDAL: Write failed" in err and "stopped" not in err
    assert complete(out) == ["a_x2.tif", "c_x2.tif"] and leftovers(out) == []


def _can_mount_tmpfs(folder: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("windowed", [False, True])
def test_a_real_full_file_system_stops_a_geotiff_run(models_dir, tmp_path, capsys, windowed):
    """A 256 KiB tmpfs: a's output fits, b's 400x400 incompressible output does not. GDAL reports the full disk
    as failed writes, when writing row strips only in its log while the dataset closes "successfully"."""
    out = tmp_path / "small"
    if not _can_mount_tmpfs(out):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        inputs = tmp_path / "in"
        write_scene(inputs / "a.tif", np.full((3, 8, 8), 90, np.uint8))
        noise = np.random.default_rng(0).integers(0, 255, (3, 200, 200), dtype=np.uint8)
        write_scene(inputs / "b.tif", noise)
        windows = ["--window-size", "64", "--window-overlap", "8"] if windowed else []
        code = run([inputs, "-o", out, "--models-dir", models_dir, *FAST, *windows])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "b_x2.tif: No space left on device" in err and "stopped with 1 output(s) complete" in err
        assert "Traceback" not in err
        assert complete(out) == ["a_x2.tif"] and leftovers(out) == [] and not (out / "b_x2.tif").exists()
    finally:
        subprocess.run(["umount", str(out)], check=False)


def test_write_errors_map_to_enospc_only_on_a_full_file_system(tmp_path, monkeypatch):
    from rsvl_core.scenes.geo import write_error

    assert write_error(tmp_path / "x.tif", ["Write error"]).errno == errno.EIO
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    error = write_error(tmp_path / "x.tif", ["TIFFAppendToStrip:Write error at scanline 256"])
    assert error.errno == errno.ENOSPC and error.filename == str(tmp_path / "x.tif")
    assert error.strerror == "No space left on device (GDAL: TIFFAppendToStrip:Write error at scanline 256)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_twelve_bit_data_in_a_sixteen_bit_png_is_scaled_by_its_own_range(tmp_path):
    """Finding 13: 12-bit sensor data in a 16-bit PNG came out near-black (scaled by 1/65535), with only a note."""
    import numpy as np
    from PIL import Image

    from rsvl_core.kit.image import read_image

    values = np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "twelve.png"
    Image.fromarray(values).save(path)
    image, notes = read_image(path)
    assert abs(float(image.max()) - 4000 / 4095) < 1e-4 and abs(float(image.mean()) - 2000 / 4095) < 1e-3
    assert any("holding 12-bit data (largest value 4000) scaled by 1/4095" in n for n in notes), notes
    full = tmp_path / "sixteen.png"
    Image.fromarray((values.astype(np.uint32) * 16).astype(np.uint16)).save(full)  # uses 16 bits: scaled as before
    image, notes = read_image(full)
    assert abs(float(image.max()) - 64000 / 65535) < 1e-4
    assert any("16-bit grayscale scaled by 1/65535" in n for n in notes), notes
