"""Analysts' real files and command lines (issue #23): one test per case, on small files made here.

Each test asserts the output's pixels or georeferencing, or the one-line message, and that nothing partial is
left behind. Rasters are written through rasterio/GDAL; a driver this GDAL lacks skips with the reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from rsvl_testing import tiny_sr3_config

from rsvl_core.cli import main
from rsvl_core.stage1 import SR3UNet, save_sr3

rasterio = pytest.importorskip("rasterio", reason='rasterio is not installed (pip install "rsvl[geo]")')
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--sampler", "ddim", "--steps", "2", "-q", "--stage1-only", "--scale", "2"]
UTM = CRS.from_epsg(32633)
TRANSFORM = from_origin(500000.0, 4650000.0, 10.0, 10.0)  # Sentinel-2's 10 m grid


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    config = tiny_sr3_config(inner_channel=32, norm_groups=32, attention_levels=())
    save_sr3(SR3UNet(config), folder / "sr3" / "I9_E9_gen.pth")
    return folder


@pytest.fixture(scope="module")
def nearest_model(tmp_path_factory) -> Path:
    """A 2x Real-ESRGAN Compact whose last convolution is zero: its output is exactly the nearest-neighbour
    upscale of its input, so a test can check output pixels (colours, values) through the whole CLI."""
    from rsvl_testing import tiny_compact
    from safetensors.torch import save_file

    state = tiny_compact(scale=2)
    state["body.6.weight"].zero_()
    state["body.6.bias"].zero_()
    path = tmp_path_factory.mktemp("nearest") / "2x_nearest_compact.safetensors"
    save_file(state, str(path))
    return path


def has_driver(name: str) -> bool:
    with rasterio.Env() as env:
        return name in env.drivers()


def write_raster(path: Path, data: np.ndarray, driver: str = "GTiff", georeferenced: bool = True, **extra) -> Path:
    """(bands, H, W) -> a raster file through GDAL."""
    profile = {"driver": driver, "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": str(data.dtype), **extra}
    if georeferenced:
        profile.update(crs=UTM, transform=TRANSFORM)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def leftovers(folder: Path) -> list[str]:
    """Temp or claim files a run left behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix in (".tmp", ".claim"))


def upscale(models_dir: Path, *args: str) -> int:
    return main(["upscale", *args, "--models-dir", str(models_dir), *FAST])


def upscale_nearest(model: Path, *args: str) -> int:
    """`rsvl upscale` with the nearest-neighbour model: output pixels = input pixels, each a 2x2 block."""
    return main(["upscale", *args, "--stage1-model", str(model), "-q", "--stage1-only", "--scale", "2"])


# -- 4. palette TIFFs -----------------------------------------------------------------------------------------

PALETTE = {0: (0, 0, 0, 255), 1: (220, 20, 60, 255), 2: (34, 139, 34, 255), 3: (30, 144, 255, 255)}


def palette_tiff(path: Path, georeferenced: bool) -> Path:
    index = (np.arange(32 * 32).reshape(1, 32, 32) // 256).astype(np.uint8)  # four horizontal stripes 0..3
    profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 1, "dtype": "uint8", "photometric": "palette"}
    if georeferenced:
        profile.update(crs=UTM, transform=TRANSFORM)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(index)
        ds.write_colormap(1, PALETTE)
    return path


@pytest.mark.parametrize("georeferenced", [True, False])
def test_palette_tiff_is_expanded_to_its_colours(nearest_model, tmp_path, georeferenced):
    source = palette_tiff(tmp_path / "landcover.tif", georeferenced)
    out = tmp_path / "out"
    assert upscale_nearest(nearest_model, str(source), "-o", str(out)) == 0
    record = json.loads((out / "landcover_x2.json").read_text())
    assert any(re.search(r"palette of \d+ colours: expanded to RGB", note) for note in record["input"]["notes"])
    if georeferenced:
        with rasterio.open(out / "landcover_x2.tif") as ds:
            assert ds.count == 3 and ds.crs == UTM and ds.res == pytest.approx((5.0, 5.0))
            result = ds.read()
    else:
        from PIL import Image

        result = np.asarray(Image.open(out / "landcover_x2.png")).transpose(2, 0, 1)
    expected = np.array([colour[:3] for colour in PALETTE.values()], dtype=np.uint8)
    index = np.repeat(np.arange(4), 16)  # output rows: four stripes of 16
    assert result.shape == (3, 64, 64)
    assert np.array_equal(result, np.broadcast_to(expected[index].T[:, :, None], (3, 64, 64)))
    assert leftovers(out) == []


def test_palette_is_read_the_same_whole_and_by_windows(tmp_path):
    from rsvl_core.scenes.geo import BandPlan, read_raster, read_window, scene_stretch

    source = palette_tiff(tmp_path / "map.tif", True)
    whole = read_raster(source, BandPlan())
    stretch, _ = scene_stretch(source, BandPlan())
    window, _ = read_window(source, (0, 0, 32, 32), stretch)
    assert whole.stretch.method == "palette" and stretch == whole.stretch
    assert np.array_equal(whole.image.numpy(), window.numpy())
    assert tuple(np.round(whole.image[0, :, 20, 3].numpy() * 255)) == (34, 139, 34)  # index 2's green


# -- 5. JPEG 2000, VRT and other rasters GDAL reads ------------------------------------------------------------

def rgb_scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (3, 8, 8), dtype=np.uint8)
    return np.kron(base, np.ones((1, 4, 4), dtype=np.uint8))  # 32x32 blocks: structure the model keeps


@pytest.mark.skipif(not has_driver("JP2OpenJPEG"), reason="this GDAL has no JP2OpenJPEG driver")
def test_jpeg2000_keeps_its_georeferencing_and_gives_a_geotiff(models_dir, tmp_path):
    source = write_raster(tmp_path / "T33TUL_B04.jp2", rgb_scene(), driver="JP2OpenJPEG", QUALITY=100,
                          REVERSIBLE="YES")
    out = tmp_path / "out"
    assert upscale(models_dir, str(source), "-o", str(out)) == 0
    assert not (out / "T33TUL_B04_x2.png").exists()
    with rasterio.open(source) as src, rasterio.open(out / "T33TUL_B04_x2.tif") as dst:
        assert dst.driver == "GTiff" and dst.crs == src.crs
        assert tuple(dst.bounds) == pytest.approx(tuple(src.bounds))
        assert dst.res == pytest.approx((5.0, 5.0)) and (dst.width, dst.height) == (64, 64)
    record = json.loads((out / "T33TUL_B04_x2.json").read_text())
    assert record["input"]["georeference"]["crs"] == "EPSG:32633"


def test_a_vrt_is_read_through_gdal_with_its_georeferencing(models_dir, tmp_path):
    from rasterio.shutil import copy as gdal_copy

    tif = write_raster(tmp_path / "tile.tif", rgb_scene(1))
    folder = tmp_path / "scenes"
    folder.mkdir()
    gdal_copy(tif, folder / "mosaic.vrt", driver="VRT")  # names ../tile.tif
    out = tmp_path / "out"
    assert upscale(models_dir, str(folder), "-o", str(out)) == 0  # found in a folder, not refused
    with rasterio.open(out / "mosaic_x2.tif") as dst:
        assert dst.crs == UTM and dst.res == pytest.approx((5.0, 5.0)) and (dst.width, dst.height) == (64, 64)


def test_a_jpeg2000_without_georeferencing_gives_a_plain_image(models_dir, tmp_path):
    if not has_driver("JP2OpenJPEG"):
        pytest.skip("this GDAL has no JP2OpenJPEG driver")
    source = write_raster(tmp_path / "scan.jp2", rgb_scene(2), driver="JP2OpenJPEG", georeferenced=False,
                          QUALITY=100, REVERSIBLE="YES")
    out = tmp_path / "out"
    assert upscale(models_dir, str(source), "-o", str(out)) == 0
    assert (out / "scan_x2.png").is_file() and not (out / "scan_x2.tif").exists()


# -- 2. `rsvl weights check` says "ok" only to what loads -------------------------------------------------------

@pytest.fixture(scope="module")
def demo_models(tmp_path_factory) -> Path:
    from rsvl_core.demo import write_demo_models

    folder = tmp_path_factory.mktemp("demo_models")
    write_demo_models(folder)
    return folder


def damaged_copy(demo_models: Path, target: Path, item: str, damage) -> Path:
    """The demo models with one safetensors file rewritten by `damage(state) -> state`."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(demo_models, target)
    path = next((target / item).glob("*.safetensors"))
    save_file(damage(load_file(str(path))), str(path))
    return target


def test_weights_check_refuses_integer_weights_and_upscale_says_it_in_one_line(demo_models, tmp_path, capsys):
    import torch

    models = damaged_copy(demo_models, tmp_path / "models", "supir",
                          lambda state: {k: (v * 100).to(torch.int32) for k, v in state.items()})
    assert main(["weights", "check", "--models-dir", str(models)]) == 1
    out = capsys.readouterr().out
    supir_line = next(line for line in out.splitlines() if line.startswith("supir"))
    assert "PROBLEM" in supir_line and re.search(r"^sdxl +ok", out, re.M)
    assert "will not load: SDXL UNet + SUPIR connectors: 118 tensors stored as int32" in out
    image = tmp_path / "small.png"
    from PIL import Image

    Image.fromarray(rgb_scene().transpose(1, 2, 0)).save(image)
    code = main(["upscale", str(image), "-o", str(tmp_path / "out"), "--models-dir", str(models), "--scale", "2",
                 "--sampler", "ddim", "--steps", "2", "--refine-steps", "2", "--caption", "a field", "-q"])
    err = [line for line in capsys.readouterr().err.splitlines() if "rsvl_demo_supir" in line]
    assert code != 0 and len(err) == 1 and "stored as int32" in err[0], err
    assert not (tmp_path / "out" / "small_x2.png").exists()


def test_weights_check_refuses_a_wrong_shape_in_the_loaders_words(demo_models, tmp_path, capsys):
    def widen(state):
        key = next(k for k in sorted(state) if k.endswith("time_embed.0.weight") and "control" in k)
        state[key] = state[key].new_zeros((state[key].shape[0] + 1, *state[key].shape[1:]))
        return state

    models = damaged_copy(demo_models, tmp_path / "models", "supir", widen)
    assert main(["weights", "check", "--models-dir", str(models)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"supir +PROBLEM", out) and re.search(r"^sdxl +ok", out, re.M)
    assert "will not load: GLVControl: 1 tensor with the wrong shape" in out and "is [129, 32]" in out, out


# -- 8. degenerate windows ------------------------------------------------------------------------------------

def test_windows_below_the_minimum_are_refused_in_one_line(models_dir, tmp_path, capsys):
    source = write_raster(tmp_path / "scene.tif", rgb_scene())
    out = tmp_path / "out"
    assert upscale(models_dir, str(source), "-o", str(out), "--window-size", "1", "--window-overlap", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: window size 1: windows must be at least 16 input pixels (0 = the whole scene); smaller "
                   "ones give the models too little context and multiply the per-window work (a 32x32 scene in "
                   "1-pixel windows would be 1024 pipeline runs)"]
    assert not out.exists() or list(out.iterdir()) == []


def test_a_windowed_record_stays_compact(models_dir, tmp_path):
    source = write_raster(tmp_path / "scene.tif", rgb_scene())
    out = tmp_path / "out"
    assert upscale(models_dir, str(source), "-o", str(out), "--window-size", "16", "--window-overlap", "4") == 0
    record = json.loads((out / "scene_x2.json").read_text())
    assert record["windows"]["count"] == 9 and "captions" not in record["windows"]  # stage 1 only: no captions
    assert len((out / "scene_x2.json").read_text()) < 6000


# -- 9. signals -----------------------------------------------------------------------------------------------

def run_cli(args: list[str]):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "rsvl_core", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished_outputs(folder: Path) -> int:
    return len(list(folder.glob("*_x2.json"))) if folder.is_dir() else 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_unwinds_the_run_says_what_finished_and_leaves_no_claim(models_dir, tmp_path, sig):
    import signal
    import time

    from PIL import Image

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(6):
        Image.fromarray(rgb_scene(i).transpose(1, 2, 0)).save(inputs / f"{i}.png")
    out = tmp_path / "out"
    run = run_cli(["upscale", str(inputs), "-o", str(out), "--models-dir", str(models_dir), "--sampler", "ddim",
                   "--steps", "20", "-q", "--stage1-only", "--scale", "2"])
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and finished_outputs(out) < 2 and run.poll() is None:
            time.sleep(0.05)
        run.send_signal(getattr(signal, sig))
        err = run.communicate(timeout=120)[1]
    finally:
        run.kill()
    finished = finished_outputs(out)
    assert run.returncode == (143 if sig == "SIGTERM" else 130), err
    what = "terminated (SIGTERM)" if sig == "SIGTERM" else "interrupted (Ctrl-C)"
    last = err.strip().splitlines()[-1]
    assert 2 <= finished < 6
    assert last == (f"{what}: {finished} of 6 output(s) finished; no partial output was written; rerun the same "
                    f"command for the other {6 - finished} (finished ones are skipped)"), err
    assert leftovers(out) == [] and len(list(out.glob("*.png"))) == finished


def test_an_actor_ends_itself_when_its_driver_is_gone(tmp_path):
    """The batch actor's watch: a process that watches a 'driver' exits soon after that driver is killed."""
    import signal
    import subprocess
    import sys
    import time

    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    actor = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rsvl_core.kit.atomic import this_host; "
        "from rsvl_core.batch.worker import watch_driver; "
        f"watch_driver(this_host(), {driver.pid}, interval=0.2); time.sleep(600); sys.exit(3)")],
        cwd=ROOT)
    try:
        time.sleep(0.5)
        assert actor.poll() is None  # watching, alive while its driver is
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert actor.wait(timeout=120) == 0  # ended itself (not the sleep's exit 3)
    finally:
        driver.kill()
        actor.kill()


# -- 10. smaller: logs, folders of folders, links, stray library lines -----------------------------------------

def test_progress_in_a_log_is_plain_lines(models_dir, tmp_path):
    from PIL import Image

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        Image.fromarray(rgb_scene(i).transpose(1, 2, 0)).save(inputs / f"{i}.png")
    run = run_cli(["upscale", str(inputs), "-o", str(tmp_path / "out"), "--models-dir", str(models_dir),
                   "--sampler", "ddim", "--steps", "4", "--stage1-only", "--scale", "2"])  # stderr: a pipe
    err = run.communicate(timeout=600)[1]
    assert run.returncode == 0, err
    assert "\r" not in err and "\x1b[" not in err
    assert re.search(r"^images: 50% \(1/2 img, [\d.]+ s\)$", err, re.M), err
    assert re.search(r"^1\.png stage1: 100% \(4/4 step, [\d.]+ s\)$", err, re.M), err


def test_a_folder_of_folders_says_recursive_and_recursive_mirrors_subfolders(nearest_model, tmp_path, capsys):
    from PIL import Image

    for sub in ("2024/north", "2024/south"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        Image.fromarray(rgb_scene().transpose(1, 2, 0)).save(tmp_path / "in" / sub / "tile.png")  # same name
    out = tmp_path / "out"
    assert upscale_nearest(nearest_model, str(tmp_path / "in"), "-o", str(out)) == 2
    assert capsys.readouterr().err.strip().endswith(
        "folder has no images (.png, .jpg, .jpeg, .tif, .tiff, .bmp, .webp, .jp2, .j2k, .vrt, .img); its 1 "
        "subfolder(s) have images: add --recursive to process them")
    assert upscale_nearest(nearest_model, str(tmp_path / "in"), "-o", str(out), "--recursive") == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["2024/north/tile_x2.png", "2024/south/tile_x2.png"]
    assert leftovers(out) == []


@pytest.mark.parametrize("link", ["loop", "dangling"])
def test_a_broken_link_is_named_for_what_it_is(tmp_path, capsys, link):
    path = tmp_path / "scene.png"
    path.symlink_to(path if link == "loop" else tmp_path / "gone.png")
    assert main(["upscale", str(path), "-o", str(tmp_path / "out"), "--stage1-only"]) == 2
    err = capsys.readouterr().err.strip()
    expected = "symbolic link loop (the link leads back to itself)" if link == "loop" else \
        f"symbolic link to {tmp_path / 'gone.png'}, which does not exist"
    assert err.splitlines()[-1] == f"error: {path}: {expected}"  # (after the CPU run's one-line advice, if any)
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1


def test_an_8_band_tiff_gives_our_error_alone(models_dir, tmp_path):
    data = np.random.default_rng(0).integers(0, 4000, (8, 32, 32)).astype("uint16")
    source = write_raster(tmp_path / "worldview.tif", data)
    run = run_cli(["upscale", str(source), "-o", str(tmp_path / "out"), "--models-dir", str(models_dir), *FAST])
    err = run.communicate(timeout=600)[1]
    assert run.returncode == 1
    assert "More samples per pixel" not in err
    assert "error: " + str(source) + ": raster has 8 bands; choose which become R,G,B with --bands" in err


# -- 6. radiometry, read by windows as read whole ---------------------------------------------------------------

@pytest.mark.parametrize("windowed", [False, True])
def test_12_bit_and_all_nodata_warnings_whether_read_whole_or_by_windows(tmp_path, windowed):
    from rsvl_core.scenes.sources import open_scene

    dark = write_raster(tmp_path / "dark.tif", np.tile(np.linspace(0, 4000, 32, dtype=np.uint16), (3, 32, 1)))
    scene = open_scene(dark, stretch="none", windowed=windowed)
    assert any(n.startswith("warning: the largest value is 4000") and "12-bit data?" in n for n in scene.notes)
    empty = write_raster(tmp_path / "empty.tif", np.zeros((3, 32, 32), np.uint16), nodata=0)
    scene = open_scene(empty, windowed=windowed)
    assert "warning: every pixel is nodata: the output is nodata too" in scene.notes


@pytest.mark.parametrize("argv", [["upscale", "a.png", "-o", "out", "--scale", "3"],
                                  ["batch", "a", "-o", "out", "--scale", "3"], ["caption", "a", "--greedyy"],
                                  ["eval", "hr", "--scale", "3"], ["demo", "--bogus"]])
def test_a_usage_error_answers_before_the_model_libraries_load(argv):
    import subprocess
    import sys

    script = ("import sys\nfrom rsvl_core.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as stop:\n"
              "    print(stop.code, sorted(m for m in ('diffusers', 'transformers', 'spandrel', 'ray', 'peft', "
              "'rasterio') if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", script, *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.stdout.strip() == "2 []", run.stdout + run.stderr  # argparse's usage error, no model library
    assert "error:" in run.stderr.splitlines()[-1]


def test_upscale_finds_weights_in_a_comfyui_install(nearest_model, tmp_path, monkeypatch, capsys):
    import shutil

    from PIL import Image

    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "rsvl" / "sr3").mkdir(parents=True)
    shutil.copy(nearest_model, comfy / "models" / "rsvl" / "sr3" / nearest_model.name)
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    monkeypatch.delenv("RSVL_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./models here
    Image.fromarray(rgb_scene().transpose(1, 2, 0)).save(tmp_path / "scene.png")
    assert main(["upscale", "scene.png", "-o", "out", "--comfyui-dir", str(comfy), "-q", "--stage1-only",
                 "--scale", "2"]) == 0
    record = json.loads((tmp_path / "out" / "scene_x2.json").read_text())
    assert nearest_model.name in json.dumps(record["models"])


# -- 1. the install -----------------------------------------------------------------------------------------------

def test_install_pins_torch_and_torchvision_as_a_matching_pair():
    from importlib.metadata import PackageNotFoundError, requires, version

    pins = dict(re.findall(r"^(torch|torchvision)==([\w.+]+)$", (ROOT / "constraints-cpu.txt").read_text(), re.M))
    assert set(pins) == {"torch", "torchvision"}
    pair = f"torch=={pins['torch']} torchvision=={pins['torchvision']}"
    assert pair in (ROOT / ".ci" / "install").read_text() and pair in (ROOT / "README.md").read_text()
    requirements = (ROOT / "requirements.txt").read_text()  # ComfyUI-Manager's install: ComfyUI's own torch stays
    assert not re.search(r"^\s*torch(vision)?\b", requirements, re.M)
    try:
        installed = version("torchvision")
    except PackageNotFoundError:
        pytest.skip("torchvision is not installed")
    if installed == pins["torchvision"]:  # the pinned torchvision requires exactly the pinned torch
        assert [r.replace(" ", "") for r in requires("torchvision") if re.match(r"torch\b", r)] == \
            [f"torch(=={pins['torch']})"]
