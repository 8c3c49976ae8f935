"""`rsvl upscale --samples N`: one sample is today's output byte for byte, the caption is made once, the layer
sits on the output's grid (GeoTIFF, COG, extra band; a heat-map PNG for plain images), windows stay seamless."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rsvl_testing import SAMPLE_IMAGE, crop_geotiff, tiny_sr3_config

from rsvl_core.cli import main
from rsvl_core.demo import write_demo_models
from rsvl_core.jobs.samples import LEGEND_HEIGHT
from rsvl_core.stage1 import SR3UNet, save_sr3

OSBS = Path(__file__).parents[1].parent / "shared" / "data" / "OSBS_029.tif"
STAGE1 = ["--sampler", "ddim", "--steps", "2", "-q", "--stage1-only", "--tile-size", "128", "--scale", "2"]
FULL = ["--sampler", "ddim", "--steps", "2", "--refine-steps", "2", "--refine-min-size", "0", "-q", "--scale", "2",
        "--caption-max-tokens", "4"]


@pytest.fixture
def sr3_dir(tmp_path):
    folder = tmp_path / "models"
    save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32, attention_levels=())),
             folder / "sr3" / "I9_E9_gen.pth")
    return folder


@pytest.fixture
def small_png(tmp_path):
    path = tmp_path / "in" / "patch.png"
    path.parent.mkdir()
    Image.open(SAMPLE_IMAGE).convert("RGB").crop((10, 20, 34, 36)).save(path)
    return path


@pytest.mark.slow
def test_uncertainty_one_sample_is_byte_identical_and_sample_zero_is_todays_output(tmp_path, small_png):
    models = tmp_path / "models"
    write_demo_models(models)
    base = ["upscale", str(small_png), "--models-dir", str(models), *FULL]
    assert main([*base, "-o", str(tmp_path / "today")]) == 0
    assert main([*base, "-o", str(tmp_path / "one"), "--samples", "1"]) == 0
    assert main([*base, "-o", str(tmp_path / "three"), "--samples", "3"]) == 0   # --combine first (default)
    today = (tmp_path / "today" / "patch_x2.png").read_bytes()
    assert (tmp_path / "one" / "patch_x2.png").read_bytes() == today
    assert (tmp_path / "three" / "patch_x2.png").read_bytes() == today      # sample 0 is the single run
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["patch_x2.json", "patch_x2.png"]
    one = json.loads((tmp_path / "one" / "patch_x2.json").read_text())
    assert "uncertainty" not in one and "uncertainty" not in one["settings"]
    record = json.loads((tmp_path / "three" / "patch_x2.json").read_text())
    u = record["uncertainty"]
    assert u["samples"] == 3 and u["seeds"] == [0, 1, 2] and u["combine"] == "first"
    assert u["caption_from"] == "the first sample's stage-1 image" and record["caption"] == one["caption"]
    assert len(u["seconds_per_sample"]) == 3 and all(t > 0 for t in u["seconds_per_sample"])
    assert 0 < u["mean_std"] <= u["p95_std"] and u["layer"] == "patch_x2_uncertainty.png"
    heat = Image.open(tmp_path / "three" / u["layer"])
    assert heat.size == (48, 32 + LEGEND_HEIGHT) and heat.mode == "RGB"
    # the median of 3 differs from sample 0 (random tiny models disagree a lot)
    assert main([*base, "-o", str(tmp_path / "median"), "--samples", "3", "--combine", "median"]) == 0
    assert (tmp_path / "median" / "patch_x2.png").read_bytes() != today


def test_uncertainty_flags_are_checked_before_work(tmp_path, small_png, sr3_dir, capsys):
    code = main(["upscale", str(small_png), "-o", str(tmp_path / "o"), "--models-dir", str(sr3_dir), *STAGE1,
                 "--guard", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "need --samples N with N >= 2" in err and not (tmp_path / "o").exists()
    code = main(["upscale", str(small_png), "-o", str(tmp_path / "o"), "--models-dir", str(sr3_dir), *STAGE1,
                 "--samples", "0"])
    assert code == 2 and "samples must be an integer in 1..64" in capsys.readouterr().err


rasterio = pytest.importorskip("rasterio", reason='rasterio is not installed (pip install "rsvl[geo]")')
needs_osbs = pytest.mark.skipif(not OSBS.is_file(), reason=f"shared sample {OSBS} not found")


def _grid(path: Path) -> tuple:
    with rasterio.open(path) as ds:
        return ds.crs, ds.transform, ds.nodata, ds.width, ds.height


@needs_osbs
@pytest.mark.parametrize("window", [0, 40])
def test_uncertainty_layer_georeferencing_equals_the_output(sr3_dir, tmp_path, window):
    source = crop_geotiff(OSBS, tmp_path / "osbs_crop.tif", 72, 56)
    out = tmp_path / "out"
    argv = ["upscale", str(source), "-o", str(out), "--models-dir", str(sr3_dir), *STAGE1, "--samples", "2"]
    if window:
        argv += ["--window-size", str(window), "--window-overlap", "8"]
    assert main(argv) == 0
    output, layer = out / "osbs_crop_x2.tif", out / "osbs_crop_x2_uncertainty.tif"
    assert _grid(layer) == _grid(output)
    with rasterio.open(layer) as ds, rasterio.open(output) as dst:
        assert ds.count == 1 and ds.dtypes[0] == "float32"
        spread = ds.read(1)
        assert np.array_equal(ds.dataset_mask() > 0, dst.dataset_mask() > 0)  # nodata where the output has it
    record = json.loads((out / "osbs_crop_x2.json").read_text())["uncertainty"]
    valid = spread[spread != _grid(output)[2]] if _grid(output)[2] is not None else spread.ravel()
    assert record["mean_std"] == pytest.approx(float(valid.mean()), rel=1e-3)
    assert record["p95_std"] == pytest.approx(float(np.percentile(valid, 95)), rel=1e-3)
    assert record["layer_kind"] == "float32 GeoTIFF on the output's grid"


@pytest.mark.slow
@needs_osbs
def test_uncertainty_layer_as_cog_and_as_extra_band(sr3_dir, tmp_path):
    pytest.importorskip("rio_cogeo", reason="rio-cogeo is not installed")
    source = crop_geotiff(OSBS, tmp_path / "osbs_crop.tif", 72, 56)
    base = ["upscale", str(source), "--models-dir", str(sr3_dir), *STAGE1, "--samples", "2"]
    assert main([*base, "-o", str(tmp_path / "cog"), "--cog"]) == 0
    layer = tmp_path / "cog" / "osbs_crop_x2_uncertainty.tif"
    assert _grid(layer) == _grid(tmp_path / "cog" / "osbs_crop_x2.tif")
    with rasterio.open(layer) as ds:
        assert ds.block_shapes[0] == (512, 512)  # rio-cogeo's internal tiles
    assert main([*base, "-o", str(tmp_path / "band"), "--uncertainty-band"]) == 0
    assert main([*base, "-o", str(tmp_path / "plain")]) == 0
    banded = tmp_path / "band" / "osbs_crop_x2.tif"
    assert not (tmp_path / "band" / "osbs_crop_x2_uncertainty.tif").exists()
    with rasterio.open(banded) as ds, rasterio.open(tmp_path / "plain" / "osbs_crop_x2.tif") as plain, \
            rasterio.open(tmp_path / "plain" / "osbs_crop_x2_uncertainty.tif") as layer_ds:
        assert ds.count == 4 and _grid(banded) == _grid(tmp_path / "plain" / "osbs_crop_x2.tif")
        assert np.array_equal(ds.read([1, 2, 3]), plain.read())
        expected = np.clip(np.round(layer_ds.read(1)), 0, 255)
        valid = layer_ds.dataset_mask() > 0
        assert np.abs(ds.read(4)[valid].astype(float) - expected[valid]).max() <= 1
        assert "uncertainty" in (ds.descriptions[3] or "")


@pytest.mark.slow
@needs_osbs
def test_uncertainty_guard_acts_in_windows_and_the_layer_is_blended(sr3_dir, tmp_path):
    source = crop_geotiff(OSBS, tmp_path / "osbs_crop.tif", 96, 40)
    out = tmp_path / "out"
    windowed = ["--window-size", "40", "--window-overlap", "8"]
    # stage 1 alone: the fallback is sample 0's stage-1 image, so the guard shows against the mean of the samples
    base = ["upscale", str(source), "--models-dir", str(sr3_dir), *STAGE1, "--samples", "3", "--combine", "mean",
            *windowed]
    assert main([*base, "-o", str(tmp_path / "probe")]) == 0
    mean = float(json.loads((tmp_path / "probe" / "osbs_crop_x2.json").read_text())["uncertainty"]["mean_std"])
    assert main([*base, "-o", str(out), "--guard", f"{mean:.1f}", "--guard-feather", "4"]) == 0
    record = json.loads((out / "osbs_crop_x2.json").read_text())
    assert record["windows"]["count"] == 3
    assert 0.05 < record["uncertainty"]["guard"]["fraction_replaced"] < 0.95  # the guard really acts
    assert 0.05 < record["uncertainty"]["fraction_above_threshold"] < 0.95
    with rasterio.open(out / "osbs_crop_x2.tif") as ds, rasterio.open(tmp_path / "probe" / "osbs_crop_x2.tif") as p:
        assert not np.array_equal(ds.read(), p.read())


def test_uncertainty_layers_are_not_inputs_of_a_rerun(tmp_path, small_png, sr3_dir, capsys):
    out = tmp_path / "out"
    base = ["--models-dir", str(sr3_dir), *STAGE1, "--samples", "2"]
    assert main(["upscale", str(small_png), "-o", str(out), *base]) == 0
    assert (out / "patch_x2_uncertainty.png").is_file()
    # the output folder named as input: the output and its layer are both earlier rsvl outputs, left out
    assert main(["upscale", str(out), str(small_png), "-o", str(out), *base]) == 0
    assert "2 input(s) are earlier rsvl outputs" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["patch_x2.json", "patch_x2.png", "patch_x2_uncertainty.png"]
