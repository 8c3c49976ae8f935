"""`rsvl upscale --max-vram`: the plan's start line, its record in the sidecar, and the one-line refusal."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from rsvl_testing import tiny_sr3_config

from rsvl_core.cli import main
from rsvl_core.stage1 import SR3UNet, save_sr3

FAST = ["--sampler", "ddim", "--steps", "2", "-q", "--stage1-only"]


def _inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / "square.png")
    models = tmp_path / "models"
    save_sr3(SR3UNet(tiny_sr3_config(inner_channel=32, norm_groups=32)), models / "sr3" / "I9_E9_gen.pth")
    return folder, models


def test_memory_cli_start_line_and_run_record(tmp_path, capsys):
    inputs, models = _inputs(tmp_path)
    out = tmp_path / "out"
    code = main(["upscale", str(inputs), "-o", str(out), "--scale", "4", "--models-dir", str(models),
                 "--max-vram", "1G", *FAST])
    assert code == 0
    err = capsys.readouterr().err
    # planned for the largest input (12x12 > 14x10 in pixels), full-size SR3 in the run's dtype (fp32)
    line = next(x for x in err.splitlines() if x.startswith("memory plan for 1G"))
    assert line.startswith("memory plan for 1G (12x12 input): resident, captioner as loaded, refiner as loaded; "
                           "predicted peak ")
    record = json.loads((out / "square_x4.json").read_text())
    plan = record["memory_plan"]
    assert plan["max_vram"] == "1G" and plan["plan"].startswith("resident")
    assert plan["stages"] == {"stage1": plan["predicted_peak_bytes"]}
    assert 0.25 * 2**30 < plan["predicted_peak_bytes"] < 0.9 * 2**30  # SR3's 267 MB of fp32 weights + activations
    assert f"predicted peak {plan['predicted_peak_bytes'] / 2**30:.1f} GiB" in line


def test_memory_cli_refuses_an_impossible_budget(tmp_path, capsys):
    inputs, models = _inputs(tmp_path)
    out = tmp_path / "out"
    code = main(["upscale", str(inputs), "-o", str(out), "--models-dir", str(models), "--max-vram", "100M", *FAST])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: --max-vram 100M: nothing fits; the smallest plan (sequential, ")
    assert err[0].endswith("more than 90% of 0.1 GiB (--dtype bf16 halves the weights)")
    assert not out.exists() or not any(out.iterdir())  # nothing written
