"""GeoTIFF in ComfyUI (issue 32, items 1, 2, 4, 5, 6): RSVL Load Scene and RSVL Save GeoTIFF, file names kept inside
input/ and output/, the rsvl_geotiff_scene workflow driven by README's client, and the same GeoTIFF as `rsvl upscale`.

The engine and node logic run first on the ComfyUI stand-in; the host tests run the pack in a real ComfyUI on each
host (ids comfy080 / comfy0201; a missing host fails under CI and skips elsewhere, see hosts.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hosts import HOSTS, require
from nodes_testing import REPO, WORKFLOWS
from test_browser import browser, page  # noqa: F401  (the canvas test's Chromium and page, on this module's server)

rasterio = pytest.importorskip("rasterio", reason='rasterio is not installed (pip install "rsvl[geo]")')
from rasterio.transform import from_origin  # noqa: E402

from rsvl_core.hosted.paths import OutsideFolderError, resolve_input, resolve_output  # noqa: E402

TRANSFORM = from_origin(402000.0, 3285000.0, 10.0, 10.0)
CRS = "EPSG:32617"


# ---------------------------------------------------------------------------------------------------------------
# scenes: 24 x 16 pixels, smooth fields + noise, placed in UTM 17N at 10 m


def _fields(seed: int, bands: int, height: int = 16, width: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    planes = [0.5 + 0.25 * np.sin(rng.uniform(1, 4) * 6 * x + b) * np.cos(rng.uniform(1, 4) * 5 * y)
              + 0.05 * rng.standard_normal((height, width)) for b in range(bands)]
    return np.clip(np.stack(planes), 0, 1)


def write_scene(path: Path, data: np.ndarray, dtype: str, nodata=None, descriptions=(), driver="GTiff",
                **options) -> Path:
    with rasterio.open(path, "w", driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=dtype, crs=CRS, transform=TRANSFORM, nodata=nodata, **options) as ds:
        ds.write(data.astype(dtype))
        for band, text in enumerate(descriptions, start=1):
            ds.set_band_description(band, text)
    return path


def uint16_four_bands(path: Path) -> Path:
    """A 4-band uint16 scene (blue, green, red, nir): read with --bands 3,2,1 (percentile stretch)."""
    return write_scene(path, 200 + _fields(1, 4) * 3800, "uint16", descriptions=("blue", "green", "red", "nir"))


def float32_reflectance(path: Path) -> Path:
    """Reflectance 0.02..0.47 as float32, one NaN pixel (invalid without a nodata value: a mask band out)."""
    data = (_fields(2, 3) * 0.45 + 0.02).astype("float32")
    data[:, 0, 0] = np.nan
    return write_scene(path, data, "float32")


def nodata_collar(path: Path) -> Path:
    """uint8 with nodata 0 in a collar around a rotated footprint (as an orthorectified strip's corners)."""
    data = np.round(20 + _fields(3, 3) * 220)
    y, x = np.mgrid[0:16, 0:24]
    data[:, (x + y < 6) | (x - y > 19) | (y - x > 10) | (x + y > 32)] = 0
    return write_scene(path, data, "uint8", nodata=0)


SCENES = {"uint16_bands": (uint16_four_bands, "3,2,1"), "float32_reflectance": (float32_reflectance, ""),
          "nodata_collar": (nodata_collar, "")}


# ---------------------------------------------------------------------------------------------------------------
# item 4: names stay inside input/ and output/ (engine level)


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "input" / "sub").mkdir(parents=True)
    (tmp_path / "output").mkdir()
    (tmp_path / "input" / "escape").symlink_to("/etc")
    (tmp_path / "output" / "escape").symlink_to("/etc")
    (tmp_path / "input" / "inside").symlink_to(tmp_path / "input" / "sub")
    return SimpleNamespace(get_input_directory=lambda: str(tmp_path / "input"),
                           get_output_directory=lambda: str(tmp_path / "output"), root=tmp_path)


@pytest.mark.parametrize(("name", "why"), [("../../etc/passwd", "'..' in the path"),
                                           ("sub/../../x.tif", "'..' in the path"),
                                           ("/etc/passwd", "an absolute path"), ("C:\\scene.tif", "an absolute path"),
                                           ("escape/passwd", "a symlink that leads out of the folder"),
                                           ("", "an empty file name")])
def test_names_outside_the_folders_are_refused_in_one_line(folders, name, why):
    for resolve, kind in ((resolve_input, "input"), (resolve_output, "output")):
        with pytest.raises(OutsideFolderError) as caught:
            resolve(folders, name)
        message = str(caught.value)
        assert "\n" not in message and why in message and repr(name) in message
        assert message.endswith(f"ComfyUI's {kind} folder {folders.root / kind}")
        assert isinstance(caught.value, ValueError)  # validate_inputs and user_errors take it as a user's error


def test_names_inside_the_folders_resolve_there(folders):
    root = folders.root.resolve()
    assert resolve_input(folders, "scene.tif") == root / "input" / "scene.tif"
    assert resolve_input(folders, "sub/scene.tif [input]") == root / "input" / "sub" / "scene.tif"
    assert resolve_input(folders, "inside/scene.tif") == root / "input" / "sub" / "scene.tif"  # a link that stays
    assert resolve_output(folders, "rsvl/new/scene") == root / "output" / "rsvl" / "new" / "scene"
    assert not (root / "output" / "rsvl").exists()  # nothing is made by resolving


# ---------------------------------------------------------------------------------------------------------------
# items 1-2 on the ComfyUI stand-in: the nodes over the engine


@pytest.fixture(scope="module")
def stand_in(comfy):
    fp = comfy.folder_paths
    Path(fp.get_input_directory()).mkdir(parents=True, exist_ok=True)
    Path(fp.get_output_directory()).mkdir(parents=True, exist_ok=True)
    return comfy


def test_load_scene_node_reads_as_the_cli_reads(stand_in):
    from rsvl_core.scenes.geo import BandPlan, fill_invalid, read_raster

    source = uint16_four_bands(Path(stand_in.folder_paths.get_input_directory()) / "u16.tif")
    image, geo, mask = stand_in.node("RSVLLoadScene").execute(scene="u16.tif", bands="3,2,1", stretch="auto",
                                                              percentiles="").args
    read = read_raster(source, BandPlan.parse(bands="3,2,1"))
    assert image.shape == (1, 16, 24, 3) and mask.shape == (1, 16, 24) and float(mask.sum()) == 0
    assert torch.equal(image[0].movedim(-1, 0), fill_invalid(read.image, read.valid)[0])
    assert geo.crs == CRS and geo.transform == TRANSFORM and geo.band_names == ("red", "green", "blue")
    assert geo.source_dtype == "uint16" and geo.stretch.method == "percentile" and geo.stretch.bands == (3, 2, 1)
    assert "Load Scene" in stand_in.schema.DISPLAY_NAMES["RSVLLoadScene"]

    collar = nodata_collar(Path(stand_in.folder_paths.get_input_directory()) / "collar.tif")
    _, geo, mask = stand_in.node("RSVLLoadScene").execute(scene="collar.tif", bands="", stretch="auto",
                                                          percentiles="").args
    with rasterio.open(collar) as ds:
        invalid = ds.read(1) == 0
    assert torch.equal(mask[0].bool(), torch.from_numpy(invalid)) and invalid.sum() == 67
    assert geo.nodata == 0 and geo.stretch.method == "none"


def test_load_scene_validation_answers_in_one_line(stand_in):
    node = stand_in.node("RSVLLoadScene")
    nodata_collar(Path(stand_in.folder_paths.get_input_directory()) / "collar.tif")
    assert node.validate_inputs(scene="collar.tif") is True
    for name, why in (("../../etc/passwd", "'..' in the path"), ("/etc/passwd", "an absolute path"),
                      ("missing.tif", "is not a file in ComfyUI's input folder")):
        answer = node.validate_inputs(scene=name)
        assert answer.startswith("RSVL Load Scene") and why in answer and "\n" not in answer
    assert "'..' in the path" in stand_in.node("RSVLSaveGeoTIFF").validate_inputs(filename_prefix="../x")


def test_save_geotiff_16bit_maps_back_through_the_stretch_and_cog(stand_in):
    """bit_depth 16 on a uint16 scene: uint16 values back through the recorded percentile stretch (within one
    level where the stretch did not clip); COG: a valid Cloud-Optimised GeoTIFF with the same grid."""
    from rio_cogeo.cogeo import cog_validate

    source = uint16_four_bands(Path(stand_in.folder_paths.get_input_directory()) / "u16.tif")
    image, geo, _ = stand_in.node("RSVLLoadScene").execute(scene="u16.tif", bands="3,2,1", stretch="auto",
                                                           percentiles="").args
    save = stand_in.node("RSVLSaveGeoTIFF")
    output = Path(stand_in.folder_paths.get_output_directory())
    (name,) = save.execute(image=image, geo=geo, filename_prefix="t16/u16", format="GeoTIFF", bit_depth="16").args
    assert name == "t16/u16_00001_.tif"
    with rasterio.open(source) as src, rasterio.open(output / name) as out:
        data, back = src.read([3, 2, 1]).astype(float), out.read().astype(float)
        assert out.dtypes == ("uint16",) * 3 and out.crs == src.crs and out.transform == src.transform
        assert json.loads(out.tags()["RSVL_STRETCH"])["bands"] == [3, 2, 1]
    low, high = np.array(geo.stretch.low)[:, None, None], np.array(geo.stretch.high)[:, None, None]
    inside = (data >= low) & (data <= high)
    assert inside.mean() > 0.9 and np.abs(back - data)[inside].max() <= 1
    assert np.array_equal(back[~inside], np.where(data < low, np.round(low), np.round(high))[~inside])
    (names,) = save.execute(image=torch.cat([image, image]), geo=geo, filename_prefix="t16/u16", format="COG",
                            bit_depth="8").args
    assert names.split("\n") == ["t16/u16_00002_.tif", "t16/u16_00003_.tif"]  # one file per image, numbered on
    for name in names.split("\n"):
        valid, errors, _ = cog_validate(str(output / name))
        assert valid and not errors


def test_save_plain_images_8_and_16_bit(stand_in):
    """No geo: PNG/TIFF; 16-bit PNG and TIFF keep 65535 levels (read back exactly)."""
    image = torch.rand(1, 5, 7, 3)
    expected = np.round(image[0].numpy() * 65535).astype(np.uint16)
    save = stand_in.node("RSVLSaveGeoTIFF")
    output = Path(stand_in.folder_paths.get_output_directory())
    (png,) = save.execute(image=image, filename_prefix="plain/p", format="PNG", bit_depth="16").args
    (tif,) = save.execute(image=image, filename_prefix="plain/p", format="GeoTIFF", bit_depth="16").args
    (png8,) = save.execute(image=image, filename_prefix="plain/p", format="PNG", bit_depth="8").args
    assert (png, tif, png8) == ("plain/p_00001_.png", "plain/p_00002_.tif", "plain/p_00003_.png")
    import cv2

    assert np.array_equal(cv2.imread(str(output / png), cv2.IMREAD_UNCHANGED)[..., ::-1], expected)
    with rasterio.open(output / tif) as ds:
        assert ds.crs is None and np.array_equal(ds.read().transpose(1, 2, 0), expected)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(output / png8)), np.round(image[0].numpy() * 255).astype(np.uint8))


def test_save_refuses_an_image_off_the_scene_grid(stand_in):
    nodata_collar(Path(stand_in.folder_paths.get_input_directory()) / "collar.tif")
    _, geo, _ = stand_in.node("RSVLLoadScene").execute(scene="collar.tif", bands="", stretch="auto",
                                                       percentiles="").args
    with pytest.raises(stand_in.host.NodeError) as caught:
        stand_in.node("RSVLSaveGeoTIFF").execute(image=torch.rand(1, 33, 48, 3), geo=geo, filename_prefix="x",
                                                 format="GeoTIFF", bit_depth="8")
    assert str(caught.value) == ("RSVL Save GeoTIFF (COG, 16-bit): the image is 48x33 but the scene collar.tif is "
                                 "24x16: a GeoTIFF needs the scene's size times a whole factor (2x, 4x, 8x)")


# ---------------------------------------------------------------------------------------------------------------
# the real ComfyUI: items 1, 2, 4, 5 and 6 through /upload/image, /prompt, /history and /view


def readme_client() -> dict:
    """README's client (the python block under "GeoTIFF and large scenes"), run as a module would be imported."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### GeoTIFF and large scenes"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code.startswith("# GeoTIFF through ComfyUI's API")
    namespace = {"__name__": "readme_client"}
    exec(compile(code, "README.md (GeoTIFF client)", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module", params=list(HOSTS))
def server(request, tmp_path_factory):
    from test_comfy_host import start_server

    host = HOSTS[request.param]
    require(host.missing())
    problem = _rasterio_missing(host)
    if problem:
        pytest.fail(problem, pytrace=False)
    for running in start_server(tmp_path_factory.mktemp(f"geo_{host.id}"), host):
        base = next((Path(running["env"]["COMFY_STATE_DIR"]) / str(running["port"])).glob("base.*"))
        running.update(url=f"http://127.0.0.1:{running['port']}", input=base / "input", output=base / "output")
        yield running


def _rasterio_missing(host) -> str | None:
    import subprocess

    probe = subprocess.run([str(host.python), "-c", "import rasterio, rio_cogeo"], capture_output=True)
    if probe.returncode == 0:
        return None
    return (f"ComfyUI {host.version}'s Python has no rasterio / rio-cogeo (the GeoTIFF nodes need them): "
            f"{host.python} -m pip install rasterio rio-cogeo")


def scene_workflow(server: dict, bands: str) -> dict:
    """The shipped API twin at the tiny settings, the demo models, plus a second Save: COG, bit_depth 16."""
    from test_comfy_host import TINY

    api = json.loads((WORKFLOWS / "api" / "rsvl_geotiff_scene.json").read_text(encoding="utf-8"))
    for node in api.values():
        node["inputs"].update(TINY.get(node["class_type"], {}))
        if node["class_type"] == "LoadRSVLModels":
            node["inputs"].update({k: server["choices"][k] for k in node["inputs"] if k in server["choices"]})
        if node["class_type"] == "RSVLLoadScene":
            node["inputs"]["bands"] = bands
    save = next(k for k, n in api.items() if n["class_type"] == "RSVLSaveGeoTIFF")
    api["99"] = {"class_type": "RSVLSaveGeoTIFF", "inputs": {**api[save]["inputs"], "filename_prefix": "rsvl/cog16",
                                                             "format": "COG", "bit_depth": "16"}}
    return api


def cli_geotiff(server: dict, source: Path, bands: str, out: Path) -> Path:
    """`rsvl upscale` on the same file with the same models and settings as scene_workflow."""
    from rsvl_core.cli import main

    models, choices = server["root"] / "models", server["choices"]
    argv = ["upscale", str(source), "-o", str(out), "--scale", "2", "--device", "cpu", "-q",
            "--sr3", str(models / "rsvl" / "sr3" / choices["sr3_model"]),
            "--llava", str(models / "rsvl" / "llava" / choices["llava_model"]),
            "--adapter", str(models / "rsvl" / "llava_adapter" / choices["llava_adapter"]),
            "--sdxl", str(models / "checkpoints" / choices["sdxl_checkpoint"]),
            "--supir", str(models / "rsvl" / "supir" / choices["supir_model"]),
            "--stage1-sampler", "ddim", "--stage1-steps", "2", "--caption-max-tokens", "4", "--refine-steps", "3",
            "--min-size", "64", *(["--bands", bands] if bands else [])]
    assert main(argv) == 0
    return out / f"{source.stem}_x2.tif"


@pytest.mark.slow
@pytest.mark.parametrize("scene", list(SCENES))
def test_graph_geotiff_equals_rsvl_upscale(server, scene, tmp_path):
    """Items 1, 2, 5, 6: README's client uploads the scene, queues the rsvl_geotiff_scene API twin and downloads
    the GeoTIFFs; the 8-bit one equals `rsvl upscale`'s (pixels within 1 level, computed in another process with
    another torch; CRS, transform, nodata, mask, dtype, tags exactly); the COG is the source's type."""
    make, bands = SCENES[scene]
    source = make(tmp_path / f"{scene}.tif")
    client = readme_client()
    files = client["upscale_geotiff"](server["url"], source, tmp_path / "downloaded", scene_workflow(server, bands))
    assert sorted(f.name[:6] for f in files) == ["cog16_", "scene_"], files  # numbered on over the module
    graph = next(f for f in files if f.name.startswith("scene_"))
    cog = next(f for f in files if f.name.startswith("cog16_"))
    reference = cli_geotiff(server, source, bands, tmp_path / "cli")
    with rasterio.open(graph) as a, rasterio.open(reference) as b, rasterio.open(source) as src:
        assert (a.width, a.height, a.count) == (b.width, b.height, b.count) == (48, 32, 3)
        assert a.dtypes == b.dtypes == ("uint8",) * 3
        assert a.crs == b.crs == src.crs and a.transform == b.transform
        assert a.transform.a == pytest.approx(src.transform.a / 2) and a.bounds == pytest.approx(tuple(src.bounds))
        assert a.nodata == b.nodata == src.nodata
        assert np.array_equal(a.dataset_mask(), b.dataset_mask())
        tags_a = {k: v for k, v in a.tags().items() if k != "RSVL_COMFY_PROMPT"}
        assert tags_a == b.tags() and json.loads(a.tags()["RSVL_COMFY_PROMPT"])  # the graph kept beside them
        difference = np.abs(a.read().astype(int) - b.read().astype(int))
        print(f"{server['host'].id} {scene}: max |graph - rsvl upscale| = {difference.max()} levels, "
              f"{(difference > 0).mean():.4%} of values differ")
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01, (difference.max(), (difference > 0).mean())
        if scene == "nodata_collar":  # the collar is nodata at 2x too
            invalid = ~src.dataset_mask().astype(bool).repeat(2, 0).repeat(2, 1)
            assert invalid.sum() == 67 * 4 and (a.read()[:, invalid] == 0).all() and (a.read()[:, ~invalid] > 0).all()
    with rasterio.open(cog) as c, rasterio.open(source) as src:
        expected = {"uint16_bands": "uint16", "float32_reflectance": "float32", "nodata_collar": "uint8"}[scene]
        assert c.dtypes == (expected,) * 3 and c.crs == src.crs and c.transform == a.transform
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(str(cog))[0]


def post_prompt(server: dict, api: dict) -> tuple[int, dict]:
    from test_comfy_host import post_prompt as post

    return post(server, api)


@pytest.mark.slow
def test_names_outside_input_and_output_refused_at_validation(server):
    """Item 4 through /prompt: ../../etc/passwd, an absolute path and a symlink out of input/ (and an output prefix
    out of output/) are refused with HTTP 400 and one line naming the node, the name and the folder."""
    (server["input"] / "escape").unlink(missing_ok=True)
    (server["input"] / "escape").symlink_to("/etc")
    cases = {"../../etc/passwd": "'..' in the path", "/etc/passwd": "an absolute path",
             "escape/passwd": "a symlink that leads out of the folder"}
    for name, why in cases.items():
        api = {"1": {"class_type": "RSVLLoadScene", "inputs": {"scene": name, "bands": "", "stretch": "auto",
                                                               "percentiles": ""}},
               "2": {"class_type": "RSVLSaveGeoTIFF", "inputs": {"image": ["1", 0], "geo": ["1", 1],
                                                                 "filename_prefix": "ok", "format": "GeoTIFF",
                                                                 "bit_depth": "8"}}}
        status, answer = post_prompt(server, api)
        assert status == 400, answer
        (detail,) = [e["details"] for e in answer["node_errors"]["1"]["errors"]]
        assert detail == (f"scene - RSVL Load Scene (GeoTIFF, JPEG 2000, VRT) #1: {name!r} refused: {why}; file "
                          f"names must stay inside ComfyUI's input folder {server['input']}"), detail
    api["1"]["inputs"]["scene"] = "rsvl_sample_scene.tif"
    api["2"]["inputs"]["filename_prefix"] = "../../outside"
    status, answer = post_prompt(server, api)
    assert status == 400 and list(answer["node_errors"]) == ["2"], answer
    assert "'..' in the path; file names must stay inside ComfyUI's output folder" in \
        answer["node_errors"]["2"]["errors"][0]["details"]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".jp2", ".vrt"])
def test_uploaded_rasters_load_and_save_in_place(server, suffix, tmp_path):
    """/upload/image takes each raster type; Load Scene -> Save GeoTIFF at 1x gives back the collar scene's own
    pixels (uint8, stretch none: lossless), place and nodata."""
    client = readme_client()
    source = nodata_collar(tmp_path / "collar.tif")
    with rasterio.open(source) as ds:
        expected, place = ds.read(), (ds.crs, ds.transform)
    if suffix == ".tiff":
        source = source.rename(tmp_path / "collar.tiff")
    elif suffix == ".jp2":
        source = write_scene(tmp_path / "collar.jp2", expected, "uint8", nodata=0, driver="JP2OpenJPEG",
                             QUALITY=100, REVERSIBLE="YES")
    elif suffix == ".vrt":  # a VRT names its data file beside it: both uploaded
        client["upload"](server["url"], source)
        from rasterio.shutil import copy

        copy(str(source), str(tmp_path / "collar.vrt"), driver="VRT")
        text = (tmp_path / "collar.vrt").read_text().replace(str(source), source.name)
        (tmp_path / "collar.vrt").write_text(text.replace('relativeToVRT="0"', 'relativeToVRT="1"'))
        source = tmp_path / "collar.vrt"
    api = {"1": {"class_type": "RSVLLoadScene", "inputs": {"scene": "", "bands": "", "stretch": "auto",
                                                           "percentiles": ""}},
           "2": {"class_type": "RSVLSaveGeoTIFF", "inputs": {"image": ["1", 0], "geo": ["1", 1],
                                                             "filename_prefix": f"same/{suffix[1:]}",
                                                             "format": "GeoTIFF", "bit_depth": "8"}}}
    (saved,) = client["upscale_geotiff"](server["url"], source, tmp_path / "back", api)
    assert (server["input"] / source.name).is_file()
    with rasterio.open(saved) as out:
        assert (out.crs, out.transform) == place
        assert out.nodata == 0 or suffix == ".jp2"  # whether a JPEG 2000 keeps nodata depends on the GDAL build
        assert np.array_equal(out.read(), expected)


@pytest.mark.slow
def test_geotiff_workflow_on_the_canvas(page, server, tmp_path):  # noqa: F811
    """The template on the canvas (the classic one, each host's own frontend): Run with the tiny settings; Load
    Scene shows what it read and Save GeoTIFF the file it wrote, which is a GeoTIFF at 2x in the sample's place;
    nothing overlaps. With RSVL_WRITE_DOCS_PICTURES=1 the 0.8.0 host's screenshot becomes README's picture."""
    import os

    from test_browser import TINY, drop_workflow, node_boxes, overlaps, run, set_widgets, settle, text_on_node

    drop_workflow(page, WORKFLOWS / "rsvl_geotiff_scene.json")
    set_widgets(page, {**TINY, "LoadRSVLModels": dict(server["choices"])})
    entry = run(page, server)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    written = text_on_node(page, "RSVLSaveGeoTIFF")
    assert re.fullmatch(r"output/rsvl/scene_\d{5}_\.tif", written or ""), written
    assert text_on_node(page, "RSVLLoadScene").startswith("rsvl_sample_scene.tif: 100x100, EPSG:32617")
    with rasterio.open(server["output"] / written.removeprefix("output/")) as out, \
            rasterio.open(REPO / "rsvl_core" / "samples" / "osbs_029_lr100.tif") as src:
        assert (out.width, out.height, out.crs) == (200, 200, src.crs)
        assert out.bounds == pytest.approx(tuple(src.bounds))
    settle(page)
    assert overlaps(node_boxes(page)) == []
    assert page.page_errors == []
    picture = tmp_path / "canvas.png"
    page.screenshot(path=str(picture))
    if os.environ.get("RSVL_WRITE_DOCS_PICTURES") == "1" and server["host"].id == "comfy080":
        from PIL import Image

        Image.open(picture).convert("RGB").save(REPO / "docs" / "rsvl_geotiff_scene_canvas.jpg", quality=85)
