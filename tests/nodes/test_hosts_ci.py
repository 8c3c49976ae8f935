"""Under CI=true a host or browser test never skips: with its host missing it fails, in one line that names
what is missing and the command that installs it; outside CI the same test skips with that line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def run_without_hosts(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RSVL_COMFY_080": str(tmp_path / "no080"), "RSVL_COMFY_0201": str(tmp_path / "no0201")}
    for name in ("COMFY_DIR", "COMFY_PY", "CI"):
        env.pop(name, None)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                           str(HERE / "test_comfy_host.py"), "-k", "pack_imports_and_lists_the_nodes"],
                          cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_hosts_missing_under_ci_fail_with_one_line(tmp_path, ci):
    run = run_without_hosts(tmp_path, ci)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert "2 errors" in out and "skipped" not in out, out[-3000:]  # a failing fixture: an error, never a skip
    for version, folder in (("0.8.0", "no080"), ("0.20.1", "no0201")):
        line = next(x for x in out.splitlines() if x.startswith("ERROR") and f"ComfyUI {version} host" in x)
        assert f"install it with: COMFY_VERSION={version} COMFY_DIR={tmp_path / folder / 'ComfyUI'}" in line, line
        assert "setup.sh" in line, line
    assert "Traceback" not in out  # one line, not a stack


def test_hosts_missing_outside_ci_skip_with_the_same_line(tmp_path):
    run = run_without_hosts(tmp_path, None)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "2 skipped" in out, out[-3000:]
    assert sum("SKIPPED" in x and "install it with: COMFY_VERSION=" in x for x in out.splitlines()) == 2, out[-3000:]
