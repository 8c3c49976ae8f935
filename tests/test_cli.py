"""The `rsvl` command line on tiny weights written in the real layout (what `rsvl demo` writes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rsvl_testing import REPO, SAMPLE_IMAGE, tiny_sr3_config

from rsvl_core.cli import main
from rsvl_core.demo import write_demo_models
from rsvl_core.refine.tiny import write_tiny_refiner_files
from rsvl_core.stage1 import SR3UNet, save_sr3

FAST = ["--sampler", "ddim", "--steps", "3", "-q", "--stage1-only"]


@pytest.fixture
def models_dir(tmp_path):
    folder = tmp_path / "models"
    save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32)), folder / "sr3" / "I9_E9_gen.pth")
    return folder


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (9, 6), dtype=np.uint8)).save(folder / "gray.jpg")
    return folder


def png_size(path):
    with Image.open(path) as img:
        return img.size


def test_upscale_folder_writes_exact_sizes_and_skips_existing(models_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["upscale", str(inputs), "--output", str(out), "--scale", "4", "--models-dir", str(models_dir), *FAST]
    assert main(args) == 0
    assert png_size(out / "wide_x4.png") == (56, 40)
    assert png_size(out / "gray_x4.png") == (24, 36)
    err = capsys.readouterr().err
    assert "gray.jpg: grayscale replicated to RGB" in err
    assert "2 written, 0 skipped" in err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind
    before = (out / "wide_x4.png").stat().st_mtime_ns
    assert main(args) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().err
    assert (out / "wide_x4.png").stat().st_mtime_ns == before
    assert main([*args, "--overwrite"]) == 0
    assert "2 written" in capsys.readouterr().err


def test_seed_compatible_aliases_and_explicit_checkpoint(models_dir, inputs, tmp_path):
    out = tmp_path / "seedstyle"
    ckpt = models_dir / "sr3" / "I9_E9_gen.pth"
    code = main(["upscale", "--input_img", str(inputs / "wide.png"), "--save_dir", str(out), "--upscale", "2",
                 "--sr3", str(ckpt), *FAST])
    assert code == 0 and png_size(out / "wide_x2.png") == (28, 20)
    code = main(["upscale", "--image_dir", str(inputs), "--save_dir", str(out), "--upscale", "8",
                 "--models-dir", str(models_dir), *FAST])
    assert code == 0 and png_size(out / "gray_x8.png") == (48, 72)


def test_models_dir_from_environment(models_dir, inputs, tmp_path, monkeypatch):
    """$RSVL_MODELS_DIR wins over ./models, which holds other (valid) weights here."""
    local = tmp_path / "cwd"
    save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32)), local / "models" / "sr3" / "local_gen.pth")
    monkeypatch.chdir(local)
    monkeypatch.setenv("RSVL_MODELS_DIR", str(models_dir))
    assert main(["upscale", str(inputs / "wide.png"), "-o", str(tmp_path / "o"), "--scale", "2", *FAST]) == 0
    used = json.loads((tmp_path / "o" / "wide_x2.json").read_text())["models"]["stage1"][0]["path"]
    assert Path(used) == models_dir / "sr3" / "I9_E9_gen.pth"
    monkeypatch.delenv("RSVL_MODELS_DIR")
    assert main(["upscale", str(inputs / "wide.png"), "-o", str(tmp_path / "o2"), "--scale", "2", *FAST]) == 0
    used = json.loads((tmp_path / "o2" / "wide_x2.json").read_text())["models"]["stage1"][0]["path"]
    assert Path(used).name == "local_gen.pth"  # without the variable, ./models is used


def test_missing_weights_say_what_where_and_how(inputs, tmp_path, capsys):
    empty = tmp_path / "nomodels"
    empty.mkdir()
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--models-dir", str(empty), *FAST])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "SR3 weights not found" in err and str(empty / "sr3") in err
    assert "--sr3 PATH" in err and "RSVL_MODELS_DIR" in err and "_gen.pth" in err
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--sr3", str(tmp_path / "x.pth"), *FAST])
    assert code == 2 and "--sr3" in capsys.readouterr().err


def test_wrong_checkpoint_is_one_line(inputs, tmp_path, capsys):
    bad = tmp_path / "sdxl.safetensors"
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2)}, str(bad))
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--sr3", str(bad), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(bad) in err and "SDXL" in err and "\n" not in err


def test_one_bad_file_does_not_stop_the_folder(models_dir, inputs, tmp_path, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (inputs / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["upscale", str(inputs), "-o", str(out), "--scale", "2", "--models-dir", str(models_dir), *FAST])
    assert code == 1
    err = capsys.readouterr().err
    assert "2 written, 0 skipped (already exist; --overwrite replaces), 2 failed" in err
    assert "broken.png: not a readable image" in err and "empty.tif: file is empty" in err
    assert sorted(p.name for p in out.iterdir()) == ["gray_x2.json", "gray_x2.png", "wide_x2.json", "wide_x2.png"]


def test_bad_options_and_inputs(models_dir, tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path), "--models-dir", str(models_dir)]) == 2
    assert "missing.png: input not found" in capsys.readouterr().err
    assert main(["upscale", str(SAMPLE_IMAGE), "-o", str(tmp_path), "--tile-size", "8",
                 "--models-dir", str(models_dir)]) == 2
    assert "tile_size must be 0 (no tiling) or >= 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["upscale", str(SAMPLE_IMAGE), "-o", str(tmp_path), "--scale", "3"])


def test_demo_models_are_laid_out_like_real_weights(tmp_path, capsys):
    written = write_demo_models(tmp_path / "m")
    assert written["sr3"] == tmp_path / "m" / "sr3" / "rsvl_demo_sr3_gen.pth"
    assert not list((tmp_path / "m" / "sr3").glob("*.json"))  # like the released gen.pth: no config
    out = tmp_path / "o"
    assert main(["upscale", str(SAMPLE_IMAGE), "-o", str(out), "--scale", "2",
                 "--models-dir", str(tmp_path / "m"), *FAST]) == 0
    assert png_size(out / "osbs_029_lr100_x2.png") == (200, 200)


def test_demo_in_process_on_a_small_input(tmp_path, capsys):
    """`rsvl demo --input`: the whole demo path (tiny models written, stage 1, caption, refiner) on a 24x16 crop."""
    small = tmp_path / "small.png"
    Image.open(SAMPLE_IMAGE).convert("RGB").crop((0, 0, 24, 16)).save(small)
    assert main(["demo", "--input", str(small), "--models-dir", str(tmp_path / "m"), "-o", str(tmp_path / "o"),
                 "-q"]) == 0
    assert "RANDOM weights" in capsys.readouterr().err
    check_demo_result(tmp_path, "small_x4", (96, 64))


def check_demo_result(tmp_path: Path, name: str, size: tuple[int, int]) -> None:
    """The demo's output in tmp_path/o (exact size, a caption, 8 refiner steps) and its models in tmp_path/m."""
    assert png_size(tmp_path / "o" / f"{name}.png") == size
    sidecar = json.loads((tmp_path / "o" / f"{name}.json").read_text())
    assert sidecar["caption_source"] == "captioner" and sidecar["caption"].strip()
    assert sidecar["refine"]["unet_calls"] == 8  # the demo ran the refiner (8 steps)
    for part in ("sr3/rsvl_demo_sr3_gen.pth", "llava/config.json", "llava_adapter/adapter_config.json",
                 "sdxl/rsvl_demo_sdxl.safetensors", "supir/rsvl_demo_supir.safetensors"):
        assert (tmp_path / "m" / part).is_file(), part


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("rsvl") is None, reason="the rsvl console script is not installed (pip install -e .)")
def test_console_script_demo_end_to_end(tmp_path):
    result = subprocess.run(["rsvl", "demo", "--models-dir", str(tmp_path / "m"), "-o", str(tmp_path / "o"), "-q"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stderr and "demo passed" in result.stderr
    check_demo_result(tmp_path, "osbs_029_lr100_x4", (400, 400))


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "rsvl_core", "upscale", "--help"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0
    for flag in ("--input_img", "--image_dir", "--save_dir", "--upscale", "--models-dir", "--sr3", "--stage1-only",
                 "--overwrite"):
        assert flag in result.stdout


FULL = ["--sampler", "ddim", "--steps", "2", "--refine-steps", "2", "--refine-min-size", "0", "-q"]


def test_upscale_captions_between_the_stages(tmp_path, capsys):
    models = tmp_path / "models"
    write_demo_models(models)
    out = tmp_path / "out"
    args = ["upscale", str(SAMPLE_IMAGE), "-o", str(out), "--scale", "2", "--models-dir", str(models),
            "--caption-max-tokens", "6", *FULL]
    assert main(args) == 0
    first = json.loads((out / "osbs_029_lr100_x2.json").read_text())
    assert first["caption_source"] == "captioner" and first["caption"].strip() and first["seed"] == 0
    assert main([*args, "--overwrite"]) == 0  # same seed: same caption
    assert json.loads((out / "osbs_029_lr100_x2.json").read_text())["caption"] == first["caption"]
    # a given caption replaces the captioner
    assert main([*args, "--overwrite", "--caption", "a road through pine forest"]) == 0
    given = json.loads((out / "osbs_029_lr100_x2.json").read_text())
    assert given["caption"] == "a road through pine forest" and given["caption_source"] == "given"
    # stage 1 alone writes no caption
    assert main(["upscale", str(SAMPLE_IMAGE), "-o", str(tmp_path / "s1"), "--scale", "2", "--models-dir",
                 str(models), "--stage1-only", *FULL]) == 0
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == ["osbs_029_lr100_x2.json", "osbs_029_lr100_x2.png"]
    stage1_record = json.loads((tmp_path / "s1" / "osbs_029_lr100_x2.json").read_text())
    assert stage1_record["caption"] is None and "refine" not in stage1_record
    assert set(stage1_record["seconds"]) == {"stage1"} and stage1_record["models"]["stage1"][0]["bytes"] > 0


def test_upscale_without_captioner_weights_says_how_to_skip(models_dir, inputs, tmp_path, capsys):
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--models-dir", str(models_dir), *FULL])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "captioner weights not found" in err and str(models_dir / "llava") in err
    assert "--caption TEXT" in err and "--stage1-only" in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # refused before any work
    # with a caption given, the refiner's weights are the next thing missing, with the same advice
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--models-dir", str(models_dir),
                 "--caption", "fields", *FULL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "refiner SDXL weights not found" in err and str(models_dir / "sdxl") in err
    assert "--stage1-only" in err and "rsvl demo" in err and not (tmp_path / "o").exists()
    write_tiny_refiner_files(models_dir / "sdxl", models_dir / "supir")
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--models-dir", str(models_dir),
                 "--caption", "fields", *FULL]) == 0
    sidecar = json.loads((tmp_path / "o" / "wide_x8.json").read_text())
    assert sidecar["caption"] == "fields" and sidecar["settings"]["refine"]["sampler"]["steps"] == 2
    assert png_size(tmp_path / "o" / "wide_x8.png") == (14 * 8, 10 * 8)  # both stages, exact size


def test_upscale_runs_the_refiner_after_stage1(tmp_path):
    """Without --stage1-only the refiner changes the stage-1 image; the output size stays input x scale."""
    models = tmp_path / "models"
    write_demo_models(models)
    base = ["upscale", str(SAMPLE_IMAGE), "--scale", "2", "--models-dir", str(models), "--sampler", "ddim",
            "--steps", "2", "-q"]
    assert main([*base, "-o", str(tmp_path / "s1"), "--stage1-only"]) == 0
    assert main([*base, "-o", str(tmp_path / "s2"), "--caption", "pine forest", "--refine-steps", "3",
                 "--refine-min-size", "0"]) == 0
    stage1 = np.asarray(Image.open(tmp_path / "s1" / "osbs_029_lr100_x2.png"), dtype=np.float32)
    refined = np.asarray(Image.open(tmp_path / "s2" / "osbs_029_lr100_x2.png"), dtype=np.float32)
    assert refined.shape == stage1.shape == (200, 200, 3)
    assert np.abs(refined - stage1).mean() > 1.0  # the refiner ran (random weights change the image)
    record = json.loads((tmp_path / "s2" / "osbs_029_lr100_x2.json").read_text())
    assert record["refine"]["working_size"] == [192, 192] and record["refine"]["unet_calls"] == 3
    # the tile sizes used (TileFit: smaller than asked only after running out of memory)
    assert record["stage1"]["tiling"] == {"tile_size": 224, "tile_overlap": 32, "requested_tile_size": 224,
                                          "out_of_memory_at": []}
    assert set(record["refine"]["tiling"]) == {"latent", "vae_encode", "vae_decode"}
    assert record["refine"]["tiling"]["latent"]["tile_size"] == 128


def test_upscale_refiner_cache_is_reported_in_the_sidecar(tmp_path, capsys):
    models = tmp_path / "models"
    write_demo_models(models)
    out = tmp_path / "out"
    assert main(["upscale", str(SAMPLE_IMAGE), "-o", str(out), "--scale", "2", "--models-dir", str(models),
                 "--caption", "fields", "--sampler", "ddim", "--steps", "2", "--refine-steps", "8",
                 "--refine-min-size", "0", "--cache", "fast", "--cache-threshold", "100"]) == 0
    record = json.loads((out / "osbs_029_lr100_x2.json").read_text())["refine"]
    # fast: never within the first 3 / last 2 steps, at most 3 reuses in a row
    assert record["cache"] == {"mode": "fast", "computed_steps": [0, 1, 2, 6, 7], "reused_steps": [3, 4, 5],
                               "summary": "5/8 steps computed, 3 reused (3, 4, 5)"}
    assert record["unet_calls"] == record["control_calls"] == 5
    assert "refiner cache (fast): 5/8 steps computed, 3 reused (3, 4, 5)" in capsys.readouterr().err


def test_upscale_large_scene_in_windows_writes_exact_size_and_records_windows(models_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["upscale", str(SAMPLE_IMAGE), "-o", str(out), "--scale", "2", "--models-dir", str(models_dir),
                 "--window-size", "48", "--window-overlap", "8", "--placement", "sequential", *FAST]) == 0
    assert png_size(out / "osbs_029_lr100_x2.png") == (200, 200)
    record = json.loads((out / "osbs_029_lr100_x2.json").read_text())
    assert record["windows"]["count"] == 9 and record["windows"]["size"] == 48
    assert record["placement"] == "resident"  # on a CPU every plan is resident
    assert record["peak_memory_kind"] == "process RSS" and record["peak_memory_bytes"] > 0
    assert main(["upscale", str(SAMPLE_IMAGE), "-o", str(out), "--window-size", "16", "--window-overlap", "8",
                 "--models-dir", str(models_dir), *FAST]) == 2  # overlap must be under half the window


def test_upscale_finds_weights_in_the_seeds_ckpt_pth_layout(inputs, tmp_path, monkeypatch):
    """Not in the models folder: the seed's CKPT_PTH/ (in the working directory) is searched next."""
    from rsvl_core.stage1 import SR3UNet as UNet

    ckpt = tmp_path / "CKPT_PTH"
    save_sr3(UNet(tiny_sr3_config(inner_channel=32, norm_groups=32)), ckpt / "I640000_E37_gen.pth")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert main(["upscale", str(inputs / "wide.png"), "-o", str(out), "--scale", "2", "--models-dir",
                 str(tmp_path / "empty"), *FAST]) == 0
    record = json.loads((out / "wide_x2.json").read_text())
    assert record["models"]["stage1"][0]["path"].endswith("CKPT_PTH/I640000_E37_gen.pth")


def test_run_record_has_model_hashes_cached_by_size_and_mtime(models_dir, inputs, tmp_path):
    import hashlib

    out = tmp_path / "out"
    assert main(["upscale", str(inputs / "wide.png"), "-o", str(out), "--scale", "2", "--models-dir", str(models_dir),
                 *FAST]) == 0
    row = json.loads((out / "wide_x2.json").read_text())["models"]["stage1"][0]
    path = Path(row["path"])
    assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and row["bytes"] == path.stat().st_size
    from rsvl_core.weights.manager import hash_cache_path

    assert str(path.resolve()) in json.loads(hash_cache_path().read_text())
    assert main(["upscale", str(inputs / "wide.png"), "-o", str(out), "--scale", "2", "--models-dir", str(models_dir),
                 "--overwrite", "--no-hash", *FAST]) == 0
    assert "sha256" not in json.loads((out / "wide_x2.json").read_text())["models"]["stage1"][0]


def test_our_outputs_in_the_input_folder_are_never_inputs(models_dir, tmp_path, capsys):
    """Output folder = input folder: a second run leaves the first run's outputs alone (no `a_x2_x2.png`)."""
    models = models_dir
    folder = tmp_path / "scenes"
    folder.mkdir()
    Image.open(SAMPLE_IMAGE).convert("RGB").crop((0, 0, 24, 16)).save(folder / "a.png")
    argv = ["upscale", str(folder), "-o", str(folder), "--scale", "2", "--stage1-only", "--models-dir", str(models),
            "--sampler", "ddim", "--steps", "2", "--device", "cpu", "--no-hash", "-q"]
    assert main(argv) == 0 and (folder / "a_x2.png").is_file()
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "1 input(s) are earlier rsvl outputs" in err and "a_x2.png" in err
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_x2.json", "a_x2.png"]
    assert main([*argv[:1], str(folder / "a_x2.png"), *argv[2:]]) == 2  # only our output named: refused, named
    assert "every input is an earlier rsvl output (a_x2.png" in capsys.readouterr().err
