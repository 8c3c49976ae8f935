"""pytest fixtures shared by all tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rsvl_testing import FIXTURES

import rsvl_core  # noqa: F401  (installs the torchvision import guard before any test module imports spandrel)
from rsvl_core.batch.cluster import LOCAL_ONLY_ENV

# Ray reads its single-machine switch when it is imported: set before any test module imports ray, so the local
# Ray of the tests (and of `rsvl batch --ray auto` in-process) listens on 127.0.0.1 only.
os.environ.update(LOCAL_ONLY_ENV)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The seed's reference tensors; tests that compare with them skip (with the reason) without them."""
    if not FIXTURES.is_dir():
        pytest.skip(f"seed reference fixtures not found at {FIXTURES} (set RSVL_FIXTURES to their folder)")
    return FIXTURES


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path_factory, monkeypatch):
    """Model-file hashes are cached under $XDG_CACHE_HOME; keep the tests' cache out of the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """No $RSVL_MODELS_DIR / $COMFYUI_DIR from the machine, and an empty working folder."""
    monkeypatch.delenv("RSVL_MODELS_DIR", raising=False)
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def pytest_addoption(parser: pytest.Parser) -> None:
    """--browser-artifacts DIR: where the browser tests keep their screenshots (default: pytest's tmp dir)."""
    parser.addoption("--browser-artifacts", default=None, help="folder for the browser tests' screenshots")
