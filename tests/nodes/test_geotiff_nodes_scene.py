"""RSVL Upscale Scene (issue 32, item 3): a scene file in input/ -> windows -> the job engine -> a GeoTIFF in output/.

In the ComfyUI stand-in: the node's output equals `rsvl upscale --window-size`'s for the same file and settings,
one progress update per window, a Cancel after window 3 leaves nothing behind and the next run completes to the same
pixels (a finished output is not computed again), the memory check refuses before any model loads, and names
outside input/ and output/ are refused at validation. In each real ComfyUI host, through /prompt: a scene of 4 x 4
windows, POST /interrupt once the progress bar shows a finished window, then a resume that equals an uninterrupted
run and the CLI's output.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from hosts import HOSTS, TOOLS, require
from nodes_testing import REPO, WORKFLOWS
from rsvl_testing import crop_geotiff

rasterio = pytest.importorskip("rasterio", reason='rasterio is not installed (pip install "rsvl[geo]")')
OSBS = REPO.parent / "shared" / "data" / "OSBS_029.tif"
pytestmark = pytest.mark.skipif(not OSBS.is_file(), reason=f"shared sample {OSBS} not found")
SIDE, WINDOW, OVERLAP = 96, 32, 4  # 4 x 4 windows at x2
WINDOWS = 16
SETTINGS = {"scale": "2", "seed": 0, "sampler": "ddim", "steps": 2, "tile_size": 224, "tile_overlap": 32,
            "window_size": WINDOW, "window_overlap": OVERLAP, "caption_per": "scene", "bands": "", "stretch": "auto",
            "percentiles": "", "cog": False, "preset": "paper", "refine_steps": 50, "positive_prompt": "",
            "negative_prompt": "", "min_size": 1024}
CLI_FLAGS = ["--scale", "2", "--sampler", "ddim", "--steps", "2", "--stage1-only", "-q", "--window-size",
             str(WINDOW), "--window-overlap", str(OVERLAP)]


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as dst:
        return dst.read(), {"crs": dst.crs, "transform": dst.transform, "nodata": dst.nodata, "dtype": dst.dtypes[0]}


def cli_output(scene: Path, sr3: Path, out: Path) -> Path:
    from rsvl_core.cli import main

    assert main(["upscale", str(scene), "-o", str(out), "--stage1-model", str(sr3), *CLI_FLAGS]) == 0
    return out / f"{scene.stem}_x2.tif"


# ---------------------------------------------------------------------------------------------------------------
# the ComfyUI stand-in


@pytest.fixture(scope="module")
def stand_in(comfy, demo_models, tmp_path_factory):
    """The stand-in with a 96 x 96 georeferenced crop in input/, the SR3 handle, and the CLI's output of it (made
    when a test asks for it)."""
    fp = comfy.folder_paths
    inputs = Path(fp.get_input_directory())
    inputs.mkdir(parents=True, exist_ok=True)
    scene = crop_geotiff(OSBS, inputs / "osbs_scene.tif", SIDE, SIDE)
    models, choices = demo_models
    sr3_file = models / "rsvl" / "sr3" / choices["sr3_model"]
    load = comfy.node("LoadRSVLModels").execute
    sr3 = load(sr3_model=choices["sr3_model"], llava_model="none", llava_adapter="none", sdxl_checkpoint="none",
               supir_model="none", dtype="auto", device="auto", llava_quantization="none").args[0]
    made: list[Path] = []

    def cli() -> Path:
        made[:] = made or [cli_output(scene, sr3_file, tmp_path_factory.mktemp("cli"))]
        return made[0]

    return {"scene": scene, "sr3": sr3, "cli": cli, "output": Path(fp.get_output_directory())}


def run_node(comfy, stand_in, folder: str, **overrides):
    inputs = {**SETTINGS, "scene": "osbs_scene.tif", "output_folder": folder, "sr3": stand_in["sr3"], **overrides}
    return comfy.node("RSVLUpscaleScene").execute(**inputs)


@pytest.mark.slow
def test_node_equals_the_cli_with_one_progress_update_per_window(comfy, stand_in):
    state = comfy.state
    state.updates.clear()
    out = run_node(comfy, stand_in, "whole")
    name, preview = out.args
    assert name == "whole/osbs_scene_x2.tif"
    assert [(value, total) for value, total, _ in state.updates] == [(k, WINDOWS) for k in range(1, WINDOWS + 1)]
    pixels, geo = read(stand_in["output"] / name)
    cli_pixels, cli_geo = read(stand_in["cli"]())
    assert pixels.shape == (3, 2 * SIDE, 2 * SIDE)
    assert np.array_equal(pixels, cli_pixels) and geo == cli_geo  # same process: bit for bit
    record = json.loads((stand_in["output"] / "whole" / "osbs_scene_x2.json").read_text())
    assert record["windows"]["count"] == WINDOWS and record["windows"]["size"] == WINDOW
    assert tuple(preview.shape) == (1, 2 * SIDE, 2 * SIDE, 3)  # under 512 px a side: the whole output
    assert f"{WINDOWS} windows computed" in out.ui.value


@pytest.mark.slow
def test_cancel_after_three_windows_then_resume_completes_to_the_same_pixels(comfy, stand_in):
    state, folder = comfy.state, stand_in["output"] / "resumed"
    state.updates.clear()
    state.interrupt_after = 3  # the host's interrupt flag, raised once the bar shows 3 finished windows
    try:
        with pytest.raises(comfy.modules["comfy.model_management"].InterruptProcessingException):
            run_node(comfy, stand_in, "resumed")
    finally:
        state.interrupt_after = None
    assert [value for value, _, _ in state.updates] == [1, 2, 3]
    assert sorted(p.name for p in folder.iterdir()) == []  # no output, no temp file, no claim left
    state.updates.clear()
    out = run_node(comfy, stand_in, "resumed")
    assert len(state.updates) == WINDOWS
    pixels, geo = read(folder / "osbs_scene_x2.tif")
    cli_pixels, cli_geo = read(stand_in["cli"]())
    assert np.array_equal(pixels, cli_pixels) and geo == cli_geo
    state.updates.clear()
    again = run_node(comfy, stand_in, "resumed")  # a finished output is not computed again (as the CLI skips it)
    assert state.updates == [] and "complete already" in again.ui.value
    assert again.args[0] == out.args[0] == "resumed/osbs_scene_x2.tif"


def test_memory_check_refuses_before_any_model_loads(comfy, stand_in, demo_models, monkeypatch):
    windows = __import__(f"{comfy.pack_name}.rsvl_core.memory.windows", fromlist=["available_memory"])
    monkeypatch.setattr(windows, "available_memory", lambda: 100 * 1024)  # 100 KiB free
    models, choices = demo_models
    sr3 = comfy.node("LoadRSVLModels").execute(
        sr3_model=choices["sr3_model"], llava_model="none", llava_adapter="none", sdxl_checkpoint="none",
        supir_model="none", dtype="auto", device="auto", llava_quantization="none").args[0]
    with pytest.raises(comfy.handles.NodeError) as refused:
        run_node(comfy, {**stand_in, "sr3": sr3}, "memory")
    message = str(refused.value)
    assert message.startswith("RSVL Upscale Scene")
    assert f"osbs_scene.tif: assembling the {2 * SIDE}x{2 * SIDE} output needs" in message
    assert "\n" not in message and sr3.load_count == 0  # nothing loaded
    assert not (stand_in["output"] / "memory" / "osbs_scene_x2.tif").exists()


def test_names_outside_input_and_output_are_refused_at_validation(comfy, stand_in, tmp_path):
    node = comfy.node("RSVLUpscaleScene")
    outside = tmp_path / "secret.tif"
    shutil.copy(stand_in["scene"], outside)
    link = stand_in["scene"].parent / "escape.tif"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    try:
        for name, why in (("../../etc/passwd", "'..' in the path"), ("/etc/passwd", "an absolute path"),
                          (str(outside), "an absolute path"), ("escape.tif", "a symlink that leads out")):
            answer = node.validate_inputs(scene=name, output_folder="rsvl_scenes")
            assert isinstance(answer, str) and answer.startswith("RSVL Upscale Scene") and why in answer, answer
            assert "\n" not in answer
        for folder, why in (("../out", "'..' in the path"), ("/tmp/out", "an absolute path")):
            answer = node.validate_inputs(scene="osbs_scene.tif", output_folder=folder)
            assert isinstance(answer, str) and answer.startswith("RSVL Upscale Scene") and why in answer, answer
        assert node.validate_inputs(scene="osbs_scene.tif", output_folder="rsvl_scenes") is True
    finally:
        link.unlink()


def test_scene_inputs_are_the_cli_scene_flags_rows(comfy):
    from rsvl_core.cli import build_parser
    from rsvl_core.pipeline.options import SCENE_SETTINGS

    info = comfy.object_info()["RSVLUpscaleScene"]["input"]
    inputs = {**info["required"], **info.get("optional", {})}
    args = build_parser().parse_args(["upscale", "x.tif", "-o", "out"])
    for name, spec in SCENE_SETTINGS.items():
        kind, options = inputs[name]
        default = spec.default if name != "window_size" else 512  # the node is for windows: 512 by default
        assert options["default"] == default, name
        assert getattr(args, name) == spec.default, name  # the CLI's flag from the same row
        if spec.choices is not None:
            assert kind == list(spec.choices), name
        assert spec.help[:20].lower() in options["tooltip"].lower(), name


# ---------------------------------------------------------------------------------------------------------------
# the real ComfyUI hosts, through /prompt


@pytest.fixture(scope="module", params=list(HOSTS))
def server(request, tmp_path_factory):
    """The pack in a fresh server of each host in turn (see test_comfy_host.py)."""
    from test_comfy_host import start_server

    host = HOSTS[request.param]
    require(host.missing())
    yield from start_server(tmp_path_factory.mktemp(f"scene_{host.id}"), host)


def base_dir(server) -> Path:
    bases = list((Path(server["env"]["COMFY_STATE_DIR"]) / str(server["port"])).glob("base.*"))
    assert len(bases) == 1, bases
    return bases[0]


def request_json(server, method: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{server['port']}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def scene_graph(server, folder: str, scene: str = "osbs_scene.tif") -> dict:
    """The shipped Upscale Scene API workflow with the tiny SR3, stage 1 only, 4 x 4 windows."""
    api = json.loads((WORKFLOWS / "api" / "rsvl_upscale_scene.json").read_text(encoding="utf-8"))
    for node in api.values():
        if node["class_type"] == "LoadRSVLModels":
            node["inputs"].update(sr3_model=server["choices"]["sr3_model"], llava_model="none",
                                  llava_adapter="none", sdxl_checkpoint="none", supir_model="none")
        if node["class_type"] == "RSVLUpscaleScene":
            for name in ("captioner", "refiner"):
                node["inputs"].pop(name)
            node["inputs"].update({**SETTINGS, "scene": scene, "output_folder": folder})
            node["inputs"].pop("positive_prompt"), node["inputs"].pop("negative_prompt")
            node["inputs"].update(positive_prompt="p", negative_prompt="n")
    return api


def queue(server, api: dict, client_id: str | None = None) -> str:
    status, answer = request_json(server, "POST", "/prompt", {"prompt": api, "client_id": client_id or "tests"})
    assert status == 200, answer
    return answer["prompt_id"]


def wait_history(server, prompt_id: str, timeout: float = 400) -> dict:
    """Poll /history until the prompt has finished (success, error or interrupted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, history = request_json(server, "GET", f"/history/{prompt_id}")
        entry = (history or {}).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and \
                entry["status"].get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.2)  # polling interval only: the result is waited for, never assumed after a delay
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


class Progress:
    """The server's websocket: the Upscale Scene node's progress values, as they arrive."""

    def __init__(self, server, node: str) -> None:
        import importlib.util
        import threading

        spec = importlib.util.spec_from_file_location("run_workflow", TOOLS / "run_workflow.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.values: list[int] = []
        self.seen = threading.Condition()
        self.client_id = uuid.uuid4().hex
        outer = self

        class Listener(module.WsListener):
            def handle(self, kind, data):
                values = []
                if kind == "progress" and str(data.get("node")) == node:
                    values = [data.get("value")]
                elif kind == "progress_state":  # newer hosts: every node's bar in one message
                    values = [s.get("value") for n, s in (data.get("nodes") or {}).items()
                              if str(s.get("display_node_id", n)) == node or str(n) == node]
                with outer.seen:
                    outer.values += [int(v) for v in values if v is not None]
                    outer.seen.notify_all()

        self.listener = Listener(server["port"], self.client_id, {}, quiet=True)
        self.listener.connect()
        self.listener.start()

    def wait_for(self, value: int, timeout: float = 300) -> None:
        with self.seen:
            assert self.seen.wait_for(lambda: any(v >= value for v in self.values), timeout), self.values


@pytest.mark.slow
def test_host_cancel_between_windows_then_resume_equals_uninterrupted_and_cli(server, tmp_path):
    inputs, outputs = base_dir(server) / "input", base_dir(server) / "output"
    scene = crop_geotiff(OSBS, inputs / "osbs_scene.tif", SIDE, SIDE)
    whole = wait_history(server, queue(server, scene_graph(server, "whole")))
    assert whole["status"]["status_str"] == "success", whole["status"]
    # the resumed run: Cancel (POST /interrupt) once the bar shows two finished windows of 16
    progress = Progress(server, "2")
    prompt_id = queue(server, scene_graph(server, "resumed"), progress.client_id)
    progress.wait_for(2)
    status, _ = request_json(server, "POST", "/interrupt", {"prompt_id": prompt_id})
    assert status == 200
    cancelled = wait_history(server, prompt_id)
    kinds = [message[0] for message in cancelled["status"]["messages"]]
    assert "execution_interrupted" in kinds, cancelled["status"]  # stopped, not finished
    assert max(progress.values) < WINDOWS, progress.values
    assert sorted(p.name for p in (outputs / "resumed").iterdir()) == []  # no output, temp file or claim left
    resumed = wait_history(server, queue(server, scene_graph(server, "resumed")))
    assert resumed["status"]["status_str"] == "success", resumed["status"]
    texts = json.dumps(resumed["outputs"])
    assert f"resumed/osbs_scene_x2.tif: {WINDOWS} windows computed" in texts, texts
    pixels, geo = read(outputs / "resumed" / "osbs_scene_x2.tif")
    whole_pixels, whole_geo = read(outputs / "whole" / "osbs_scene_x2.tif")
    assert np.array_equal(pixels, whole_pixels) and geo == whole_geo  # one server: bit for bit
    # the CLI on the same file with the same SR3 file and settings (another process: within one 8-bit level)
    cli_pixels, cli_geo = read(cli_output(scene, server["root"] / "models" / "rsvl" / "sr3" /
                                          server["choices"]["sr3_model"], tmp_path / "cli"))
    assert geo == cli_geo and pixels.shape == cli_pixels.shape == (3, 2 * SIDE, 2 * SIDE)
    difference = np.abs(pixels.astype(int) - cli_pixels.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999, (difference.max(), (difference == 0).mean())
    # queued again: the finished output is not computed again (ComfyUI's cache or the engine's resume)
    again = wait_history(server, queue(server, scene_graph(server, "resumed")))
    assert again["status"]["status_str"] == "success"
    assert read(outputs / "resumed" / "osbs_scene_x2.tif")[0].tobytes() == pixels.tobytes()


@pytest.mark.slow
def test_host_refuses_names_outside_input_at_validation(server, tmp_path):
    inputs = base_dir(server) / "input"
    outside = tmp_path / "secret.tif"
    crop_geotiff(OSBS, outside, 40, 40)
    link = inputs / "escape.tif"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    for name, why in (("../../etc/passwd", "'..' in the path"), (str(outside), "an absolute path"),
                      ("escape.tif", "a symlink that leads out")):
        status, answer = request_json(server, "POST", "/prompt", {"prompt": scene_graph(server, "x", name)})
        assert status == 400, answer
        details = json.dumps(answer["node_errors"]["2"])
        assert "RSVL Upscale Scene" in details and why in details, details
    api = scene_graph(server, "../outside")
    status, answer = request_json(server, "POST", "/prompt", {"prompt": api})
    assert status == 400 and "'..' in the path" in json.dumps(answer["node_errors"]["2"]), answer
    assert not os.path.exists(base_dir(server) / "outside")


@pytest.mark.slow
def test_two_stage_scene_with_the_loader_handles_equals_the_cli(comfy, stand_in, demo_models, tmp_path):
    """Stage 1, the scene's one caption (an overview) and the refiner, from LoadRSVLModels' handles through the job
    engine's windows: the same GeoTIFF as `rsvl upscale` with the same files and settings."""
    models, choices = demo_models
    sr3, captioner, refiner = comfy.node("LoadRSVLModels").execute(
        **choices, dtype="auto", device="auto", llava_quantization="none").args
    crop_geotiff(OSBS, Path(comfy.folder_paths.get_input_directory()) / "osbs_small.tif", 56, 56)
    out = run_node(comfy, {**stand_in, "sr3": sr3}, "two_stage", scene="osbs_small.tif", captioner=captioner,
                   refiner=refiner, refine_steps=2, min_size=0, positive_prompt="sharp", negative_prompt="blur")
    files = {"--stage1-model": models / "rsvl" / "sr3" / choices["sr3_model"],
             "--llava": models / "rsvl" / "llava" / choices["llava_model"],
             "--adapter": models / "rsvl" / "llava_adapter" / choices["llava_adapter"],
             "--sdxl": models / "checkpoints" / choices["sdxl_checkpoint"],
             "--supir": models / "rsvl" / "supir" / choices["supir_model"]}
    from rsvl_core.cli import main

    flags = [flag for flag in CLI_FLAGS if flag != "--stage1-only"]
    argv = ["upscale", str(Path(comfy.folder_paths.get_input_directory()) / "osbs_small.tif"), "-o",
            str(tmp_path / "cli"), *flags, "--refine-steps", "2", "--refine-min-size", "0", "--positive-prompt",
            "sharp", "--negative-prompt", "blur", *(str(x) for pair in files.items() for x in pair)]
    assert main(argv) == 0
    pixels, geo = read(stand_in["output"] / out.args[0])
    cli_pixels, cli_geo = read(tmp_path / "cli" / "osbs_small_x2.tif")
    assert np.array_equal(pixels, cli_pixels) and geo == cli_geo
    record = json.loads((stand_in["output"] / "two_stage" / "osbs_small_x2.json").read_text())
    cli_record = json.loads((tmp_path / "cli" / "osbs_small_x2.json").read_text())
    assert record["windows"]["count"] == cli_record["windows"]["count"] >= 4
    assert record["caption"] == cli_record["caption"] and record["caption_source"] == "scene overview"


def test_core_upscale_model_as_stage_one_equals_the_cli(comfy, stand_in, tmp_path):
    """Core's UPSCALE_MODEL (what Load Upscale Model outputs) as the scene's stage 1: the same GeoTIFF as `rsvl
    upscale --stage1-model` with that file."""
    import spandrel
    import torch
    from rsvl_testing import tiny_esrgan

    weights = tmp_path / "4x_tiny_esrgan.pth"
    torch.save(tiny_esrgan(), weights)
    descriptor = spandrel.ModelLoader().load_from_file(str(weights)).eval()
    out = run_node(comfy, stand_in, "core_model", sr3=None, upscale_model=descriptor, scale="4")
    from rsvl_core.cli import main

    flags = ["--scale", "4", *CLI_FLAGS[2:]]
    assert main(["upscale", str(stand_in["scene"]), "-o", str(tmp_path / "cli"), "--stage1-model", str(weights),
                 *flags]) == 0
    pixels, geo = read(stand_in["output"] / out.args[0])
    cli_pixels, cli_geo = read(tmp_path / "cli" / "osbs_scene_x4.tif")
    assert out.args[0] == "core_model/osbs_scene_x4.tif" and pixels.shape == (3, 4 * SIDE, 4 * SIDE)
    assert np.array_equal(pixels, cli_pixels) and geo == cli_geo
