"""The pack in the newest ComfyUI frontend on PyPI (1.58.1) served by ComfyUI 0.20.1 through --front-end-root:
the extension loads (public API only, no page errors) and the node search finds our nodes by the words users
type. The frontend package is downloaded once with pip into the test cache (RSVL_FRONTEND_158 names a folder
holding its `static` files instead); when neither is possible the tests fail under CI and skip elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from hosts import HOSTS, require
from native_models import CACHE
from test_browser import (  # noqa: F401
    SEARCHES,
    SHIPPED,
    artifacts,
    browser,
    check_native_workflow,
    check_widgets_survive,
    page,
    search_ranks,
    shot,
)
from test_browser import pytestmark as browser_marks
from test_comfy_host import start_server

pytestmark = browser_marks
HOST = HOSTS["comfy0201"]  # the newest frontend on the newest host (1.35.9 stays with 0.8, test_browser.py)
VERSION = "1.58.1"


@pytest.fixture(scope="module")
def frontend() -> Path:
    """The `static` folder of comfyui-frontend-package 1.58.1 (pip download once, unpacked into the cache)."""
    folder = Path(os.environ.get("RSVL_FRONTEND_158", CACHE / f"comfyui-frontend-{VERSION}"))
    if not (folder / "index.html").is_file():
        with tempfile.TemporaryDirectory() as scratch:
            got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", scratch,
                                  f"comfyui-frontend-package=={VERSION}"], capture_output=True, text=True,
                                 timeout=600)
            wheels = list(Path(scratch).glob("*.whl"))
            if got.returncode != 0 or not wheels:
                require(f"comfyui-frontend-package {VERSION} could not be downloaded ({got.stderr.strip()[-200:]}); "
                        f"download it with: pip download --no-deps comfyui-frontend-package=={VERSION}")
            partial = folder.with_name(folder.name + f".{os.getpid()}.partial")
            with zipfile.ZipFile(wheels[0]) as wheel:
                members = [m for m in wheel.namelist() if m.startswith("comfyui_frontend_package/static/")]
                wheel.extractall(partial, members)
            os.replace(partial / "comfyui_frontend_package" / "static", folder)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, frontend):
    require(HOST.missing())
    yield from start_server(tmp_path_factory.mktemp("comfy158"), HOST, f"--front-end-root {frontend}")


def test_native_browser_newest_frontend_loads_the_extension(page, server):  # noqa: F811
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null")
    assert version in (None, VERSION), version
    assert page.page_errors == [], page.page_errors


@pytest.mark.parametrize("query, expected, within", SEARCHES)
def test_native_browser_newest_frontend_search_finds_the_nodes(page, artifacts, query, expected, within):  # noqa: F811
    """As on 0.8's own frontend; this one also searches the search aliases the pack adds to the node info."""
    found = search_ranks(page, artifacts, query, expected, "search158")
    assert any(expected in title for title in found[:within]), " | ".join(found)


@pytest.mark.parametrize("run_in", ["classic", "nodes_2"])
def test_native_browser_newest_frontend_workflow_runs_and_shows_its_texts(page, server, artifacts,  # noqa: F811
                                                                           run_in):
    """Frontend 1.58.1: run in one renderer, then looked at in the other."""
    check_native_workflow(page, server, artifacts, run_in_nodes_2=run_in == "nodes_2", tag=f"fe158_{run_in}")


@pytest.mark.parametrize("name", SHIPPED)
def test_native_browser_newest_frontend_shipped_workflow_widgets_survive(page, name):  # noqa: F811
    check_widgets_survive(page, name)
