"""Fixtures of the node-pack tests: the ComfyUI stand-in with the tiny demo models in its models folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from nodes_testing import FakeComfy, place_demo_models  # noqa: E402


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    models = tmp_path_factory.mktemp("comfy_models")
    return models, place_demo_models(models)


@pytest.fixture(scope="module")
def comfy(demo_models):
    fake = FakeComfy(demo_models[0])
    yield fake
    fake.close()
