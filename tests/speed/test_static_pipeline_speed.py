"""benchmarks/pipeline_speed.py and benchmarks/device.sh: the table's arithmetic, and the smoke run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import pipeline_speed as P  # noqa: E402


def _stage(seconds: float, tflop: float | None, peak: int | None = None) -> dict:
    return {"seconds": seconds, "tflop": tflop, "peak_bytes": peak}


def test_static_table_arithmetic_inherits_paper_stages_and_work():
    rows = P.modes(P.FULL, None)
    names = [m.name for m in rows]
    assert names[:2] == ["seed-equivalent", "paper"] and names[-1] == "fast"
    assert {"paper + compile", "paper + cuda-graphs", "paper + static-cache", "paper + channels-last",
            "low-memory (paper + fp8)"} <= set(names)
    by_name = {m.name: m for m in rows}
    results = [
        {"mode": "seed-equivalent", "stages": {"stage1": _stage(6.0, 100.0, 2**30), "caption": _stage(4.0, 8.0),
                                               "refine": _stage(10.0, 1400.0)}},
        {"mode": "paper", "stages": {"stage1": _stage(2.0, 100.0), "caption": _stage(2.0, 8.0),
                                     "refine": _stage(4.0, 1000.0, 3 * 2**30)}},
        {"mode": "paper + static-cache", "stages": {"caption": _stage(1.0, None)}},
    ]
    ceilings = {"matmul_tflops": 500.0, "matmul_dtype": "bfloat16", "copy_gbps": 4000.0}
    P.complete(results, [by_name[r["mode"]] for r in results], ceilings)
    static = results[2]
    assert static["stages"]["refine"]["inherited"] and static["stages"]["stage1"]["seconds"] == 2.0
    assert static["stages"]["caption"]["tflop"] == 8.0          # the work of paper, counted eagerly
    assert static["total_seconds"] == 7.0 and static["total_tflop"] == 1108.0
    assert results[1]["speedup"] == pytest.approx(20.0 / 8.0)
    assert results[1]["stages"]["refine"]["rate_fraction"] == pytest.approx(1000.0 / 4.0 / 500.0)
    assert results[1]["peak_bytes"] == 3 * 2**30
    header = {"size": "full", "device": "GPU", "torch": "x", "date": "d", "ceilings": ceilings}
    table = P.markdown_table(results, header)
    assert "| paper + static-cache | 2.00= | 1.00 (None) | 4.00= | 7.00 | 1108.000 | 50.0% |" in table
    assert "| seed-equivalent | 6.00 | 4.00 (None) | 10.00 | 20.00 | 1508.000 | 28.0% | 15.1% | 1.0 | 1.00x |" in table


@pytest.mark.slow
def test_static_device_script_smoke_writes_the_full_table(tmp_path: Path):
    """device.sh --smoke: every mode on tiny models on the CPU, JSON + Markdown written, table printed last."""
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "device.sh"), str(tmp_path), "--smoke"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((tmp_path / "pipeline_speed_smoke.json").read_text())
    modes = [m["mode"] for m in data["modes"]]
    assert modes == [m.name for m in P.modes(P.SMOKE, "eager")]
    for mode in data["modes"]:
        assert set(mode["stages"]) == set(P.STAGES)
        assert mode["total_seconds"] > 0 and mode["total_tflop"] > 0 and mode["caption_tokens"] > 0
    paper = next(m for m in data["modes"] if m["mode"] == "paper")
    seed = next(m for m in data["modes"] if m["mode"] == "seed-equivalent")
    assert seed["stages"]["refine"]["tflop"] > paper["stages"]["refine"]["tflop"]  # the seed's control-net passes
    table = (tmp_path / "pipeline_speed_smoke.md").read_text()
    assert run.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])
    assert table.count("\n| ") == len(modes) + 1
