"""StepSettings (what the DynamicStepScheduler node outputs) and the step-cache benchmark (tiny, checked on counts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rsvl_core.cache import PRESETS
from rsvl_core.pipeline import StepSettings
from rsvl_core.refine.refiner import RefineOptions
from rsvl_core.stage1 import Stage1Options

REPO = Path(__file__).parents[2]


def test_scheduler_carries_both_stages_settings():
    schedule = StepSettings.preset("seed", refine_steps=30, stage1_sampler="dpmpp", stage1_steps=20)
    schedule.check()
    refine = schedule.apply_to_refine(RefineOptions())
    assert refine.sampler.steps == 30 and refine.cache == PRESETS["seed"] and refine.cache.threshold == 0.3
    stage1 = schedule.apply_to_stage1(Stage1Options(tile_size=128))
    assert (stage1.sampler, stage1.steps, stage1.tile_size, stage1.cache.mode) == ("dpmpp", 20, 128, "off")
    assert StepSettings().refine_cache.mode == "off"  # no cache unless asked
    with pytest.raises(ValueError, match="unknown cache preset"):
        StepSettings.preset("turbo")
    with pytest.raises(ValueError, match="refine_steps"):
        StepSettings(refine_steps=0)
    assert StepSettings.describe(None) == "no steps run"


def check_table(stdout: str, steps: int) -> None:
    rows = {line.split("  ")[0].strip(): line.split() for line in stdout.splitlines() if line.startswith("(")}
    assert set(rows) == {"(a) seed, no cache", "(b) seed cache, seed cost", "(c) seed rule, our cost",
                         "(d) fast (ours)"}
    unet_b, enc_b, ctrl_b = (int(v) for v in rows["(b) seed cache, seed cost"][5:8])
    unet_c, enc_c, ctrl_c = (int(v) for v in rows["(c) seed rule, our cost"][5:8])
    assert unet_b == unet_c and ctrl_b == enc_b + unet_b and ctrl_c == unet_c  # same decisions, less control
    assert int(rows["(a) seed, no cache"][4]) == steps  # every step a full UNet evaluation


def test_step_cache_benchmark_prints_the_side_by_side_table(capsys):
    """In-process and small (latent 16, no full-size count): the table's rows and call counts."""
    import runpy

    module = runpy.run_path(str(REPO / "benchmarks" / "step_cache.py"), run_name="step_cache_benchmark")
    module["main"](["--steps", "6", "--skip-stage1", "--latent", "16", "--skip-full-count"])
    check_table(capsys.readouterr().out, 6)


@pytest.mark.slow
def test_step_cache_benchmark_script_runs_as_documented():
    """The script as a user runs it (subprocess), with the full-size FLOP count on the meta device."""
    result = subprocess.run([sys.executable, "benchmarks/step_cache.py", "--steps", "6", "--skip-stage1"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    check_table(result.stdout, 6)
    assert "counted on the meta device" in result.stdout
