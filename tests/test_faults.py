"""`rsvl upscale` under faults: the output location, a full disk, kill -9, odd names, concurrent runs, bad files.

Each fault gives one line naming the file or folder (no traceback), leaves no temporary or half-finished
output behind, and a rerun finishes exactly what is missing.
"""

from __future__ import annotations

import errno
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
from rsvl_testing import REPO, tiny_sr3_config

from rsvl_core.cli import main
from rsvl_core.stage1 import SR3UNet, save_sr3

FAST = ["--sampler", "ddim", "--steps", "2", "-q", "--stage1-only", "--scale", "2"]


@pytest.fixture
def models_dir(tmp_path):
    folder = tmp_path / "models"
    save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32)), folder / "sr3" / "I9_E9_gen.pth")
    return folder


def write_inputs(folder: Path, names: list[str], size: tuple[int, int] = (12, 10)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def complete_outputs(folder: Path) -> list[str]:
    """Images whose run record is there and names them."""
    done = []
    for image in sorted(folder.glob("*.png")):
        sidecar = image.with_suffix(".json")
        if sidecar.is_file() and json.loads(sidecar.read_text())["image"] == image.name:
            done.append(image.name)
    return done


def no_model_loads(monkeypatch):
    """Fail the test if any stage-1 model is loaded (the output checks must come first)."""
    import rsvl_core.stage1 as stage1

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output location was checked")

    monkeypatch.setattr(stage1, "load_stage1", refuse)


@pytest.mark.parametrize("where", ["a_file", "under_a_file", "sysfs", "sysfs_existing"])
def test_fault_unusable_output_location_is_one_line_before_any_model_loads(where, models_dir, tmp_path, capsys,
                                                                           monkeypatch):
    inputs = write_inputs(tmp_path / "in", ["a.png"])
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("not a folder")
    # /sys: a file system that refuses new files even to root (CI runs as root, where chmod 0555 stops nothing)
    output = {"a_file": blocker, "under_a_file": blocker / "sub", "sysfs": Path("/sys/rsvl_fault_test"),
              "sysfs_existing": Path("/sys")}[where]
    if where.startswith("sysfs") and (not Path("/sys").is_dir() or _sysfs_writable()):
        pytest.skip("no unwritable /sys on this machine")
    no_model_loads(monkeypatch)
    assert main(["upscale", str(inputs), "-o", str(output), "--models-dir", str(models_dir), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: output folder {output}: cannot write there (") and err.count("\n") == 1
    assert "Traceback" not in err


def _sysfs_writable() -> bool:
    try:
        os.mkdir("/sys/rsvl_fault_probe")
    except OSError:
        return False
    os.rmdir("/sys/rsvl_fault_probe")
    return True


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("at", ["image", "record"])
def test_fault_full_disk_stops_cleanly_and_a_rerun_completes(at, models_dir, tmp_path, capsys, monkeypatch):
    inputs = write_inputs(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "out"
    args = ["upscale", str(inputs), "-o", str(out), "--models-dir", str(models_dir), *FAST]
    real_save, real_write_text = Image.Image.save, Path.write_text

    def save(self, fp, *a, **k):  # b's image: some bytes reach the temp file, then the disk is full
        if Path(fp).name.startswith(".b_x2."):
            Path(fp).write_bytes(b"\x89PNG partial")
            _enospc()
        return real_save(self, fp, *a, **k)

    def write_text(self, data, *a, **k):  # b's run record, after its image was written
        if self.name.startswith(".b_x2.") and self.name.endswith(".json.tmp"):
            real_write_text(self, data[:10], *a, **k)
            _enospc()
        return real_write_text(self, data, *a, **k)

    if at == "image":
        monkeypatch.setattr(Image.Image, "save", save)
    else:
        monkeypatch.setattr(Path, "write_text", write_text)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "stopped with 1 output(s) complete" in err
    assert "Traceback" not in err
    assert leftovers(out) == [] and complete_outputs(out) == ["a_x2.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["a_x2.png"]  # no image without its record
    monkeypatch.undo()
    before = (out / "a_x2.png").stat().st_mtime_ns
    assert main(args) == 0
    assert complete_outputs(out) == ["a_x2.png", "b_x2.png", "c_x2.png"] and leftovers(out) == []
    assert (out / "a_x2.png").stat().st_mtime_ns == before  # what was complete is not redone


def test_fault_an_image_without_its_record_is_redone(models_dir, tmp_path):
    inputs = write_inputs(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    args = ["upscale", str(inputs), "-o", str(out), "--models-dir", str(models_dir), *FAST]
    assert main(args) == 0
    (out / "a_x2.json").unlink()
    (out / "a_x2.png").write_bytes(b"stale")
    assert main(args) == 0
    assert complete_outputs(out) == ["a_x2.png"] and Image.open(out / "a_x2.png").size == (24, 20)


def test_fault_non_utf8_name_and_same_stem_pair_are_all_processed(models_dir, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["a.png", "a.jpg"])
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    Image.open(inputs / "a.png").save(inputs / odd)
    out = tmp_path / "out"
    assert main(["upscale", str(inputs), "-o", str(out), "--models-dir", str(models_dir), *FAST]) == 0
    names = sorted(os.fsencode(p.name) for p in out.glob("*.png"))
    assert names == [b"a_jpg_x2.png", b"a_png_x2.png", b"caf\xe9_x2.png"]
    record = json.loads((out / os.fsdecode(b"caf\xe9_x2.json")).read_bytes().decode("utf-8"))
    assert record["input"]["file"] == "caf\\xe9.png"  # readable, and exact:
    assert bytes.fromhex(record["input"]["file_bytes_hex"]) == b"caf\xe9.png"
    assert "3 written" in capsys.readouterr().err


def test_fault_stale_temporaries_of_a_killed_run_are_removed_and_live_ones_kept(models_dir, tmp_path):
    inputs = write_inputs(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = __import__("rsvl_core.kit.atomic", fromlist=["_HOST"])._HOST
    stale = out / f".OSBS_029_x2.rsvl-{host}-{int(dead.stdout)}.abcd.tif.tmp"
    live = out / f".b_x2.rsvl-{host}-{os.getpid()}.efgh.png.tmp"
    foreign = out / ".notes.txt"
    for path in (stale, live, foreign):
        path.write_bytes(b"x")
    assert main(["upscale", str(inputs), "-o", str(out), "--models-dir", str(models_dir), *FAST]) == 0
    assert not stale.exists() and live.exists() and foreign.exists()


def _run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rsvl_core", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _finish(run: subprocess.Popen, timeout: float = 400) -> str:
    """Wait for a run and return its stderr; a run still going at the timeout is killed, not left behind."""
    try:
        return run.communicate(timeout=timeout)[1]
    finally:
        run.kill()


def _stage1_args(inputs: Path, out: Path, models_dir: Path, steps: int) -> list[str]:
    """A stage-1-only run at 2x with the fast sampler: long enough to be interrupted or raced."""
    return ["upscale", str(inputs), "-o", str(out), "--models-dir", str(models_dir), "--sampler", "ddim",
            "--steps", str(steps), "-q", "--stage1-only", "--scale", "2"]


@pytest.mark.slow
def test_fault_kill_9_mid_run_then_rerun_completes_without_redoing(models_dir, tmp_path):
    inputs = write_inputs(tmp_path / "in", [f"{i}.png" for i in range(6)], size=(40, 32))
    out = tmp_path / "out"
    args = _stage1_args(inputs, out, models_dir, 30)
    run = _run_cli(args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(complete_outputs(out) if out.is_dir() else []) < 2:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    done = {name: (out / name).stat().st_mtime_ns for name in complete_outputs(out)}
    assert 2 <= len(done) < 6
    rerun = _run_cli(args)
    err = _finish(rerun)
    assert rerun.returncode == 0, err
    assert complete_outputs(out) == [f"{i}_x2.png" for i in range(6)]
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in done.items())
    assert leftovers(out) == []


@pytest.mark.slow
def test_fault_two_concurrent_runs_split_the_work(models_dir, tmp_path):
    inputs = write_inputs(tmp_path / "in", [f"{i}.png" for i in range(8)], size=(40, 32))
    out = tmp_path / "out"
    args = _stage1_args(inputs, out, models_dir, 20)
    runs = [_run_cli(args), _run_cli(args)]
    try:
        errs = [_finish(run) for run in runs]
    finally:  # the first one timing out must not leave the second behind
        for run in runs:
            run.kill()
    assert [run.returncode for run in runs] == [0, 0], errs
    written = [int(err.strip().splitlines()[-1].split()[0]) for err in errs]
    assert sum(written) == 8  # each output computed exactly once
    assert complete_outputs(out) == sorted(f"{i}_x2.png" for i in range(8)) and leftovers(out) == []


def test_fault_a_models_dir_that_does_not_exist_is_an_error(tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["a.png"])
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--models-dir", str(tmp_path / "modles"),
                 *FAST]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: --models-dir {tmp_path / 'modles'}: no such folder")


def test_fault_caption_with_stage1_only_is_refused(models_dir, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in", ["a.png"])
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--models-dir", str(models_dir), *FAST,
                 "--caption", "fields"]) == 2
    assert "--caption has no effect with --stage1-only" in capsys.readouterr().err


def test_fault_weights_check_refuses_a_code_pickle_as_loading_does(tmp_path, capsys):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    models = tmp_path / "models"
    (models / "sr3").mkdir(parents=True)
    torch.save({"denoise_fn.x": torch.zeros(1), "evil": Evil()}, models / "sr3" / "I1_E1_gen.pth")
    assert main(["weights", "check", "--models-dir", str(models), "--sr3", str(models / "sr3" / "I1_E1_gen.pth")]) == 1
    out = capsys.readouterr()
    assert "never executes pickled code" in out.out + out.err
    inputs = write_inputs(tmp_path / "in", ["a.png"])
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--models-dir", str(models), *FAST]) == 2
    assert "never executes pickled code" in capsys.readouterr().err and "weights_only" not in out.err


def test_fault_plain_16bit_and_float_tiffs_are_stretched_not_black_or_clipped(models_dir, tmp_path, capsys):
    pytest.importorskip("rasterio", reason='rasterio is not installed (pip install "rsvl[geo]")')
    import rasterio

    from rsvl_core.scenes.sources import open_scene

    rng = np.random.default_rng(1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = {"dn16.tif": rng.integers(200, 4000, (3, 10, 12)).astype(np.uint16),  # a sensor's 12-bit counts
             "refl.tif": rng.uniform(0.0, 3.0, (3, 10, 12)).astype(np.float32)}    # values above 1
    import warnings

    for name, data in cases.items():
        with warnings.catch_warnings():  # written without georeferencing on purpose
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(inputs / name, "w", driver="GTiff", width=12, height=10, count=3,
                               dtype=data.dtype) as dst:
                dst.write(data)
    for name in cases:
        scene = open_scene(inputs / name)
        image = scene.whole()
        assert 0.3 < float(image.mean()) < 0.7, name  # 16-bit: not its high byte (near black); float: not clipped
        assert any("percentile" in note for note in scene.notes), scene.notes
    out = tmp_path / "out"
    assert main(["upscale", str(inputs), "-o", str(out), "--models-dir", str(models_dir), *FAST]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["dn16_x2.png", "refl_x2.png"]  # plain TIFF in, image out
    assert "NotGeoreferencedWarning" not in capsys.readouterr().err
    clipped = open_scene(inputs / "refl.tif", stretch="none", geotiff=True)
    assert any(note.startswith("warning: ") and "clipped" in note for note in clipped.notes), clipped.notes


def test_fault_exif_rotated_jpeg_is_processed_upright(tmp_path):
    from rsvl_core.kit.image import read_image

    upright = np.zeros((10, 16, 3), np.uint8)
    upright[:, :8] = 255  # left half white
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_270)  # stored rotated, 10 wide
    exif = Image.Exif()
    exif[0x0112] = 8  # the viewer turns it 90 degrees counter-clockwise: the camera was held sideways
    sideways.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    image, notes = read_image(tmp_path / "photo.jpg")
    assert image.shape[-2:] == (10, 16) and "rotated upright by its EXIF orientation" in notes
    assert float(image[0, :, :, :8].mean()) > 0.9 > 0.1 > float(image[0, :, :, 8:].mean())


def test_fault_demo_models_are_readable_like_any_file(tmp_path):
    from rsvl_core.demo import write_demo_models

    umask = os.umask(0o022)
    try:
        write_demo_models(tmp_path / "m")
    finally:
        os.umask(umask)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in (tmp_path / "m").rglob("*")
             if p.is_file()}
    assert modes and {mode for mode in modes.values()} == {0o644}, modes


def test_fault_top_level_help_does_not_import_torch():
    code = ("import sys\nfrom rsvl_core.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "upscale" in done.stdout and done.stdout.strip().endswith("False"), done.stdout + done.stderr


@pytest.mark.slow
def test_fault_kill_9_mid_windowed_geotiff_then_rerun_completes(tmp_path):
    pytest.importorskip("rasterio", reason='rasterio is not installed (pip install "rsvl[geo]")')
    scene = REPO.parent / "shared" / "data" / "OSBS_029.tif"
    if not scene.is_file():
        pytest.skip(f"shared sample {scene} not found")
    models_dir = tmp_path / "models"  # no attention: 25 windows in seconds (attention at 96 px is the slow part)
    save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32, attention_levels=())),
             models_dir / "sr3" / "I9_E9_gen.pth")
    from test_cli_geotiff import crop_geotiff

    scene = crop_geotiff(scene, tmp_path / "OSBS_029.tif", 200, 160)  # georeferenced: 12 windows of 64 px
    out = tmp_path / "out"
    args = [*_stage1_args(scene, out, models_dir, 4), "--window-size", "64", "--window-overlap", "8"]
    run = _run_cli(args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not [p for p in (out.iterdir() if out.is_dir() else [])
                                               if p.name.endswith(".tif.tmp")]:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)  # its output is being written window by window: killed mid-scene
    run.wait()
    assert [p.name for p in out.iterdir() if p.name.endswith(".tif.tmp")]  # the killed run left its temp file
    assert not (out / "OSBS_029_x2.tif").exists()
    rerun = _run_cli(args)
    err = _finish(rerun)
    assert rerun.returncode == 0, err
    assert leftovers(out) == [] and (out / "OSBS_029_x2.tif").is_file() and (out / "OSBS_029_x2.json").is_file()
