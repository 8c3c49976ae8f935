"""benchmarks/memory_budget.py --smoke (what device.sh ... memory runs on a GPU): plan, measure, table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_memory_budget_benchmark_smoke(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory_budget.py"), "--smoke", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads((tmp_path / "memory_budget_smoke.json").read_text())
    (plan,) = data["plans"]
    assert plan["budget"] == "1G" and set(plan["stages"]) == {"stage1", "caption", "refine"}
    for stage, row in plan["stages"].items():
        error = abs(row["predicted_bytes"] - row["measured_bytes"]) / row["measured_bytes"]
        assert error < 0.12, (stage, row)  # the tiny models' weights dominate; activations within 20 %
        assert row["seconds"] > 0
    table = (tmp_path / "memory_budget_smoke.md").read_text()
    assert "| 1G | | **whole image** |" in table and run.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])
