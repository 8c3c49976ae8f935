"""`rsvl upscale` on a real georeferenced GeoTIFF: the output keeps the place, at input/scale pixel size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rsvl_testing import crop_geotiff, tiny_sr3_config

from rsvl_core.cli import main
from rsvl_core.stage1 import SR3UNet, save_sr3

rasterio = pytest.importorskip("rasterio", reason='rasterio is not installed (pip install "rsvl[geo]")')
OSBS = Path(__file__).parents[1].parent / "shared" / "data" / "OSBS_029.tif"
FAST = ["--sampler", "ddim", "--steps", "2", "-q", "--stage1-only", "--tile-size", "128"]


@pytest.fixture
def models_dir(tmp_path):
    folder = tmp_path / "models"
    # no attention and 32 channels: a 400x400 scene at 2x in a few seconds
    config = tiny_sr3_config(inner_channel=32, norm_groups=32, attention_levels=())
    save_sr3(SR3UNet(config), folder / "sr3" / "I9_E9_gen.pth")
    return folder


def check_geotiff_run(source: Path, out: Path, size: tuple[int, int], windows: int) -> None:
    result = out / f"{source.stem}_x2.tif"
    with rasterio.open(source) as src, rasterio.open(result) as dst:
        assert dst.crs == src.crs
        assert tuple(dst.bounds) == pytest.approx(tuple(src.bounds))
        assert dst.res == pytest.approx((src.res[0] / 2, src.res[1] / 2))
        assert (dst.width, dst.height) == size and dst.count == 3 and dst.nodata == src.nodata
        assert dst.block_shapes[0] == (512, 512) and dst.compression is not None
    record = json.loads((out / f"{source.stem}_x2.json").read_text())
    assert record["input"]["georeference"]["crs"] == "EPSG:32617"
    assert record["input"]["stretch"]["method"] == "none"  # 8-bit: divided by 255, no stretch
    assert record.get("windows", {}).get("count", 1) == windows


@pytest.mark.skipif(not OSBS.is_file(), reason=f"shared sample {OSBS} not found")
@pytest.mark.parametrize("window", [0, 40])
def test_geotiff_crop_in_geotiff_out_same_bounds_finer_pixels(models_dir, tmp_path, window):
    """A 72x56 georeferenced crop of the real scene: same proof as the whole scene, a fraction of the work."""
    source = crop_geotiff(OSBS, tmp_path / "osbs_crop.tif", 72, 56)
    out = tmp_path / "out"
    argv = ["upscale", str(source), "-o", str(out), "--scale", "2", "--models-dir", str(models_dir), *FAST]
    if window:
        argv += ["--window-size", str(window), "--window-overlap", "8"]
    assert main(argv) == 0
    check_geotiff_run(source, out, (144, 112), 4 if window else 1)


@pytest.mark.slow
@pytest.mark.skipif(not OSBS.is_file(), reason=f"shared sample {OSBS} not found")
def test_geotiff_whole_scene_in_windows_geotiff_out(models_dir, tmp_path):
    """The whole 400x400 scene, windowed, as a user runs it."""
    out = tmp_path / "out"
    argv = ["upscale", str(OSBS), "-o", str(out), "--scale", "2", "--models-dir", str(models_dir), *FAST,
            "--window-size", "160", "--window-overlap", "16"]
    assert main(argv) == 0
    check_geotiff_run(OSBS, out, (800, 800), 9)
