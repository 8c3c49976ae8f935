"""Issue 34, the run side: long file names, deterministic stages with --samples, concurrent batches, memory of
windowed runs, model lookups and the first run on a CPU. Each test reproduces one finding and asserts the result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from rsvl_testing import SAMPLE_IMAGE, tiny_compact, tiny_sr3_config
from safetensors.torch import save_file

from rsvl_core.cli import main
from rsvl_core.kit.atomic import NAME_MAX, this_host
from rsvl_core.stage1 import SR3UNet, save_sr3

STAGE1 = ["--sampler", "ddim", "--steps", "2", "-q", "--stage1-only", "--tile-size", "128", "--scale", "2"]


@pytest.fixture(scope="module")
def sr3_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32, attention_levels=())),
             folder / "sr3" / "I9_E9_gen.pth")
    return folder


@pytest.fixture(scope="module")
def upscale_model_dir(tmp_path_factory) -> Path:
    """A models folder whose stage 1 is a tiny one-pass (deterministic) upscale model, 2x."""
    folder = tmp_path_factory.mktemp("upscale_models")
    (folder / "sr3").mkdir()
    save_file(tiny_compact(scale=2), str(folder / "sr3" / "2x_tiny_compact.safetensors"))
    return folder


def patch(path: Path, box: tuple[int, int, int, int] = (10, 20, 34, 36)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(SAMPLE_IMAGE).convert("RGB").crop(box).save(path)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".claim")))


# 3. long file names: outputs, claims and temporaries within the name limit; never a traceback
def test_long_file_names_give_outputs_not_a_traceback(tmp_path, sr3_dir, capsys):
    inputs = tmp_path / "in"
    names = {n: patch(inputs / ("a" * (n - 5) + f"{n % 10}.png")) for n in (230, 249, 255)}
    patch(inputs / "short.png")
    out = tmp_path / "out"
    assert main(["upscale", str(inputs), "-o", str(out), "--models-dir", str(sr3_dir), *STAGE1]) == 0
    err = capsys.readouterr().err
    assert "4 written" in err and "Traceback" not in err
    images = sorted(p for p in out.iterdir() if p.suffix == ".png")
    assert len(images) == 4 and leftovers(out) == []
    assert all(len(os.fsencode(p.name)) + len("_uncertainty") + 1 <= NAME_MAX for p in images)
    for path in (p for p in images if p.name != "short_x2.png"):
        record = json.loads(path.with_suffix(".json").read_text())
        assert record["image"] == path.name and record["input"]["file"] in {p.name for p in names.values()}
    shortened = [p for p in images if "~" in p.stem]
    assert len(shortened) == 2  # 249 and 255 bytes: with `_uncertainty` the output's companions would pass it
    assert "output named" in err and "255-byte limit" in err
    # a rerun finds them complete (the same long name gives the same short one)
    assert main(["upscale", str(inputs), "-o", str(out), "--models-dir", str(sr3_dir), *STAGE1]) == 0
    assert "0 written, 4 skipped" in capsys.readouterr().err


# 10. concurrent batches: an output another live run has claimed is "claimed by another run", not "already exist"
def test_outputs_claimed_by_a_live_run_are_reported_as_claimed(tmp_path, sr3_dir, capsys):
    inputs = tmp_path / "in"
    for name in ("a", "b", "c"):
        patch(inputs / f"{name}.png")
    out = tmp_path / "out"
    assert main(["upscale", str(inputs / "a.png"), "-o", str(out), "--models-dir", str(sr3_dir), *STAGE1]) == 0
    claim = out / ".b_x2.png.claim"
    claim.write_text(f"{this_host()} {os.getpid()}\n")  # a live process (this one) computes b
    capsys.readouterr()
    assert main(["upscale", str(inputs), "-o", str(out), "--models-dir", str(sr3_dir), *STAGE1]) == 0
    err = capsys.readouterr().err
    assert "1 written, 1 skipped (already exist; --overwrite replaces), 1 claimed by another run" in err
    assert not (out / "b_x2.png").exists() and claim.exists() and (out / "c_x2.png").exists()


# 8. a deterministic stage with --samples N: zero spread by construction, said; N - 1 runs skipped
def test_samples_of_a_deterministic_upscale_model_are_one_run(tmp_path, upscale_model_dir, capsys):
    image = patch(tmp_path / "in" / "p.png")
    out = tmp_path / "out"
    args = ["upscale", str(image), "-o", str(out), "--models-dir", str(upscale_model_dir), "--stage1-only",
            "--scale", "2", "--samples", "3"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "spread is zero by construction; 2 run(s) skipped" in err
    assert "std mean" not in err  # not reported as a measured spread of 0
    u = json.loads((out / "p_x2.json").read_text())["uncertainty"]
    assert u["stage1_runs"] == 1 and "zero by construction" in u["deterministic"]


def test_eval_marks_a_deterministic_method_instead_of_ranking_on_zero_std(tmp_path, upscale_model_dir, capsys):
    hr = tmp_path / "hr"
    patch(hr / "a.png", (0, 0, 32, 32))
    out = tmp_path / "eval"
    args = ["eval", str(hr), "--scale", "2", "-o", str(out), "--methods", "bicubic,stage1", "--models-dir",
            str(upscale_model_dir), "--samples", "2", "--device", "cpu", "--no-hash", "-q"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "stage1: deterministic" in err
    pair = json.loads((out / "pairs" / "all" / "a" / "stage1.json").read_text())
    assert "zero by construction" in pair["deterministic"] and pair["seeds"] == [0]
    assert "error_most_uncertain" not in pair["metrics"] and "std_png" not in pair["maps"]
    summary = json.loads((out / "summary.json").read_text())
    assert "stage1" in summary["deterministic_methods"]
    assert "Deterministic methods" in (out / "summary.md").read_text()


# 12. lookups: one resolver for every command, messages that say what was looked for, where, and what to do
@pytest.fixture
def clean_places(tmp_path, monkeypatch):
    """No ./models, $RSVL_MODELS_DIR or $COMFYUI_DIR leaking in from the machine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RSVL_MODELS_DIR", raising=False)
    monkeypatch.delenv("COMFYUI_DIR", raising=False)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_bad_models_dir_is_refused_the_same_way_by_weights_list_and_upscale(tmp_path, clean_places, sr3_dir,
                                                                               capsys, kind):
    save_sr3(SR3UNet(tiny_sr3_config()), tmp_path / "models" / "sr3" / "I1_E1_gen.pth")  # ./models has one
    bad = tmp_path / "nonexistent"
    if kind == "file":
        bad.write_bytes(b"weights")
    image = patch(tmp_path / "p.png")
    assert main(["upscale", str(image), "-o", str(tmp_path / "o"), "--models-dir", str(bad), *STAGE1]) == 2
    refused = capsys.readouterr().err.strip()
    assert refused.startswith(f"error: --models-dir {bad}: ")
    listed = main(["weights", "list", "--models-dir", str(bad)])
    said = capsys.readouterr()
    if kind == "file":  # refused alike by both commands
        assert listed == 2 and said.err.strip() == refused
    else:  # a folder not made yet: the list prints the fixes into it, and says upscale refuses it until it exists
        assert listed == 0 and f"--models-dir {bad}: no such folder (yet); `rsvl upscale` refuses it" in said.err
    expected = "is a file, not a folder" if kind == "file" else "no such folder; expected a models folder with sr3/"
    assert expected in refused and "download" not in refused


def test_a_folder_named_like_a_weights_file_is_named_not_reported_missing(tmp_path, clean_places, capsys):
    (tmp_path / "m" / "sr3" / "x4_model.safetensors").mkdir(parents=True)
    image = patch(tmp_path / "p.png")
    assert main(["upscale", str(image), "-o", str(tmp_path / "o"), "--models-dir", str(tmp_path / "m"),
                 *STAGE1]) == 2
    err = capsys.readouterr().err
    assert "x4_model.safetensors is named like a weights file but is a folder" in err
    assert "not found" not in err and "download" not in err and "--sr3 PATH" in err


def test_comfyui_dir_finds_stage1_in_upscale_models(tmp_path, clean_places, capsys):
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "upscale_models").mkdir(parents=True)
    save_file(tiny_compact(scale=2), str(comfy / "models" / "upscale_models" / "2x_tiny.safetensors"))
    image = patch(tmp_path / "p.png")
    assert main(["upscale", str(image), "-o", str(tmp_path / "o"), "--comfyui-dir", str(comfy), "--stage1-only",
                 "--scale", "2", "-q"]) == 0
    assert f"sr3: using {comfy / 'models' / 'upscale_models' / '2x_tiny.safetensors'}" in capsys.readouterr().err
    assert main(["weights", "list", "--comfyui-dir", str(comfy)]) == 0
    assert "2x_tiny.safetensors" in capsys.readouterr().out
    (comfy / "models" / "upscale_models" / "2x_tiny.safetensors").unlink()
    assert main(["upscale", str(image), "-o", str(tmp_path / "o2"), "--comfyui-dir", str(comfy),
                 "--stage1-only", "--scale", "2", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"nor in {comfy / 'models' / 'upscale_models'} (no .safetensors/.pth/.ckpt file; ComfyUI (--comfyui-dir))" \
        in err


def test_links_in_an_input_folder_that_loop_or_dangle_are_reported(tmp_path, sr3_dir, capsys):
    inputs = tmp_path / "in"
    patch(inputs / "good.png")
    (inputs / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (inputs / "loop.png").symlink_to(inputs / "loop.png")
    out = tmp_path / "out"
    assert main(["upscale", str(inputs), "-o", str(out), "--models-dir", str(sr3_dir), *STAGE1]) == 0
    err = capsys.readouterr().err
    assert "gone.png: symbolic link to" in err and "which does not exist: skipped" in err
    assert "loop.png: symbolic link loop" in err and (out / "good_x2.png").exists()


# 11. a scene by windows: the assembly's memory is estimated before the first window; refuse or advise in one line
def test_window_memory_of_a_huge_sparse_scene_is_estimated_before_it_starts():
    from rsvl_core.memory.windows import estimate_window_memory
    from rsvl_core.scenes.windows import WindowOptions

    need = estimate_window_memory(100_000, 100_000, 4, WindowOptions(512, 16), geotiff=True)
    assert need.output == 0 and need.strip > 30 * 2**30  # 400000 px wide x 2112 rows of float32 strip
    small = estimate_window_memory(100_000, 100_000, 4, WindowOptions(128, 16), geotiff=True)
    assert small.strip < need.strip / 3  # a smaller window holds fewer rows
    png = estimate_window_memory(1000, 1000, 4, WindowOptions(128, 16), geotiff=False)
    assert png.output == 4000 * 4000 * 6


@pytest.mark.parametrize("spare", [0.5, 1.5])
def test_a_windowed_run_that_would_not_fit_is_refused_one_that_barely_fits_is_advised(
        tmp_path, sr3_dir, capsys, monkeypatch, spare):
    from rsvl_core.memory import windows as window_memory

    image = patch(tmp_path / "in" / "big.png", (0, 0, 40, 40))
    need = window_memory.estimate_window_memory(40, 40, 2, window_memory.WindowOptions(24, 4), False).total
    monkeypatch.setattr(window_memory, "available_memory", lambda: int(need * spare))
    out = tmp_path / "out"
    code = main(["upscale", str(image), "-o", str(out), "--models-dir", str(sr3_dir), *STAGE1,
                 "--window-size", "24", "--window-overlap", "4"])
    err = capsys.readouterr().err
    assert "assembling the 80x80 output needs about" in err and "whole output (a plain image)" in err
    if spare < 1:
        assert code == 1 and "more than the" in err and "split the scene" in err
        assert not out.exists() or not any(out.iterdir())
    else:
        assert code == 0 and "is available now" in err and (out / "big_x2.png").exists()


# 13. the first run on a CPU
def test_progress_lines_come_at_least_every_ten_seconds_while_work_advances(capsys):
    from rsvl_core.cli.bars import LineBar

    now = [0.0]
    bar = LineBar("p.png stage1", 500, "step", clock=lambda: now[0])
    for _ in range(100):  # 100 of 500 steps, 1.5 s each: no quarter reached for the first 124 steps
        now[0] += 1.5
        bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 14  # one every 7 steps (10.5 s of 150 s); quarters alone would have said nothing
    assert lines[0] == "p.png stage1: 1% (7/500 step, 10.5 s)"
    times = [float(line.rsplit(", ", 1)[1].removesuffix(" s)")) for line in lines]
    assert all(b - a <= 10.5 for a, b in zip([0.0, *times], times, strict=False))


def test_half_precision_on_a_cpu_runs_in_fp32_with_a_note(tmp_path, sr3_dir, capsys):
    image = patch(tmp_path / "p.png")
    out = tmp_path / "out"
    assert main(["upscale", str(image), "-o", str(out), "--models-dir", str(sr3_dir), *STAGE1, "--dtype", "bf16",
                 "--device", "cpu"]) == 0
    assert "--dtype bf16 on a CPU: running in fp32 instead" in capsys.readouterr().err
    assert json.loads((out / "p_x2.json").read_text())["settings"]["dtype"] == "fp32"


def test_the_paper_settings_on_a_cpu_say_what_they_cost_and_cpu_quick_is_minutes(tmp_path, capsys):
    from rsvl_core.pipeline import RunConfig

    image = patch(tmp_path / "p.png")
    (tmp_path / "empty").mkdir()
    assert main(["upscale", str(image), "-o", str(tmp_path / "o"), "--models-dir", str(tmp_path / "empty"),
                 "--stage1-only", "--device", "cpu", "-q"]) == 2
    assert "expect tens of minutes per image; --preset cpu-quick runs in minutes" in capsys.readouterr().err
    assert main(["upscale", str(image), "-o", str(tmp_path / "o"), "--models-dir", str(tmp_path / "empty"),
                 "--stage1-only", "--device", "cpu", "-q", "--preset", "cpu-quick"]) == 2
    assert "tens of minutes" not in capsys.readouterr().err
    quick = RunConfig.from_values(preset="cpu-quick")
    assert (quick.stage1.sampler, quick.stage1.steps, quick.refine.sampler.steps, quick.refine.min_size) == \
        ("dpmpp", 20, 8, 0)
    assert RunConfig.from_values(preset="cpu-quick", stage1_steps=4).stage1.steps == 4  # given values win
    from rsvl_core.cli import build_parser
    from rsvl_core.cli.settings import config_from_args

    args = build_parser().parse_args(["upscale", "x.png", "-o", "o", "--preset", "cpu-quick"])
    config = config_from_args(args)  # the flags' own defaults do not override the preset's
    assert (config.stage1.sampler, config.stage1.steps, config.caption.max_new_tokens) == ("dpmpp", 20, 64)
    args = build_parser().parse_args(["upscale", "x.png", "-o", "o", "--preset", "cpu-quick", "--sampler", "ddim"])
    assert config_from_args(args).stage1.sampler == "ddim"


def test_a_value_error_answers_before_the_engine_loads(tmp_path):
    import subprocess
    import sys

    probe = ("import sys; from rsvl_core.cli import main; "
             f"code = main(['upscale', {str(tmp_path / 'p.png')!r}, '-o', {str(tmp_path / 'o')!r}, '--samples', '0']); "
             "print(code, sorted(m for m in ('rsvl_core.jobs.work', 'rsvl_core.jobs.inputs', 'diffusers', "
             "'transformers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                         check=False)
    assert run.stdout.strip() == "2 []", run.stderr
    assert "samples must be an integer in 1..64, got 0" in run.stderr
