"""The real ComfyUI hosts the host and browser tests run on, and what happens when one is missing.

Two hosts, built by ../shared/tools/comfy_host/setup.sh from the source archives in ../shared/vendor (`.ci/hosts`
builds both for CI). Each is a folder holding `ComfyUI/` and `venv/`, found where the tools' README puts it or
where a setting says:

| id        | version | setting (folder)  | default               |
|-----------|---------|-------------------|-----------------------|
| comfy080  | 0.8.0   | RSVL_COMFY_080    | $HOME/comfy-host       |
| comfy0201 | 0.20.1  | RSVL_COMFY_0201   | $HOME/comfy-host-0.20.1 |

For 0.8.0, the shared scripts' own COMFY_DIR / COMFY_PY still override the tree and the interpreter.
A missing host, browser or frontend makes its tests fail under CI=true (one line: what is missing, the command
that installs it) and skip elsewhere with that line.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from nodes_testing import REPO

TOOLS = Path(os.environ.get("RSVL_COMFY_TOOLS", REPO.parent / "shared" / "tools" / "comfy_host"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass(frozen=True)
class Host:
    """One ComfyUI install: its source tree and the interpreter of its venv."""

    id: str
    version: str
    comfy_dir: Path
    python: Path

    def missing(self) -> str | None:
        """One line naming what is missing and how to install it; None when the host is complete."""
        if not (TOOLS / "start.sh").is_file():
            return f"no comfy_host tools at {TOOLS} (set RSVL_COMFY_TOOLS to ../shared/tools/comfy_host)"
        if (self.comfy_dir / "main.py").is_file() and self.python.is_file():
            return None
        return (f"no ComfyUI {self.version} host (ComfyUI tree {self.comfy_dir}, interpreter {self.python}); "
                f"install it with: COMFY_VERSION={self.version} COMFY_DIR={self.comfy_dir} "
                f"COMFY_VENV={self.python.parent.parent} bash {TOOLS / 'setup.sh'}")


def _host(id: str, version: str, setting: str, default: Path) -> Host:
    root = Path(os.environ.get(setting, default))
    comfy_dir, python = root / "ComfyUI", root / "venv" / "bin" / "python"
    if version == "0.8.0":  # the shared scripts' own settings name the 0.8 host
        comfy_dir = Path(os.environ.get("COMFY_DIR", comfy_dir))
        python = Path(os.environ.get("COMFY_PY", python))
    return Host(id, version, comfy_dir, python)


HOSTS = {host.id: host for host in (
    _host("comfy080", "0.8.0", "RSVL_COMFY_080", Path.home() / "comfy-host"),
    _host("comfy0201", "0.20.1", "RSVL_COMFY_0201", Path.home() / "comfy-host-0.20.1"),
)}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def require(problem: str | None) -> None:
    """Nothing when `problem` is None; else fail under CI (nothing may skip there), skip elsewhere."""
    if problem is None:
        return
    if in_ci():
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


def browser_missing() -> str | None:
    """One line when Chromium or Playwright is missing (the browser tests need both)."""
    if not Path(CHROMIUM).is_file():
        return "no Chromium at /usr/bin/chromium; install it with: apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no Playwright; install it with: pip install playwright (never `playwright install`)"
    return None
