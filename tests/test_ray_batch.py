"""`rsvl batch` on a local Ray (2 CPUs, 2 actors): same outputs as `rsvl upscale`, windows spread over actors,
an actor killed mid-item, the driver killed and the run resumed; and the seamless-window noise it relies on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rsvl_testing import SAMPLE_IMAGE, assert_records_close

from rsvl_core.batch.cluster import LOOPBACK
from rsvl_core.cli import main
from rsvl_core.jobs.inputs import is_complete

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'rsvl[batch]')")
rasterio = pytest.importorskip("rasterio", reason="rasterio is not installed (pip install 'rsvl[geo]')")

REPO = Path(__file__).resolve().parents[1]
RUN = ["--scale", "2", "--sampler", "ddim", "--steps", "3", "--refine-steps", "2", "--refine-min-size", "0",
       "--caption-max-tokens", "6", "--device", "cpu", "-q"]
TIMINGS = {"seconds", "peak_memory_bytes"}  # what may differ between two runs of the same work
# Run records' floats from two processes (Ray actors against one process): the uncertainty layers agree within
# 1e-3 x 255 levels, so their mean and 95th percentile (1-Lipschitz in the largest difference) within that; a share
# of pixels above a threshold may move by the pixels within that distance of it: 0.2 % allowed (measured: equal).
SPREAD = {"mean_std": 1e-3 * 255, "p95_std": 1e-3 * 255, "fraction_above_threshold": 2e-3,
          "fraction_replaced": 2e-3}


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: 2 CPUs, no dashboard, on loopback (tests join it; `--ray auto` reuses it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address=LOOPBACK)
    address = ray.get_runtime_context().gcs_address
    assert address.startswith(LOOPBACK + ":"), address
    yield address
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from rsvl_core.demo import write_demo_models

    folder = tmp_path_factory.mktemp("ray_models")
    write_demo_models(folder)
    return folder


def georeferenced(target: Path, box: tuple[int, int, int, int]) -> Path:
    """A crop of the bundled sample as a georeferenced GeoTIFF (UTM 17N, 0.5 m pixels) with nodata 0 in a corner."""
    from rasterio.transform import from_origin

    data = np.asarray(Image.open(SAMPLE_IMAGE).convert("RGB").crop(box)).transpose(2, 0, 1).copy()
    data = np.maximum(data, 1)
    data[:, :3, :5] = 0  # nodata
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": 3, "dtype": "uint8",
               "crs": "EPSG:32617", "transform": from_origin(402000.0, 3284000.0, 0.5, 0.5), "nodata": 0}
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(data)
    return target


@pytest.fixture
def mixed_inputs(tmp_path):
    """Two PNGs, a GeoTIFF and a file that is not an image."""
    folder = tmp_path / "in"
    folder.mkdir()
    sample = Image.open(SAMPLE_IMAGE).convert("RGB")
    sample.crop((0, 0, 24, 16)).save(folder / "a.png")
    sample.crop((30, 30, 50, 46)).save(folder / "b.png")
    georeferenced(folder / "c.tif", (10, 10, 50, 42))
    (folder / "d_bad.png").write_bytes(b"not a png")
    return folder


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def same_outputs(a: Path, b: Path, names: list[str]) -> None:
    """Images within 1/255 and run records equal apart from timings, their floats within SPREAD's tolerances."""
    for name in names:
        if name.endswith(".tif"):
            with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
                assert (x.crs, x.transform, x.nodata) == (y.crs, y.transform, y.nodata), name
                diff = np.abs(x.read().astype(int) - y.read().astype(int))
        else:
            diff = np.abs(np.asarray(Image.open(a / name)).astype(int) - np.asarray(Image.open(b / name)).astype(int))
        assert diff.max() <= 1, f"{name}: max difference {diff.max()}"
        ra = json.loads((a / name).with_suffix(".json").read_text())
        rb = json.loads((b / name).with_suffix(".json").read_text())
        for record in (ra, rb):
            for key in TIMINGS & set(record):
                record.pop(key)
        assert_records_close(ra, rb, SPREAD, name)


@pytest.mark.slow
def test_ray_batch_equals_upscale_on_mixed_inputs(ray_cluster, models, mixed_inputs, tmp_path, capsys):
    common = [str(mixed_inputs), "--models-dir", str(models), *RUN]
    assert main(["batch", *common, "-o", str(tmp_path / "batch"), "--ray", "auto", "--actors", "2"]) == 1
    err = capsys.readouterr().err
    assert "3 written, 0 skipped" in err and "1 failed" in err and "d_bad.png: not a readable image" in err
    table = [line.split() for line in err.splitlines() if line.split()[:1] in (["0"], ["1"])]
    assert len(table) == 2 and sum(int(row[3]) for row in table) == 3  # 2 actors; 3 items computed
    assert main(["upscale", *common, "-o", str(tmp_path / "upscale")]) == 1
    names = ["a_x2.png", "b_x2.png", "c_x2.tif"]
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == sorted(
        names + [n.rsplit(".", 1)[0] + ".json" for n in names])
    same_outputs(tmp_path / "batch", tmp_path / "upscale", names)


@pytest.mark.slow
def test_ray_windows_of_one_scene_across_actors_equal_single_process(ray_cluster, models, tmp_path):
    """A 56x40 GeoTIFF in 16-pixel windows (one caption from the scene overview), spread over 2 actors, written
    as a COG, with an execution switch the actors must apply: the same image and record as the single-process
    windowed run."""
    scene = georeferenced(tmp_path / "scene.tif", (0, 0, 56, 40))
    common = [str(scene), "--models-dir", str(models), *RUN, "--window-size", "16", "--window-overlap", "4", "--cog",
              "--accelerate", "channels-last"]
    assert main(["batch", *common, "-o", str(tmp_path / "batch"), "--ray", "auto", "--actors", "2"]) == 0
    assert main(["upscale", *common, "-o", str(tmp_path / "upscale")]) == 0
    same_outputs(tmp_path / "batch", tmp_path / "upscale", ["scene_x2.tif"])
    record = json.loads((tmp_path / "batch" / "scene_x2.json").read_text())
    windows = record["windows"]
    assert windows["count"] == 15 and windows["caption_per"] == "scene"  # starts 0,12,24,36,40 x 0,12,24
    assert "captions" not in windows and record["caption"] and record["caption_source"] == "scene overview"
    assert record["accelerate"] == ["channels_last"]  # applied on the actors, not only parsed
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(tmp_path / "batch" / "scene_x2.tif"))
    assert valid and not errors
    assert temporaries(tmp_path / "batch") == []


class KillOnFirstOutput:
    """Batch events that kill actor 0 (busy with the big first image) when the first output is written."""

    def __init__(self) -> None:
        self.killed = False

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def finished(self, source, target, record, seconds) -> None:
        if not self.killed:
            from rsvl_core.batch.driver import actor_name

            ray.kill(ray.get_actor(actor_name(0)), no_restart=False)
            self.killed = True


@pytest.mark.slow
def test_ray_killed_actor_still_completes_every_item(ray_cluster, models, tmp_path):
    from rsvl_core.batch import ClusterOptions, run_batch
    from rsvl_core.cli import build_parser
    from rsvl_core.cli.upscale import config_from_args, job_options_from_args
    from rsvl_core.jobs.inputs import locate_model_files

    folder = tmp_path / "in"
    folder.mkdir()
    sample = Image.open(SAMPLE_IMAGE).convert("RGB")
    sample.crop((0, 0, 64, 64)).save(folder / "a_big.png")  # dispatched first, to actor 0; slow enough to kill
    for n in range(3):
        sample.crop((n * 10, 0, n * 10 + 16, 16)).save(folder / f"b_small{n}.png")
    args = build_parser().parse_args(["batch", str(folder), "-o", str(tmp_path / "out"), "--models-dir", str(models),
                                      *RUN, "--steps", "25", "--ray", "auto", "--stage1-only"])
    config, options = config_from_args(args), job_options_from_args(args)
    files = locate_model_files(config, models)
    events = KillOnFirstOutput()
    summary = run_batch([folder], config, files, options, ClusterOptions(actors=2, device="cpu"), events)
    state = (events.killed, summary.retried, [a.deaths for a in summary.actors], summary.failed, summary.written)
    assert events.killed and summary.retried >= 1 and summary.actors[0].deaths == 1, state
    assert not summary.failed and len(summary.written) == 4, state
    assert all(is_complete(t) for t in summary.written)
    assert temporaries(tmp_path / "out") == []


@pytest.mark.slow
def test_ray_driver_killed_then_rerun_resumes(ray_cluster, models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sample = Image.open(SAMPLE_IMAGE).convert("RGB")
    for n in range(6):
        sample.crop((n * 8, 0, n * 8 + 24, 24)).save(folder / f"img{n}.png")
    out = tmp_path / "out"
    argv = ["batch", str(folder), "-o", str(out), "--models-dir", str(models), *RUN, "--steps", "25", "--stage1-only",
            "--ray", ray_cluster, "--actors", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-m", "rsvl_core", *argv], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    targets = [out / f"img{n}_x2.png" for n in range(6)]
    try:
        deadline = time.monotonic() + 240
        while not any(is_complete(t) for t in targets):
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no output within 240 s"
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait(timeout=60)
    done = {t: t.stat().st_mtime_ns for t in targets if is_complete(t)}
    assert 1 <= len(done) < 6
    deadline = time.monotonic() + 120  # Ray stops the dead driver's actors: their CPUs come back
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.2)
    assert main([*argv[:-4], "--ray", "auto", "--actors", "2"]) == 0
    assert all(is_complete(t) for t in targets)
    assert {t: t.stat().st_mtime_ns for t in done} == done  # finished before the kill: not redone
    assert temporaries(out) == []


def test_ray_noise_field_regions_agree_wherever_they_are_cut():
    """The noise of a cell does not depend on the region (window) asking for it, nor on the block grid."""
    from rsvl_core.kit.noise import NoiseField, coordinate_noise_source

    field = NoiseField(seed=7)
    big = field.region("stage1", 3, 3, -10, 50, 150, 140)
    for y0, x0, h, w in ((0, 60, 64, 64), (-10, 50, 1, 1), (37, 101, 90, 20), (75, 120, 65, 70)):
        part = field.region("stage1", 3, 3, y0, x0, h, w)
        assert torch_equal(part, big[:, y0 + 10:y0 + 10 + h, x0 - 50:x0 - 50 + w])
    assert not torch_equal(field.region("stage1", 4, 3, 0, 60, 8, 8), big[:, 10:18, 10:18])  # another draw
    assert not torch_equal(NoiseField(8).region("stage1", 3, 3, 0, 60, 8, 8), big[:, 10:18, 10:18])  # another seed
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02
    draws = coordinate_noise_source(field, "stage1", (5, 6))
    first, second = draws((2, 3, 4, 4)), draws((2, 3, 4, 4))
    assert torch_equal(first[0], field.region("stage1", 0, 3, 5, 6, 4, 4))
    assert torch_equal(second[1], field.region("stage1", 1, 3, 5, 6, 4, 4))


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


@pytest.mark.slow
def test_ray_window_size_does_not_change_the_image(models, tmp_path):
    """With noise keyed by scene position, 32- and 64-pixel windows of an 88x64 scene give nearly the same image;
    stated tolerance: the mean difference is under 10 % (stage 1) / 25 % (stage 1 + refiner) of the difference
    between two seeds (measured on these random tiny models: 3 % and 15 %)."""
    from dataclasses import replace

    import torch

    from rsvl_core.demo import demo_config
    from rsvl_core.jobs.inputs import locate_model_files, upscale_scene
    from rsvl_core.pipeline import PipelineModels, refine_options_from, stage1_options_from
    from rsvl_core.scenes.sources import open_scene
    from rsvl_core.scenes.windows import WindowOptions

    source = tmp_path / "scene.png"
    Image.open(SAMPLE_IMAGE).convert("RGB").crop((0, 0, 88, 64)).save(source)
    fast = stage1_options_from({"stage1_sampler": "ddim", "stage1_steps": 4})
    cases = {"stage1": (replace(demo_config(), refine=None, stage1=fast), 0.10),
             "full": (replace(demo_config(), stage1=fast, caption_text="a road",
                              refine=refine_options_from({"refine_steps": 3, "min_size": 0})), 0.25)}
    for name, (config, tolerance) in cases.items():
        loaded = PipelineModels.from_files(locate_model_files(config, models), torch.device("cpu"))
        out = {}
        for size, seed in ((32, 0), (64, 0), (32, 1)):
            target = tmp_path / f"{name}_{size}_{seed}.png"
            upscale_scene(open_scene(source), replace(config, seed=seed), loaded, WindowOptions(size, 4), None, target)
            out[size, seed] = np.asarray(Image.open(target)).astype(float)
        window_change = np.abs(out[32, 0] - out[64, 0]).mean()
        seed_change = np.abs(out[32, 0] - out[32, 1]).mean()
        assert window_change < tolerance * seed_change, (name, window_change, seed_change)


def test_ray_cog_writer_makes_a_valid_cog_with_overviews(tmp_path):
    """`cloud_optimised` around the GeoTIFF writer: rio-cogeo's validator passes, overviews exist, CRS, transform
    and nodata are kept, and nothing but the output is left in the folder."""
    pytest.importorskip("rio_cogeo", reason="rio-cogeo is not installed (pip install 'rsvl[geo]')")
    import torch
    from rio_cogeo.cogeo import cog_validate

    from rsvl_core.scenes.geo import cloud_optimised, read_raster, write_geotiff_atomic

    source = georeferenced(tmp_path / "in.tif", (0, 0, 100, 100))
    raster = read_raster(source)
    info = raster.info.scaled(12)  # 1200 x 1200: big enough for overviews
    image = torch.nn.functional.interpolate(raster.image, size=(1200, 1200), mode="bilinear")
    target = tmp_path / "out" / "cog.tif"
    target.parent.mkdir()
    valid = np.repeat(np.repeat(raster.valid, 12, axis=0), 12, axis=1)
    with cloud_optimised(target) as path:
        write_geotiff_atomic(image, path, info, valid=valid)
    ok, errors, _ = cog_validate(str(target))
    assert ok and not errors
    with rasterio.open(target) as dst, rasterio.open(source) as src:
        assert dst.crs == src.crs and dst.nodata == 0 and dst.overviews(1)
        assert dst.transform.c == src.transform.c and dst.transform.a == pytest.approx(src.transform.a / 12)
        assert dst.block_shapes[0] == (512, 512) and dst.compression.value == "DEFLATE"
        assert (dst.read(1)[:36, :60] == 0).all() and (dst.read(1)[40:, 64:] > 0).all()
    assert sorted(p.name for p in target.parent.iterdir()) == ["cog.tif"]


def test_ray_batch_without_ray_says_what_to_do(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.open(SAMPLE_IMAGE).convert("RGB").crop((0, 0, 8, 8)).save(image)
    assert main(["batch", str(image), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--ray auto" in err and "--ray HOST:PORT" in err and "rsvl upscale" in err
    assert not (tmp_path / "out").exists()


def test_ray_scene_overview_is_read_decimated(tmp_path):
    """The caption of a windowed scene comes from an overview of at most 1024 px a side (here 16): a GeoTIFF read
    decimated by GDAL (area average), a plain image shrunk the same way."""
    import torch

    from rsvl_core.scenes.sources import open_scene

    tif = georeferenced(tmp_path / "s.tif", (0, 0, 64, 48))
    lazy = open_scene(tif, windowed=True)
    whole = open_scene(tif)
    overview = lazy.overview(max_side=16)
    assert lazy.image is None and tuple(overview.shape) == (1, 3, 12, 16)
    expected = torch.nn.functional.avg_pool2d(whole.image, 4)
    assert float((overview - expected).abs().mean()) < 0.01  # the nodata corner aside, the same average
    png = tmp_path / "s.png"
    Image.open(SAMPLE_IMAGE).convert("RGB").crop((0, 0, 64, 48)).save(png)
    assert tuple(open_scene(png).overview(max_side=16).shape) == (1, 3, 12, 16)
    assert open_scene(png).overview(max_side=100).shape[-2:] == (48, 64)  # small scenes: as they are


@pytest.mark.slow
def test_ray_caption_per_window_captions_each_window(models, tmp_path):
    scene = georeferenced(tmp_path / "scene.tif", (0, 0, 40, 32))
    assert main(["upscale", str(scene), "--models-dir", str(models), *RUN, "--window-size", "16",
                 "--window-overlap", "4", "--caption-per", "window", "-o", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "scene_x2.json").read_text())
    windows = record["windows"]
    assert windows["caption_per"] == "window" and record["caption_source"] == "captioner"
    assert len(windows["captions"]) == windows["count"] > 1 and all(windows["captions"])


@pytest.mark.slow
def test_ray_uncertainty_windows_across_actors_equal_single_process(ray_cluster, models, tmp_path):
    """--samples 2 with the guard on a windowed scene spread over 2 actors: sample k of every window uses draw k
    of the scene-keyed noise wherever it runs, so the output, the layer and its summary equal `rsvl upscale`'s."""
    scene = georeferenced(tmp_path / "scene.tif", (0, 0, 40, 28))
    common = [str(scene), "--models-dir", str(models), *RUN, "--stage1-only", "--window-size", "16",
              "--window-overlap", "4", "--samples", "2", "--combine", "mean", "--guard", "30"]
    assert main(["batch", *common, "-o", str(tmp_path / "batch"), "--ray", "auto", "--actors", "2"]) == 0
    assert main(["upscale", *common, "-o", str(tmp_path / "upscale")]) == 0
    for name in ("scene_x2.tif", "scene_x2_uncertainty.tif"):
        with rasterio.open(tmp_path / "batch" / name) as x, rasterio.open(tmp_path / "upscale" / name) as y:
            assert (x.crs, x.transform, x.nodata) == (y.crs, y.transform, y.nodata), name
            assert np.abs(x.read().astype(float) - y.read().astype(float)).max() <= 1e-3 * 255, name
    batch, single = (json.loads((tmp_path / d / "scene_x2.json").read_text())["uncertainty"]
                     for d in ("batch", "upscale"))
    assert batch.pop("seconds_per_sample") and single.pop("seconds_per_sample")  # timings differ
    assert_records_close(batch, single, SPREAD, "uncertainty")
    assert batch["seeds"] == [0, 1] and 0 < batch["guard"]["fraction_replaced"] < 1


@pytest.mark.slow
def test_ray_local_batch_listens_on_loopback_only(models, tmp_path):
    """`rsvl batch --ray auto` in a fresh process (Ray's switch not set by anyone else): while it runs, every listening
    socket of the driver and of the processes Ray starts (GCS, raylet, workers) is on 127.0.0.1."""
    import ipaddress

    psutil = pytest.importorskip("psutil", reason="psutil comes with ray")
    folder = tmp_path / "in"
    folder.mkdir()
    sample = Image.open(SAMPLE_IMAGE).convert("RGB")
    for n in range(3):
        sample.crop((n * 8, 0, n * 8 + 24, 24)).save(folder / f"img{n}.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    argv = ["batch", str(folder), "-o", str(tmp_path / "out"), "--models-dir", str(models), *RUN, "--stage1-only",
            "--ray", "auto", "--actors", "2"]
    driver = subprocess.Popen([sys.executable, "-m", "rsvl_core", *argv], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    seen: dict[tuple[str, int], str] = {}  # listening address -> the process name that held it
    try:
        root = psutil.Process(driver.pid)
        deadline = time.monotonic() + 300
        while driver.poll() is None:
            assert time.monotonic() < deadline, "the batch did not finish within 300 s"
            try:
                pids = {root.pid} | {p.pid for p in root.children(recursive=True)}
                names = {p.pid: p.name() for p in root.children(recursive=True)}
            except psutil.NoSuchProcess:
                continue
            for conn in psutil.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
                    seen[(conn.laddr.ip, conn.laddr.port)] = names.get(conn.pid, "driver")
    finally:
        driver.kill()
        stderr = driver.stderr.read().decode()
        driver.wait(timeout=60)
    assert driver.returncode == 0, stderr[-2000:]
    assert any("gcs_server" in name for name in seen.values()), seen  # the cluster was seen while it ran
    outside = {addr: name for addr, name in seen.items()
               if not ipaddress.ip_address(addr[0].removeprefix("::ffff:")).is_loopback}
    assert outside == {}, f"listening beyond loopback: {outside}"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"img{n}_x2.png" for n in range(3)]
