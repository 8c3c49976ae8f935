"""Stage-1 backends (issue 33): torch channels-last, ncnn and onnxruntime give today's output within the stated
tolerance, through the one call every face uses; absent packages fall back to torch; the benchmark's smoke runs.

Tolerances (values in [0, 1], compared with spandrel's own NCHW float32 call, tiled the same way):
- torch channels-last: 1e-5 (float32 rounding of another kernel order);
- ncnn (Winograd) and onnxruntime: 1/255, the issue's bound (measured ~5e-4 on the tiny models).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from rsvl_testing import tiny_compact, tiny_esrgan

from rsvl_core.stage1 import backends
from rsvl_core.stage1.ncnn_graph import compact_to_ncnn, is_compact
from rsvl_core.stage1.spandrel_sr import SpandrelOptions, load_spandrel_stage1, upscale_spandrel
from rsvl_core.stage1.stage import SpandrelStage1

ROOT = Path(__file__).resolve().parents[2]
LEVEL = 1 / 255
CHANNELS_LAST_TOL = 1e-5
TILED = SpandrelOptions(tile_size=24, tile_overlap=8)  # several tiles, blended: the path a large image takes
HAS_NCNN = backends._installed("ncnn")
HAS_ORT = backends._installed("onnxruntime") and backends._installed("onnx")


def _image(height: int = 40, width: int = 52) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backends")
    paths = {"compact-prelu": root / "compact.pth"}
    torch.save(tiny_compact(), paths["compact-prelu"])
    paths["esrgan"] = root / "esrgan.pth"
    torch.save(tiny_esrgan(), paths["esrgan"])
    return paths


def _reference(path: Path, image: torch.Tensor, options: SpandrelOptions) -> torch.Tensor:
    """Today's output: the same tiling, each tile through spandrel's own NCHW float32 call."""
    model = load_spandrel_stage1(path)
    model.runner = lambda: backends.TileRunner("torch", model.descriptor)  # spandrel's call as it is, NCHW
    out, info = upscale_spandrel(model, image, 4, options)
    assert info["backend"] == "torch"
    return out


@pytest.mark.parametrize("options", [TILED, SpandrelOptions(tile_size=0)], ids=["tiled", "whole"])
def test_channels_last_torch_equals_nchw(files, options):
    image = _image()
    want = _reference(files["esrgan"], image, options)
    model = load_spandrel_stage1(files["esrgan"])
    model.backend = "torch"
    got, info = upscale_spandrel(model, image, 4, options)
    assert info["backend"] == "torch-channels-last"
    assert model.descriptor.model.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert got.shape == (1, 3, 160, 208)
    assert (got - want).abs().max().item() < CHANNELS_LAST_TOL


@pytest.mark.parametrize("backend", ["torch", "ncnn"])
@pytest.mark.parametrize("scale", [4, 2])
@pytest.mark.parametrize("options", [TILED, SpandrelOptions(tile_size=0)], ids=["tiled", "whole"])
def test_backend_output_is_an_ordinary_tensor_of_its_own(files, backend, scale, options):
    # the caller may modify the result in place: not an inference tensor (spandrel's call makes those), and no
    # memory shared with the input; made without a copy of the whole output where the runtime gave a fresh one
    if backend == "ncnn" and not HAS_NCNN:
        pytest.skip("ncnn is not installed (optional extra rsvl[ncnn])")
    image = _image()
    model = load_spandrel_stage1(files["compact-prelu"])
    model.backend = backend
    out, info = upscale_spandrel(model, image, scale, options)
    assert info["backend"] == ("ncnn" if backend == "ncnn" else "torch-channels-last")
    assert out.shape == (1, 3, 40 * scale, 52 * scale) and not out.is_inference()
    before = image.clone()
    out.mul_(0.5)  # refused for an inference tensor
    assert torch.equal(image, before)
    with torch.inference_mode():  # a host that runs nodes in inference mode gets its own kind of tensor
        inside, _ = upscale_spandrel(model, image, scale, options)
    torch.testing.assert_close(inside * 0.5, out, atol=0, rtol=0)


@pytest.mark.skipif(not HAS_NCNN, reason="ncnn is not installed (optional extra rsvl[ncnn])")
@pytest.mark.parametrize("options", [TILED, SpandrelOptions(tile_size=0)], ids=["tiled", "whole"])
def test_ncnn_equals_torch_within_one_level(files, options):
    image = _image()
    want = _reference(files["compact-prelu"], image, options)
    model = load_spandrel_stage1(files["compact-prelu"])  # backend None: auto picks ncnn for a Compact
    got, info = upscale_spandrel(model, image, 4, options)
    assert info["backend"] == "ncnn" and "backend_fallback" not in info
    assert got.shape == want.shape == (1, 3, 160, 208)
    difference = (got - want).abs().max().item()
    assert 0 < difference <= LEVEL, difference  # > 0: really another runtime (another summation order)


@pytest.mark.skipif(not HAS_NCNN, reason="ncnn is not installed (optional extra rsvl[ncnn])")
@pytest.mark.parametrize("activation", [torch.nn.ReLU(), torch.nn.LeakyReLU(0.1)], ids=["relu", "leakyrelu"])
def test_ncnn_takes_every_compact_activation(files, activation):
    # spandrel detects only PReLU Compacts from a file (the others have no activation weights): swap in place
    model = load_spandrel_stage1(files["compact-prelu"])
    body = model.descriptor.model.body
    for index in range(1, len(body) - 1, 2):
        body[index] = activation
    image = _image(20, 28)
    want = backends.TileRunner("torch", model.descriptor).run(image)
    runner = backends.tile_runner(model.descriptor, "ncnn")
    assert runner.backend == "ncnn", runner.fallback
    assert (runner.run(image) - want).abs().max().item() <= LEVEL


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime / onnx are not installed (optional extra rsvl[onnx])")
@pytest.mark.parametrize("name", ["compact-prelu", "esrgan"])
def test_onnxruntime_equals_torch_within_one_level(files, name):
    image = _image()
    want = _reference(files[name], image, TILED)
    model = load_spandrel_stage1(files[name])
    model.backend = "onnxruntime"
    got, info = upscale_spandrel(model, image, 4, TILED)
    assert info["backend"] == "onnxruntime"
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= LEVEL


def test_auto_keeps_torch_for_models_ncnn_does_not_take(files):
    model = load_spandrel_stage1(files["esrgan"])
    _, info = upscale_spandrel(model, _image(16, 16), 4)
    assert info["backend"] == "torch-channels-last" and "backend_fallback" not in info
    model = load_spandrel_stage1(files["esrgan"])
    model.backend = "ncnn"  # asked for explicitly: the record says why it did not run
    _, info = upscale_spandrel(model, _image(16, 16), 4)
    assert info["backend"] == "torch-channels-last" and "Compact networks only" in info["backend_fallback"]


@pytest.mark.parametrize("missing", ["onnxruntime", "ncnn"])
def test_cpu_fallback_when_the_package_is_absent(files, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import onnxruntime` / `import ncnn` now raises ImportError
    image = _image(20, 28)
    want = _reference(files["compact-prelu"], image, TILED)
    model = load_spandrel_stage1(files["compact-prelu"])
    model.backend = "onnxruntime" if missing == "onnxruntime" else "auto"
    got, info = upscale_spandrel(model, image, 4, TILED)
    assert info["backend"] == "torch-channels-last"
    if missing == "onnxruntime":
        assert "not installed" in info["backend_fallback"]
    assert (got - want).abs().max().item() < CHANNELS_LAST_TOL


def test_the_node_path_uses_the_same_backend_and_builds_it_once(files):
    import spandrel

    descriptor = spandrel.ModelLoader().load_from_file(str(files["compact-prelu"])).eval()
    first = SpandrelStage1.from_descriptor(descriptor, "UPSCALE_MODEL")
    second = SpandrelStage1.from_descriptor(descriptor, "UPSCALE_MODEL")  # the node's next run, same model
    result = first.upscale(_image(16, 20), 4, None, 0)
    assert result.record["backend"] == ("ncnn" if HAS_NCNN else "torch-channels-last")
    assert result.image.shape == (1, 3, 64, 80)
    assert first.model.runner() is second.model.runner()


def test_backend_names_are_checked(monkeypatch):
    monkeypatch.setenv(backends.BACKEND_ENV, "tensorrt")
    with pytest.raises(ValueError, match="stage-1 backend must be one of"):
        backends.default_backend()
    monkeypatch.setenv(backends.BACKEND_ENV, "Torch")
    assert backends.default_backend() == "torch"


def test_compact_graph_describes_every_layer(files):
    import spandrel

    descriptor = spandrel.ModelLoader().load_from_file(str(files["compact-prelu"]))
    assert is_compact(descriptor.model)
    param, weights = compact_to_ncnn(descriptor.model)
    lines = param.splitlines()
    layers, blobs = map(int, lines[1].split())
    assert lines[0] == "7767517" and layers == len(lines) - 2
    body = descriptor.model.body
    assert sum(line.startswith("Convolution") for line in lines) == sum(isinstance(m, torch.nn.Conv2d) for m in body)
    # float32 weights + biases (+ one 4-byte tag per convolution) + PReLU slopes, nothing else
    floats = sum(p.numel() for p in descriptor.model.parameters())
    assert len(weights) == 4 * floats + 4 * (len(body) // 2 + 1)
    assert blobs == layers + 1  # every layer has one output, the Split two
    assert not is_compact(spandrel.ModelLoader().load_from_file(str(files["esrgan"])).model)


def test_benchmark_smoke_prints_the_table(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "stage1_models.py"), "--smoke", "--threads",
                             "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    data = json.loads((tmp_path / "stage1_models.json").read_text())
    runners = {row["runner"]: row for row in data["cpu"]}
    assert {"rsvl-cli", "rsvl-node", "spandrel"} <= set(runners)
    assert min(row["ratio"] for row in data["cpu"]) == 1.0
    assert all(row["cpu_s"] > 0 and row["rss_mib"] > 0 for row in data["cpu"])
    assert all(row["max_levels"] <= 1 for row in data["cpu"])  # every runner within one level of fp32
    assert runners["rsvl-cli"]["backend"] == ("ncnn" if HAS_NCNN else "torch-channels-last")
    assert "| compact | rsvl-cli |" in (tmp_path / "stage1_models.md").read_text()


# rsvl's own Compact (stage1/compact.py): spandrel is not imported for it, and it computes what spandrel's does
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_backend_own_compact_equals_spandrels_bit_for_bit(scale):
    from spandrel.architectures.Compact import Compact

    from rsvl_core.stage1.compact import compact_layout, load_compact

    state = tiny_compact(scale=scale, num_conv=3)
    assert compact_layout(state).__dict__ == {"channels": 3, "features": 8, "convs": 3, "scale": scale}
    ours = load_compact(state)
    theirs = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=scale)
    theirs.load_state_dict(state)
    assert sorted(ours.model.state_dict()) == sorted(theirs.state_dict())
    assert ours.purpose == ("SR" if scale > 1 else "Restoration") and ours.scale == scale
    image = _image(19, 23)
    with torch.inference_mode():
        want = theirs.eval()(image).clamp(0, 1)
    assert torch.equal(ours(image), want)


def test_backend_compact_detection_takes_exactly_the_layout():
    from rsvl_core.stage1.compact import compact_layout, is_compact_state

    state = tiny_compact()
    assert is_compact_state(state)
    assert not is_compact_state({**state, "extra.weight": torch.zeros(1)})  # another key: not ours to judge
    assert not is_compact_state({k: v for k, v in state.items() if k != "body.1.weight"})  # no PReLU slopes
    assert not is_compact_state({**state, "body.2.weight": torch.zeros(8, 8, 5, 5)})  # not 3x3
    last = max(int(k.split(".")[1]) for k in state)
    odd = {**state, f"body.{last}.weight": torch.zeros(40, 8, 3, 3), f"body.{last}.bias": torch.zeros(40)}
    assert compact_layout(odd) is None  # 40 = 3 x 13.3: no integer scale (spandrel's registry decides)
    assert not is_compact_state(tiny_esrgan())


def test_backend_a_compact_run_imports_neither_spandrel_nor_torchvision(tmp_path):
    # spandrel's registry imports torchvision and with it torch's compiler: about a second of CPU per process
    from PIL import Image

    model = tmp_path / "compact.pth"
    torch.save({"params": tiny_compact()}, model)
    Image.new("RGB", (24, 20), (90, 120, 60)).save(tmp_path / "in.png")
    code = ("import sys; from rsvl_core.cli import main; "
            f"code = main(['upscale', {str(tmp_path / 'in.png')!r}, '--stage1-model', {str(model)!r}, '--scale', '4',"
            f" '--stage1-only', '-o', {str(tmp_path / 'out')!r}]); "
            "print('loaded', sorted({'spandrel', 'torchvision'} & set(sys.modules))); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded []" in result.stdout
    assert Image.open(tmp_path / "out" / "in_x4.png").size == (96, 80)


def test_backend_console_exit_keeps_code_atexit_handlers_and_unflushed_output(tmp_path):
    # `rsvl` ends with os._exit (no interpreter teardown): what a normal exit does must still happen
    code = ("import atexit, sys; from rsvl_core.cli import console; "
            "atexit.register(lambda: print('atexit ran', end='')); "
            "sys.stdout.write('buffered '); "
            f"sys.argv = ['rsvl', 'upscale', {str(tmp_path / 'missing.png')!r}, '-o', {str(tmp_path / 'out')!r}]; "
            "console()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stdout.endswith("buffered atexit ran")
    assert "missing.png" in result.stderr


def test_speed_console_startup_runs_no_collection_and_freezes_what_it_imported(tmp_path):
    # a full collection walks all of torch's objects: startup (torch and ours imported) runs with the collector
    # paused, then its objects are frozen and collection resumes for the run; numpy's BLAS threads do not spin
    from PIL import Image

    model = tmp_path / "compact.pth"
    torch.save({"params": tiny_compact()}, model)
    Image.new("RGB", (24, 20), (90, 120, 60)).save(tmp_path / "in.png")
    code = ("import gc, os, sys; from rsvl_core import cli; seen = []; print('numpy early', 'numpy' in sys.modules); "
            "gc.callbacks.append(lambda phase, info: seen.append(info['generation']) if phase == 'stop' else None); "
            "dispatch = cli.dispatch; "
            "cli.dispatch = lambda args: (print('at dispatch', len(seen), gc.isenabled(), gc.get_freeze_count(), "
            "'torch' in sys.modules, os.environ.get('OPENBLAS_THREAD_TIMEOUT')), dispatch(args))[1]; "
            f"sys.argv = ['rsvl', 'upscale', {str(tmp_path / 'in.png')!r}, '--stage1-model', {str(model)!r}, "
            f"'--scale', '4', '--stage1-only', '-o', {str(tmp_path / 'out')!r}]; "
            "cli.console()")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "numpy early False" in result.stdout  # OpenBLAS reads its setting as numpy loads: after console's start
    line = next(x for x in result.stdout.splitlines() if x.startswith("at dispatch")).split()
    collections, enabled, frozen, torch_loaded, blas_timeout = int(line[2]), line[3], int(line[4]), line[5], line[6]
    assert (collections, enabled, torch_loaded, blas_timeout) == (0, "True", "True", "4")
    assert frozen > 100_000  # torch's objects, at least
    assert Image.open(tmp_path / "out" / "in_x4.png").size == (96, 80)
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**env, "OPENBLAS_THREAD_TIMEOUT": "12"})  # the user's setting is kept
    assert mine.returncode == 0, mine.stderr[-2000:]
    assert next(x for x in mine.stdout.splitlines() if x.startswith("at dispatch")).endswith(" True 12")
    # `main` called in-process (tests, embedding code) leaves the collector as it found it
    direct = ("import gc; from rsvl_core.cli import main; "
              f"code = main(['upscale', {str(tmp_path / 'missing.png')!r}, '-o', {str(tmp_path / 'out2')!r}]); "
              "print(code, gc.isenabled(), gc.get_freeze_count())")
    assert subprocess.run([sys.executable, "-c", direct], capture_output=True, text=True, timeout=300,
                          cwd=ROOT).stdout.split() == ["2", "True", "0"]


def test_speed_png_is_written_run_length_at_level_4_lossless_and_no_larger(tmp_path, monkeypatch):
    import io

    import numpy as np
    from PIL import Image

    from rsvl_core.kit import image as kit_image

    array = np.random.default_rng(0).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    path = kit_image.write_array_atomic(array, tmp_path / "x.png")
    assert np.array_equal(np.asarray(Image.open(path)), array)
    data = path.read_bytes()
    idat = data.index(b"IDAT") + 4
    # zlib header FLEVEL: 0 = run-length or Huffman-only strategy (or level 0-1); level 4's default strategy writes 1
    assert data[idat + 1] >> 6 == 0
    assert zlib.decompress(data[idat:data.index(b"IEND") - 8])  # one IDAT chunk: a complete zlib stream

    saved = []
    original_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, format=None, **options: (
        saved.append((format, options)), original_save(self, fp, format, **options))[1])
    aerial = ROOT / "rsvl_core" / "samples" / "osbs_029_lr100.png"
    if (ROOT.parent / "shared" / "data" / "SOAP_031.png").is_file():
        aerial = ROOT.parent / "shared" / "data" / "SOAP_031.png"
    photo = np.asarray(Image.open(aerial).convert("RGB"))
    ours = kit_image.write_array_atomic(photo, tmp_path / "aerial.png").stat().st_size
    assert saved[-1] == ("PNG", {"compress_level": 4, "compress_type": zlib.Z_RLE})
    assert kit_image.write_array_atomic(photo, tmp_path / "aerial.jpg") and saved[-1] == ("JPEG", {})
    default_strategy = io.BytesIO()
    original_save(Image.fromarray(photo), default_strategy, "PNG", compress_level=4)
    assert ours <= 1.01 * len(default_strategy.getvalue()), (ours, len(default_strategy.getvalue()))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "aerial.png")), photo)
